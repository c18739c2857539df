"""Outside A2A agents through the gateway, the agentgateway way: a route per configured agent
(`gateway.a2a_proxy`, `AGENTMESH_GATEWAY_A2A_PROXY`: name → the URL its card is under) that
forwards requests as they are and serves the agent's card rewritten to point at the gateway.

    GET  /a2a-proxy/<name>/.well-known/agent-card.json   <url>/.well-known/agent-card.json,
                                                         rewritten
    ...  /a2a-proxy/<name>[/<path>][?<query>]            forwarded to <url>[/<path>][?<query>]:
                                                         JSON-RPC, HTTP+JSON, SSE streams

`<name>` is one whole path segment, so `/a2a-proxy/weather-v2` is not `weather`'s (404
AGENT_NOT_FOUND). The card's interfaces (`supportedInterfaces`, 0.3 `url` and
`additionalInterfaces`) under `<url>` move to the gateway's public URL (cards.public_base) plus
`/a2a-proxy/<name>` and their rest; an interface elsewhere is left out (its requests would
bypass the gateway); `signatures` are dropped (the rewrite breaks them) and the security
schemes become the gateway's (a key) with auth on, none with auth off.

The gateway's auth applies: `agents:read` for the card, GETs, subscriptions and the JSON-RPC
read methods, `send` for every other request; a key's `to_agents` patterns apply to `<name>`
(a refused name is answered as a missing one). The caller's key, cookies and hop-by-hop
headers are not forwarded; everything else is (A2A-Version, Accept, ...). Nothing is stored:
the outside agent keeps its own tasks. An outside agent that cannot be reached is 503
UNAVAILABLE, one that does not answer in time 504 TIMEOUT, a card that is not one 502.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from fastapi import APIRouter, FastAPI
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from agentmesh.gateway.a2a.cards import build_card, public_base
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.state import state_of
from agentmesh.gateway.streams import relay
from agentmesh.schemas.agent import AgentCard as MeshCard
from agentmesh.schemas.errors import (
    AgentNotFound,
    MeshTimeout,
    NotFound,
    RemoteError,
    Unavailable,
)

logger = logging.getLogger(__name__)

PROXY_PREFIX = "/a2a-proxy"
BASE = PROXY_PREFIX + "/{name}"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=30.0, pool=10.0)
# JSON-RPC methods (1.0 and 0.3 names) that only read; any other method needs `send`.
READS = frozenset(
    {
        "GetTask",
        "ListTasks",
        "SubscribeToTask",
        "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs",
        "GetExtendedAgentCard",
        "tasks/get",
        "tasks/list",
        "tasks/resubscribe",
        "tasks/pushNotificationConfig/get",
        "tasks/pushNotificationConfig/list",
        "agent/getAuthenticatedExtendedCard",
    }
)
_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Not the outside agent's business: the caller's gateway key and cookies; what httpx sets.
_NOT_SENT = _HOP | {"host", "content-length", "authorization", "x-api-key", "cookie"}
# Set by the gateway's own server, or meant for another origin.
_NOT_RETURNED = _HOP | {"date", "server", "set-cookie"}
_SECURITY = ("securitySchemes", "securityRequirements", "security")
_CLIENT = "a2a_proxy_client"  # app.state: the replica's httpx client for outside agents


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as client:
        setattr(app.state, _CLIENT, client)
        yield


def _client(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = getattr(request.app.state, _CLIENT)
    return client


def _target(request: Request, principal: Principal) -> tuple[str, str]:
    """The proxied agent's name and URL.

    Raises:
        AgentNotFound: no outside agent of that name, or the key may not reach it.
    """
    name = request.path_params["name"]
    url = state_of(request).config.a2a_proxy.get(name)
    if url is None or not principal.may_reach(name):
        raise AgentNotFound(
            f"no outside A2A agent {name[:80]!r} is proxied here", details={"agent": name[:80]}
        )
    return name, url


def _rest(request: Request) -> str:
    """The path after `/a2a-proxy/<name>`, as the client sent it (percent-encoding kept).

    Raises:
        NotFound: a `.` or `..` segment (it would leave the agent's URL).
    """
    if any(s in (".", "..") for s in request.url.path.split("/")):
        raise NotFound("a path with '.' or '..' segments is not forwarded")
    raw = request.scope.get("raw_path") or request.url.path.encode()
    parts = raw.decode("latin-1").split("?", 1)[0].split("/", 3)  # "", "a2a-proxy", name, rest
    return "/" + parts[3] if len(parts) == 4 else ""


def _scope_of(method: str, path: str, body: bytes) -> Scope:
    if method == "GET":
        return Scope.AGENTS_READ
    try:
        parsed = json.loads(body) if body else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and "jsonrpc" in parsed:
        return Scope.AGENTS_READ if parsed.get("method") in READS else Scope.SEND
    if method == "POST" and path.endswith(":subscribe"):
        return Scope.AGENTS_READ
    return Scope.SEND


def _upstream_error(name: str, exc: httpx.HTTPError) -> Exception:
    if isinstance(exc, httpx.TimeoutException):
        return MeshTimeout(
            f"the outside A2A agent {name!r} did not answer in time", details={"agent": name}
        )
    return Unavailable(
        f"the outside A2A agent {name!r} cannot be reached: {str(exc) or type(exc).__name__}",
        details={"agent": name},
    )


async def forward(request: Request) -> Response:
    """The request, forwarded to the outside agent; its answer streamed back as it comes."""
    rest = _rest(request)
    body = await request.body()
    principal = await require(_scope_of(request.method, rest, body))(request)
    name, base = _target(request, principal)
    query = request.url.query
    url = base + rest + (f"?{query}" if query else "")
    headers = [
        (k, v) for k, v in request.headers.raw if k.decode("latin-1").lower() not in _NOT_SENT
    ]
    client = _client(request)
    outgoing = client.build_request(request.method, url, headers=headers, content=body)
    try:
        upstream = await client.send(outgoing, stream=True)
    except httpx.HTTPError as exc:
        raise _upstream_error(name, exc) from None
    returned = [
        (k.lower(), v)
        for k, v in upstream.headers.raw
        if k.decode("latin-1").lower() not in _NOT_RETURNED
    ]
    response = StreamingResponse(
        _relayed(name, upstream, request),
        status_code=upstream.status_code,
        background=BackgroundTask(upstream.aclose),
    )
    response.raw_headers = returned  # as they came, repeated ones included
    return response


async def _relayed(name: str, upstream: httpx.Response, request: Request) -> AsyncIterator[bytes]:
    """The answer's bytes as they come, until it ends or the replica drains (a stream's client
    subscribes again)."""
    try:
        async for chunk in relay(upstream.aiter_raw(), request.app.state.draining, ping=None):
            if chunk is not None:
                yield chunk
    except httpx.HTTPError as exc:  # the headers are sent: the answer can only end here
        logger.warning("outside A2A agent %s: its answer broke off: %s", name, exc)
    finally:
        await upstream.aclose()


async def card(request: Request) -> Response:
    """The outside agent's card, pointing at the gateway."""
    principal = await require(Scope.AGENTS_READ)(request)
    name, base = _target(request, principal)
    try:
        got = await _client(request).get(
            base + AGENT_CARD_WELL_KNOWN_PATH, headers={"Accept": "application/json"}
        )
    except httpx.HTTPError as exc:
        raise _upstream_error(name, exc) from None
    if got.status_code != 200:
        raise RemoteError(
            f"the outside A2A agent {name!r} answered its card with HTTP {got.status_code}",
            details={"agent": name, "status": got.status_code},
        )
    try:
        doc = got.json()
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise RemoteError(
            f"the outside A2A agent {name!r} answered its card with no JSON object",
            details={"agent": name},
        )
    public = f"{public_base(request)}{PROXY_PREFIX}/{name}"
    rewritten = rewrite_card(doc, base, public, auth=state_of(request).config.auth)
    if not any(rewritten.get(k) for k in ("supportedInterfaces", "additionalInterfaces", "url")):
        raise RemoteError(
            f"the card of the outside A2A agent {name!r} offers no interface under {base} "
            "(the URL configured for it): there is nothing the gateway could forward to",
            details={"agent": name},
        )
    return JSONResponse(rewritten)


def rewrite_card(doc: dict[str, Any], base: str, public: str, *, auth: bool) -> dict[str, Any]:
    """`doc` (an A2A card, 1.0 and/or 0.3 fields) with its interfaces under `base` moved to
    `public`, the others left out, no signatures, and the gateway's security schemes."""
    out = {k: v for k, v in doc.items() if k != "signatures" and k not in _SECURITY}
    for key in ("supportedInterfaces", "additionalInterfaces"):
        given = out.get(key)
        if isinstance(given, list):
            kept = []
            for interface in given:
                moved = _rebase(interface, base, public)
                if moved is None:
                    logger.info(
                        "outside A2A card: interface %r is not under %s: left out", interface, base
                    )
                else:
                    kept.append(moved)
            out[key] = kept
    if "url" in out:
        moved_url = _rebased_url(out["url"], base, public)
        if moved_url is None:
            del out["url"]
        else:
            out["url"] = moved_url
    if auth:
        out.update(_gateway_security())
    return out


def _rebase(interface: object, base: str, public: str) -> dict[str, Any] | None:
    if not isinstance(interface, dict):
        return None
    url = _rebased_url(interface.get("url"), base, public)
    return None if url is None else {**interface, "url": url}


def _rebased_url(url: object, base: str, public: str) -> str | None:
    """`public` + what `url` adds to `base`, if `url` is under `base` (whole path segments);
    else None."""
    if not isinstance(url, str):
        return None
    given, under = urlsplit(url), urlsplit(base)
    if _origin(given) != _origin(under):
        return None
    root = under.path.rstrip("/")
    if given.path != root and not given.path.startswith(root + "/"):
        return None
    rest = given.path[len(root) :]
    return public + rest + (f"?{given.query}" if given.query else "")


def _origin(parts: Any) -> tuple[str, str | None, int | None]:
    try:
        port = parts.port
    except ValueError:
        return ("", None, None)
    scheme = parts.scheme.lower()
    return (scheme, parts.hostname, port or {"http": 80, "https": 443}.get(scheme))


@functools.cache
def _gateway_security() -> dict[str, Any]:
    """The security fields of a mesh agent's card with auth on (both versions' forms)."""
    doc = agent_card_to_dict(build_card(MeshCard(agent_id="a2a"), "http://localhost", auth=True))
    return {k: doc[k] for k in _SECURITY if k in doc}


def build_router() -> APIRouter:
    """The proxy routes; the router's lifespan holds the replica's client for outside agents."""
    router = APIRouter(lifespan=_lifespan)
    router.add_route(
        BASE + AGENT_CARD_WELL_KNOWN_PATH, card, methods=["GET"], include_in_schema=False
    )
    for path in (BASE, BASE + "/{rest:path}"):
        router.add_route(path, forward, methods=METHODS, include_in_schema=False)
    return router
