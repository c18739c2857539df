"""`MCPClientManager`: the seed's MCP handle, pointed at the mesh. The seed starts MCP server
processes per agent; here MCP workers serve them once for the whole mesh, so this class starts
nothing: `get_tools(server)` lists what the workers serve and `call_tool` calls it over the bus.

MCPClientManager().call_tool("time", "get_current_time", {"timezone": "UTC"})

`load_config` takes the seed's `{"mcpServers": {...}}` and only checks that the mesh serves each
server (run `agentmesh worker mcp` with that file, or register it with `POST /v1/tools/mcp`).
"""

from __future__ import annotations

import logging
from typing import Any

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime.loop_thread import LoopThread
from agentmesh.agents.runtime.toolset import mcp_config
from agentmesh.broker.settings import Settings
from agentmesh.schemas.runtime import ToolConfig
from agentmesh.schemas.tools import ToolResult

logger = logging.getLogger(__name__)


class MCPClientManager:
    """Blocking, like the seed's (use `MeshClient.tools` in async code)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        self._thread: LoopThread | None = None
        self._mesh: MeshClient | None = None

    def load_config(self, config: dict[str, Any]) -> list[str]:
        """The servers of `config` the mesh does not serve now (each one is also logged)."""
        wanted = list((config or {}).get("mcpServers", {}))
        served = {t.server for t in self._run(self._catalog())}
        missing = [name for name in wanted if name not in served]
        for name in missing:
            logger.warning(
                "MCP server %r is not served by the mesh: run an MCP worker with it", name
            )
        return missing

    def get_tools(self, server_name: str) -> list[ToolConfig]:
        """The runtime's configs of the server's tools (their ids go in `tool_ids`)."""
        return [
            mcp_config(t.server, t.tool)
            for t in self._run(self._catalog())
            if t.server == server_name
        ]

    def call_tool(self, server: str, tool: str, arguments: dict[str, Any] | None = None) -> Any:
        """Call a tool directly (no model): its text, or its JSON when it returns structure."""
        result: ToolResult = self._run(self._call(server, tool, arguments or {}))
        return result.json()

    def close(self) -> None:
        if self._thread is not None:
            self._run(self._close())
            self._thread.stop()
            self._thread = None

    def _run(self, coro: Any) -> Any:
        if self._thread is None:
            self._thread = LoopThread()
        return self._thread.run(coro)

    async def _client(self) -> MeshClient:
        if self._mesh is None:
            self._mesh = await MeshClient.connect(self.settings)
        return self._mesh

    async def _catalog(self) -> list[Any]:
        return (await (await self._client()).tools.catalog()).tools()

    async def _call(self, server: str, tool: str, arguments: dict[str, Any]) -> ToolResult:
        return await (await self._client()).tools.call(server, tool, arguments)

    async def _close(self) -> None:
        if self._mesh is not None:
            await self._mesh.close()
            self._mesh = None
