"""Calling MCP tools over the bus, with no LLM in between:
`await mesh.tools.call("time", "get_current_time", {"timezone": "UTC"})`.

Tools are served by MCP workers (`agentmesh worker mcp`), one queue group per MCP server; the
catalog of what is served now is in the registry (`await mesh.tools.list()`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from agentmesh.broker.bus import Bus
from agentmesh.broker.registry import Registry
from agentmesh.schemas.catalog import Catalog, CatalogTool
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import (
    InvalidMessage,
    MeshError,
    NoResponders,
    ToolNotFound,
    Unavailable,
)
from agentmesh.schemas.service import ServiceKind
from agentmesh.schemas.tools import ToolResult

DEFAULT_TIMEOUT = 60.0
# The bus waits this much longer than the tool's own timeout, so the worker's TIMEOUT (which
# names the server and tool) reaches the caller before the bus gives up.
_MARGIN = 2.0


class Tools:
    """The mesh's MCP tools. Get it as `MeshClient.tools` or `ctx.tools`."""

    def __init__(self, bus: Bus, registry: Callable[[], Awaitable[Registry]]) -> None:
        self.bus = bus
        self._registry = registry

    async def call(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> ToolResult:
        """Call `tool` of MCP server `server`.

        A tool that runs and reports a failure returns a result with `is_error=True`.

        Raises:
            ToolNotFound: no worker serves `server` now, or the server has no such tool.
            Unavailable: the server's session broke (a restart is under way).
            MeshTimeout: no answer within `timeout` seconds.
            ToolError: the MCP server refused the call (its JSON-RPC code in `details`).
            InvalidMessage / InvalidId: a bad server name, tool name or arguments.
        """
        subject = self.bus.subjects.tool(server)  # validates the server name first
        if not isinstance(tool, str) or not tool:
            raise InvalidMessage("the tool name must be a non-empty string")
        if arguments is not None and not isinstance(arguments, dict):
            raise InvalidMessage("'arguments' must be a dict", details={"field": "arguments"})
        body = pack({"tool": tool, "arguments": arguments or {}, "timeout": timeout})
        try:
            frame = await self.bus.request(subject, body, timeout=timeout + _MARGIN)
        except NoResponders:
            raise await self._not_served(server) from None
        return ToolResult.from_mcp(unpack(frame.data))

    async def _not_served(self, server: str) -> MeshError:
        """Nobody took the call: a server workers know but have down is UNAVAILABLE (they are
        reconnecting), one nobody announces is TOOL_NOT_FOUND."""
        details = {"server": server}
        try:
            known = (await self.catalog()).servers.get(server)
        except (RedisError, OSError):
            known = None
        if known is not None:
            return Unavailable(
                f"MCP server '{server}' is down ({known.error or 'reconnecting'}); "
                "its workers are reconnecting",
                details=details,
            )
        return ToolNotFound(f"no MCP worker serves '{server}' now", details=details)

    async def catalog(self) -> Catalog:
        """Every MCP server workers announce (up or down), with its tools."""
        registry = await self._registry()
        return Catalog.of(await registry.instances(ServiceKind.MCP_WORKER))

    async def list(self) -> list[CatalogTool]:
        """The tools callable now: `.server`, `.name`, `.tool` (the MCP Tool with its schema)."""
        return (await self.catalog()).tools()
