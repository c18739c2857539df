"""The gateway's `/mcp`: one MCP server (Streamable HTTP, the `mcp` SDK's server side) that
federates every tool in the mesh under `{server}_{tool}` names.

Stateless: no MCP session lives in a replica (the SDK's stateless mode for 2025-11-25 clients;
2026-07-28 clients are sessionless anyway), so any replica answers any request. Gateway API keys
apply as on every route (scope `send`); a key limited to some tools sees and calls only those.

Errors follow the spec: an unknown (or hidden) tool is a JSON-RPC `-32602`; a JSON-RPC error of
the upstream server is passed on with its code; a tool that is unreachable or slow right now is
an `isError` result whose text starts with the mesh's error code (`UNAVAILABLE: ...`), so a
model can read it and try again later. With Redis unreachable, `tools/list` is a JSON-RPC
`-32603` error whose message starts with `UNAVAILABLE: ` (data: `code`, `retry_after`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from agentmesh.gateway.auth import Principal, require
from agentmesh.gateway.auth import Scope as KeyScope
from agentmesh.gateway.errors import RETRY_AFTER, error_body, error_response, redis_unavailable
from agentmesh.gateway.state import GatewayState, state_of
from agentmesh.schemas.errors import (
    ErrorCode,
    Forbidden,
    InvalidMessage,
    MeshError,
    ToolError,
    ToolNotFound,
)
from agentmesh.schemas.version import __version__

logger = logging.getLogger(__name__)

_PRINCIPAL = "agentmesh.principal"  # the ASGI scope key the auth wrapper fills in
_CHECK_KEY = require(KeyScope.SEND)
_NO_STREAM = JSONResponse(  # what the gateway answers any method a route does not take
    error_body(ErrorCode.INVALID_MESSAGE, "/mcp offers no server stream (GET): POST JSON-RPC"),
    status_code=405,
    headers={"Allow": "POST, DELETE"},
)


class FederatedMCP:
    """The `/mcp` ASGI app and its session manager (run it in the gateway's lifespan)."""

    def __init__(self) -> None:
        self.server: Server[Any] = Server(
            "agentmesh",
            version=__version__,
            instructions="Every tool of the AgentMesh mesh, named {server}_{tool}.",
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
            get_tool_input_schema=self._input_schema,
        )
        self._state: GatewayState | None = None
        self.manager = StreamableHTTPSessionManager(
            app=self.server, stateless=True, json_response=True
        )

    @asynccontextmanager
    async def run(self, state: GatewayState) -> AsyncIterator[None]:
        self._state = state
        async with self.manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: authenticate like every gateway route, then hand over to the SDK."""
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":
            # Stateless: no server-initiated stream to offer. The spec's answer is 405; handing
            # the GET to the SDK opened an SSE stream that never sent a byte and never closed.
            await _NO_STREAM(scope, receive, send)
            return
        try:
            scope[_PRINCIPAL] = await _CHECK_KEY(HTTPConnection(scope))
        except MeshError as exc:
            await error_response(exc, "/mcp")(scope, receive, send)
            return
        await self.manager.handle_request(scope, receive, send)

    # MCP handlers ----------------------------------------------------------------------------
    async def _list_tools(
        self, ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        state, principal = self._caller(ctx)
        try:
            visible = await state.tools.visible(principal)
        except RedisError as exc:
            down = redis_unavailable(exc)
            raise MCPError(
                code=types.INTERNAL_ERROR,
                message=f"{down.code}: {down.message}",
                data={"code": str(down.code), "retry_after": RETRY_AFTER},
            ) from None
        tools = []
        for entry in visible:
            # The original names stay in the tool's _meta.
            meta = {**entry.tool.get("_meta", {}), "agentmesh/server": entry.server}
            meta["agentmesh/tool"] = entry.name
            listed = {**entry.tool, "name": entry.federated_name, "_meta": meta}
            tools.append(types.Tool.model_validate(listed))
        return types.ListToolsResult(tools=tools)

    async def _call_tool(
        self, ctx: Any, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        state, principal = self._caller(ctx)
        try:
            entry = await state.tools.federated(params.name)
        except RedisError as exc:
            return _retry_later(redis_unavailable(exc))
        unknown = MCPError(code=types.INVALID_PARAMS, message=f"Unknown tool: {params.name}")
        if entry is None or not principal.may_use_tool(entry.server, entry.name):
            raise unknown
        try:
            result = await state.tools.call(
                principal, entry.server, entry.name, dict(params.arguments or {})
            )
        except (ToolNotFound, Forbidden):
            raise unknown from None
        except ToolError as exc:
            code = exc.details.get("mcp_code")
            raise MCPError(
                code=code if isinstance(code, int) else types.INTERNAL_ERROR,
                message=exc.message,
                data=exc.details.get("mcp_data"),
            ) from None
        except InvalidMessage as exc:
            raise MCPError(code=types.INVALID_PARAMS, message=exc.message) from None
        except MeshError as exc:  # UNAVAILABLE, TIMEOUT, RATE_LIMIT, ...: the model may retry
            return _retry_later(exc)
        except RedisError as exc:
            return _retry_later(redis_unavailable(exc))
        return types.CallToolResult.model_validate(result.raw)

    def _input_schema(self, name: str) -> dict[str, Any] | None:
        return None if self._state is None else self._state.tools.cached_input_schema(name)

    def _caller(self, ctx: Any) -> tuple[GatewayState, Principal]:
        request: Request | None = ctx.request
        if request is None or _PRINCIPAL not in request.scope:  # not through __call__
            raise MCPError(code=types.INTERNAL_ERROR, message="no caller for this request")
        return state_of(request), request.scope[_PRINCIPAL]


def _retry_later(exc: MeshError) -> types.CallToolResult:
    """A failure the model may retry later, as a result it can read: `CODE: message`."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{exc.code}: {exc.message}")],
        is_error=True,
    )
