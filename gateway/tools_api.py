"""Direct tool calls over HTTP, no LLM in between: `GET /v1/tools`, `POST /v1/tools/call`.

Errors use the mesh's own format (`{"error": {"code", "message", "details"}}`), like the agent
routes: TOOL_NOT_FOUND 404, TOOL_ERROR 422, UNAVAILABLE 503, TIMEOUT 504.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from agentmesh.broker.subjects import ID_PATTERN
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, responses
from agentmesh.gateway.runtime_tools_api import registered_tools
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.schemas.catalog import CatalogTool
from agentmesh.schemas.errors import ToolError
from agentmesh.schemas.tools import MAX_TIMEOUT

router = APIRouter(tags=["tools"], responses=responses(*AUTH_STATUSES))


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    server: str = Field(
        description="The MCP server's name in the mesh (a key of mcp.json).",
        json_schema_extra={"pattern": ID_PATTERN},  # checked by the bus: 400 INVALID_ID
    )
    tool: str = Field(min_length=1, description="The tool's own name on that server.")
    arguments: dict[str, Any] = Field(default_factory=dict)
    format: Literal["mcp", "json"] = Field(
        default="mcp",
        description="mcp: the MCP CallToolResult as is (isError included). json: "
        '{"result": <structuredContent, or the text parsed as JSON>}; a tool error is a 422.',
    )
    timeout: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT, description="Seconds.")


def describe(tool: CatalogTool) -> dict[str, Any]:
    """A catalog entry: the federated name, where it is served, and the MCP tool's fields."""
    mcp = tool.tool
    entry: dict[str, Any] = {
        "name": tool.federated_name,
        "server": tool.server,
        "tool": tool.name,
        "description": mcp.get("description"),
        "input_schema": mcp.get("inputSchema", {"type": "object"}),
    }
    for key, field in (("title", "title"), ("outputSchema", "output_schema")):
        if key in mcp:
            entry[field] = mcp[key]
    if "annotations" in mcp:
        entry["annotations"] = mcp["annotations"]
    return entry


@router.get("/v1/tools")
async def list_tools(
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.AGENTS_READ)),
) -> dict[str, Any]:
    """The federated catalog: every tool the key may use, and the servers behind them; plus
    `registered`, the tools registered for the runtime (HTTP tools, skills: POST /v1/tools,
    POST /v1/tools/skill)."""
    catalog = await state.tools.catalog(fresh=True)
    tools = await state.tools.visible(principal)
    servers = [
        {
            "name": server.name,
            "state": server.state,
            "workers": server.workers,
            "tools": sum(1 for t in tools if t.server == server.name),
            **({"error": server.error} if server.error else {}),
        }
        for server in sorted(catalog.servers.values(), key=lambda s: s.name)
        if principal.tools is None or any(t.server == server.name for t in tools)
    ]
    registered = await registered_tools(state, principal)
    return {
        "object": "list",
        "data": [describe(t) for t in tools],
        "servers": servers,
        "registered": registered,
    }


@router.post("/v1/tools/call", responses=responses(*BODY_STATUSES, 404, 504))
async def call_tool(
    call: ToolCall,
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> dict[str, Any]:
    """Call one tool of one MCP server in the mesh."""
    result = await state.tools.call(
        principal, call.server, call.tool, call.arguments, timeout=call.timeout
    )
    if call.format == "mcp":
        return result.raw
    if result.is_error:
        raise ToolError(
            result.text or f"{call.server}/{call.tool} reported an error",
            details={"server": call.server, "tool": call.tool, "result": result.raw},
        )
    return {"server": call.server, "tool": call.tool, "result": result.json()}
