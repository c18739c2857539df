"""A mesh agent's A2A card, built from its card in the registry on each request.

`supportedInterfaces` point at the gateway's public URL: the configured one
(`AGENTMESH_GATEWAY_PUBLIC_URL`, `gateway.public_url`), else as the client reached it
(`X-Forwarded-Proto`/`X-Forwarded-Host`, else `Host`), never at an internal address:

    JSONRPC    1.0 and 0.3   <base>/a2a/<agent_id>   (POST; the method names of both versions)
    HTTP+JSON  1.0           <base>/a2a/<agent_id>   (the SDK's REST paths: /message:send, ...)
    HTTP+JSON  0.3           <base>/a2a/<agent_id>   (0.3 clients add /v1/message:send, ...)

Skills: one per mesh capability (or one for the whole agent when it lists none). An agent may
describe itself further in its card's `metadata["a2a"]`: `skills` (A2A AgentSkill objects),
`input_modes`, `output_modes`.
"""

from __future__ import annotations

import logging

from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    APIKeySecurityScheme,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
)
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, TransportProtocol
from google.protobuf.json_format import ParseDict, ParseError
from starlette.requests import HTTPConnection

from agentmesh.gateway.state import state_of
from agentmesh.schemas.agent import AgentCard as MeshCard

logger = logging.getLogger(__name__)

PREFIX = "/a2a"  # the agents' A2A endpoints: /a2a/<agent_id>
MODES = ["text/plain", "application/json", "application/octet-stream"]
NO_VERSION = "0.0.0"  # an agent that declares no version


def _first(value: str | None) -> str | None:
    """The first of a comma-separated header (each proxy appends its own)."""
    if value is None:
        return None
    return value.split(",")[0].strip() or None


def public_base(conn: HTTPConnection) -> str:
    """The gateway's URL as the client sees it, without a trailing slash: the configured
    public URL, else from the request's forwarded headers."""
    configured = state_of(conn).config.public_url
    if configured:
        return configured
    headers = conn.headers
    proto = _first(headers.get("x-forwarded-proto")) or conn.url.scheme
    host = _first(headers.get("x-forwarded-host")) or headers.get("host") or conn.url.netloc
    return f"{proto}://{host}"


def agent_url(conn: HTTPConnection, agent_id: str) -> str:
    return f"{public_base(conn)}{PREFIX}/{agent_id}"


def _skills(card: MeshCard) -> list[AgentSkill]:
    declared = card.metadata["a2a"].get("skills") if _a2a_meta(card) else None
    if isinstance(declared, list) and declared:
        try:
            return [ParseDict(s, AgentSkill(), ignore_unknown_fields=True) for s in declared]
        except (ParseError, TypeError, ValueError) as exc:
            logger.warning(
                "agent %s: its metadata.a2a.skills are not A2A skills (%s); "
                "skills from its capabilities instead",
                card.agent_id,
                exc,
            )
    name = card.agent_name or card.agent_id
    if not card.capabilities:
        return [
            AgentSkill(
                id=card.agent_id,
                name=name,
                description=card.description or name,
                tags=[card.agent_type or "agent"],
            )
        ]
    return [
        AgentSkill(id=c, name=c, description=f"{name}: {c}", tags=[c]) for c in card.capabilities
    ]


def _a2a_meta(card: MeshCard) -> bool:
    return isinstance(card.metadata.get("a2a"), dict)


def _modes(card: MeshCard, key: str) -> list[str]:
    given = card.metadata["a2a"].get(key) if _a2a_meta(card) else None
    if isinstance(given, list) and given and all(isinstance(m, str) for m in given):
        return list(given)
    return list(MODES)


def build_card(card: MeshCard, url: str, *, auth: bool) -> AgentCard:
    """The A2A card of a mesh agent served at `url`; with `auth`, a key is required."""
    name = card.agent_name or card.agent_id
    out = AgentCard(
        name=name,
        description=card.description or f"{name}, an agent of the mesh",
        version=card.version or NO_VERSION,
        capabilities=AgentCapabilities(
            streaming=True, push_notifications=True, extended_agent_card=False
        ),
        default_input_modes=_modes(card, "input_modes"),
        default_output_modes=_modes(card, "output_modes"),
        skills=_skills(card),
    )
    for version in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3):
        for binding in (TransportProtocol.JSONRPC, TransportProtocol.HTTP_JSON):
            out.supported_interfaces.append(
                AgentInterface(url=url, protocol_binding=binding.value, protocol_version=version)
            )
    if auth:
        _secure(out)
    return out


def _secure(out: AgentCard) -> None:
    """The gateway's keys: `Authorization: Bearer <key>`, or `X-API-Key: <key>`."""
    out.security_schemes["bearer"].CopyFrom(
        SecurityScheme(
            http_auth_security_scheme=HTTPAuthSecurityScheme(
                scheme="Bearer", description="An AgentMesh API key (`agentmesh keys create`)."
            )
        )
    )
    out.security_schemes["apiKey"].CopyFrom(
        SecurityScheme(
            api_key_security_scheme=APIKeySecurityScheme(
                location="header", name="X-API-Key", description="An AgentMesh API key."
            )
        )
    )
    for scheme in ("bearer", "apiKey"):  # either one
        requirement = SecurityRequirement()
        requirement.schemes[scheme].SetInParent()
        out.security_requirements.append(requirement)


def placeholder() -> AgentCard:
    """A complete card for the SDK's card route, which serves the per-request card instead."""
    return build_card(MeshCard(agent_id="a2a"), "http://localhost" + PREFIX, auth=False)
