"""Where A2A clients find the mesh's agents: each agent's card, the directory of the online
agents' cards, and the card of a default agent at the gateway's root.

    GET /a2a/{agent_id}/.well-known/agent-card.json   the agent's card (404: not online)
    GET /a2a                                          {"agents": [{agent_id, card_url, card}]}
    GET /.well-known/agent-card.json                  the default agent's card (its interfaces:
                                                      /a2a/<default>); 404 without one, or
                                                      while it is offline

Every card is built per request from the registry (`cards.build_card`); single cards go through
the SDK's card route (ETag, 304, the 0.3 fields), and a directory entry's `card` is the same
document. All need `agents:read`. A key limited to some agents (`to_agents`) sees only those: any
other is left out of the directory and answered as a missing agent (404 AGENT_NOT_FOUND).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import create_agent_card_routes
from a2a.types.a2a_pb2 import AgentCard
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agentmesh.gateway.a2a.cards import PREFIX, agent_url, build_card, placeholder
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.state import state_of
from agentmesh.schemas.agent import Presence
from agentmesh.schemas.errors import AgentNotFound

Endpoint = Callable[[Request], Awaitable[Response]]

_card: ContextVar[AgentCard] = ContextVar("a2a_card")


def missing(agent_id: str) -> AgentNotFound:
    """An agent that is not online, or that the key may not reach: the same answer, so a
    limited key learns nothing of the agents it may not call."""
    return AgentNotFound(f"agent {agent_id!r} is not online", details={"agent_id": agent_id})


def check_reach(principal: Principal, agent_id: str) -> None:
    """Raises: AgentNotFound: the key's `to_agents` patterns do not match `agent_id`."""
    if not principal.may_reach(agent_id):
        raise missing(agent_id)


async def online(request: Request, principal: Principal, agent_id: str) -> Presence:
    """The agent's presence, if it is online and the key may reach it.

    Raises:
        AgentNotFound: neither.
    """
    check_reach(principal, agent_id)
    presence = await state_of(request).registry.agent(agent_id)
    if presence is None:
        raise missing(agent_id)
    return presence


async def _current_card(_: AgentCard) -> AgentCard:
    return _card.get()


def card_endpoint(agent_of: Callable[[Request], str]) -> Endpoint:
    """The SDK's card route serving the card of `agent_of(request)`, built per request.

    `agent_of` raises AgentNotFound for a request that names no agent."""
    (sdk_route,) = create_agent_card_routes(placeholder(), card_modifier=_current_card)
    assert isinstance(sdk_route, Route)
    serve = sdk_route.endpoint

    async def card(request: Request) -> Response:
        principal = await require(Scope.AGENTS_READ)(request)
        agent_id = agent_of(request)
        presence = await online(request, principal, agent_id)
        built = build_card(
            presence, agent_url(request, agent_id), auth=state_of(request).config.auth
        )
        token = _card.set(built)
        try:
            return await serve(request)  # type: ignore[no-any-return]
        finally:
            _card.reset(token)

    return card


def _default_agent(request: Request) -> str:
    agent_id = state_of(request).config.a2a_default_agent
    if agent_id is None:
        raise AgentNotFound(
            "no default A2A agent is configured here (gateway.a2a_default_agent, "
            "AGENTMESH_GATEWAY_A2A_DEFAULT_AGENT); each agent's card is at "
            f"{PREFIX}/<agent_id>{AGENT_CARD_WELL_KNOWN_PATH}, the list at {PREFIX}"
        )
    return agent_id


async def directory(request: Request) -> Response:
    """The cards of the online agents the key may reach, by agent id."""
    principal = await require(Scope.AGENTS_READ)(request)
    state = state_of(request)
    entries: list[dict[str, Any]] = []
    for presence in await state.registry.agents():
        if not principal.may_reach(presence.agent_id):
            continue
        url = agent_url(request, presence.agent_id)
        card = build_card(presence, url, auth=state.config.auth)
        entries.append(
            {
                "agent_id": presence.agent_id,
                "card_url": url + AGENT_CARD_WELL_KNOWN_PATH,
                "card": agent_card_to_dict(card),
            }
        )
    return JSONResponse({"agents": entries})


def routes() -> list[Route]:
    """The directory and the default agent's card (the per-agent card: `card_endpoint`)."""
    return [
        Route(PREFIX, directory, methods=["GET"], include_in_schema=False),
        Route(
            AGENT_CARD_WELL_KNOWN_PATH,
            card_endpoint(_default_agent),
            methods=["GET"],
            include_in_schema=False,
        ),
    ]
