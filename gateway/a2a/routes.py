"""The A2A routes of every mesh agent, on every replica (`app.include_router(a2a.router)`):

    GET  /a2a/{agent_id}/.well-known/agent-card.json     the card (404: the agent is not online)
    POST /a2a/{agent_id}                                 JSON-RPC: 1.0 and 0.3 method names
    ...  /a2a/{agent_id}/message:send, /tasks/{id}, ...  HTTP+JSON 1.0 (the SDK's REST paths)
    ...  /a2a/{agent_id}/v1/message:send, ...            HTTP+JSON 0.3
    GET  /a2a, /.well-known/agent-card.json              the directory, the default agent's card
                                                         (directory.py)
    ...  /a2a-proxy/{name}/...                           outside A2A agents (proxy.py)

The SDK's own routes, dispatchers and card route do the protocol: parsing, version negotiation
(`A2A-Version`; none is 0.3, so a 1.0 method without the header is -32009), the bindings' error
formats and codes. Ours wrap each endpoint: the agent id, the API key and scope (`agents:read`
to read, `send` to send or cancel; as anywhere on the gateway, failures are the mesh's HTTP 401,
403, 429), the key's `to_agents` patterns (an agent they do not match is answered as a missing
one on every route: HTTP 404, AGENT_NOT_FOUND), and for a new message the agent must be online
(else HTTP 404, AGENT_NOT_FOUND); then the SDK dispatches to `MeshRequestHandler`. Not in the
OpenAPI document: A2A is its own specification.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from a2a.server.context import ServerCallContext
from a2a.server.routes import (
    DefaultServerCallContextBuilder,
    create_jsonrpc_routes,
    create_rest_routes,
)
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.broker.subjects import validate_id
from agentmesh.gateway.a2a import directory, proxy
from agentmesh.gateway.a2a.cards import PREFIX
from agentmesh.gateway.a2a.handler import CALL, Call, MeshRequestHandler
from agentmesh.gateway.auth import Scope, require
from agentmesh.gateway.state import state_of
from agentmesh.schemas.errors import AgentNotFound, InvalidId

Endpoint = Callable[[Request], Awaitable[Response]]

BASE = PREFIX + "/{agent_id}"
# JSON-RPC methods (1.0 and 0.3 names) that need `send`; those that start a task need the agent.
STARTS = frozenset({"SendMessage", "SendStreamingMessage", "message/send", "message/stream"})
WRITES = STARTS | {
    "CancelTask",
    "tasks/cancel",
    "CreateTaskPushNotificationConfig",
    "DeleteTaskPushNotificationConfig",
    "tasks/pushNotificationConfig/set",
    "tasks/pushNotificationConfig/delete",
}
_SCOPE_KEY = "agentmesh.a2a_call"  # the request scope's Call, for the context builder


class MeshContextBuilder(DefaultServerCallContextBuilder):
    """The SDK's call context (headers, for the version) plus our `Call`."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[CALL] = request.scope.get(_SCOPE_KEY)
        return context


def _agent_id(request: Request) -> str:
    agent_id = request.path_params["agent_id"]
    try:
        return validate_id(agent_id, what="agent id")
    except InvalidId:
        raise AgentNotFound(
            f"no agent {agent_id[:80]!r}", details={"agent_id": agent_id[:80]}
        ) from None


async def _jsonrpc_method(request: Request) -> str | None:
    """The JSON-RPC method named in the body, if it is one (the SDK parses it again, from the
    request's cached body, and answers a malformed one)."""
    try:
        body = json.loads(await request.body())
    except ValueError:
        return None
    method = body.get("method") if isinstance(body, dict) else None
    return method if isinstance(method, str) else None


def _guarded(endpoint: Endpoint, *, writes: bool, starts: bool, jsonrpc: bool) -> Endpoint:
    """`endpoint` after the gateway's checks, with the request's `Call` for the handler."""

    async def guarded(request: Request) -> Response:
        agent_id = _agent_id(request)
        is_write, is_start = writes, starts
        if jsonrpc:
            method = await _jsonrpc_method(request)
            is_write, is_start = method in WRITES, method in STARTS
        principal = await require(Scope.SEND if is_write else Scope.AGENTS_READ)(request)
        directory.check_reach(principal, agent_id)
        if is_start:
            await directory.online(request, principal, agent_id)
        request.scope[_SCOPE_KEY] = Call(
            state=state_of(request),
            agent_id=agent_id,
            principal=principal,
            drain=request.app.state.draining,
        )
        return await endpoint(request)

    return guarded


def _rest_kind(path: str, methods: set[str]) -> tuple[bool, bool]:
    """(writes, starts) of an HTTP+JSON route: every POST or DELETE but a subscribe writes."""
    starts = path.endswith(("/message:send", "/message:stream"))
    writes = bool(methods & {"POST", "DELETE"}) and not path.endswith(":subscribe")
    return writes, starts


def build_router() -> APIRouter:
    """A router with the A2A routes, over one `MeshRequestHandler` for every agent."""
    handler = MeshRequestHandler()
    builder = MeshContextBuilder()
    router = APIRouter()
    router.add_route(
        BASE + AGENT_CARD_WELL_KNOWN_PATH,
        directory.card_endpoint(_agent_id),
        methods=["GET"],
        include_in_schema=False,
    )
    router.routes.extend(directory.routes())
    for route in create_jsonrpc_routes(
        handler, rpc_url=BASE, context_builder=builder, enable_v0_3_compat=True
    ):
        endpoint = _guarded(route.endpoint, writes=False, starts=False, jsonrpc=True)
        router.add_route(route.path, endpoint, methods=["POST"], include_in_schema=False)
    for route in create_rest_routes(
        handler, context_builder=builder, enable_v0_3_compat=True, path_prefix=BASE
    ):
        if not isinstance(route, Route):
            continue  # the SDK's `/{tenant}` mount would match every path of the gateway
        methods = set(route.methods or ())
        writes, starts = _rest_kind(route.path, methods)
        endpoint = _guarded(route.endpoint, writes=writes, starts=starts, jsonrpc=False)
        router.add_route(route.path, endpoint, methods=sorted(methods), include_in_schema=False)
    router.include_router(proxy.build_router())
    return router


router = build_router()
