"""What the gateway's tool routes share: the federated catalog (cached briefly per replica), the
key's tool permissions, and the call itself.

The catalog lives in Redis (MCP workers announce it); a replica reads it at most once per
`ttl` seconds, so listing and calling through `/mcp` cost no Redis round trip most of the time.
A name missing from the cached copy is looked up again at once, so a tool that just appeared is
callable without waiting for the cache to expire.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from agentmesh.agents.tools import Tools
from agentmesh.broker.bus import Bus
from agentmesh.broker.registry import Registry
from agentmesh.gateway.auth import Principal
from agentmesh.schemas.catalog import Catalog, CatalogTool
from agentmesh.schemas.errors import Forbidden
from agentmesh.schemas.service import ServiceKind
from agentmesh.schemas.tools import ToolResult

CATALOG_TTL = 1.0


class ToolDirectory:
    """The mesh's tools as one replica sees them."""

    def __init__(self, bus: Bus, redis: aioredis.Redis, *, ttl: float = CATALOG_TTL) -> None:
        self.bus = bus
        self.redis = redis
        self.ttl = ttl
        self.registry = Registry(redis, bus.subjects, timeout=bus.settings.heartbeat_timeout)
        self._catalog = Catalog()
        self._federated: dict[str, CatalogTool] = {}
        self._read_at = -float("inf")

    async def catalog(self, *, fresh: bool = False) -> Catalog:
        if fresh or time.monotonic() - self._read_at > self.ttl:
            catalog = Catalog.of(await self.registry.instances(ServiceKind.MCP_WORKER))
            self._catalog, self._federated = catalog, catalog.federated()
            self._read_at = time.monotonic()
        return self._catalog

    async def federated(self, name: str) -> CatalogTool | None:
        """The tool a federated `{server}_{tool}` name stands for (re-read once on a miss)."""
        await self.catalog()
        found = self._federated.get(name)
        if found is None:
            await self.catalog(fresh=True)
            found = self._federated.get(name)
        return found

    def cached_input_schema(self, name: str) -> dict[str, Any] | None:
        """The input schema of a federated name from the cached catalog (no I/O)."""
        found = self._federated.get(name)
        return None if found is None else found.tool.get("inputSchema")

    async def visible(self, principal: Principal) -> list[CatalogTool]:
        """The federated tools `principal` may use, by federated name."""
        federated = (await self.catalog()).federated()
        return [t for t in federated.values() if principal.may_use_tool(t.server, t.name)]

    async def call(
        self,
        principal: Principal,
        server: str,
        tool: str,
        arguments: dict[str, Any] | None,
        *,
        timeout: float | None = None,
    ) -> ToolResult:
        """Call a tool for `principal`.

        Raises:
            Forbidden: the key's tool permissions do not cover `server/tool`.
            MeshError: what `Tools.call` raises (TOOL_NOT_FOUND, UNAVAILABLE, TIMEOUT, ...).
        """
        if not principal.may_use_tool(server, tool):
            raise Forbidden(
                f"key '{principal.key_id}' may not use the tool {server}/{tool}",
                details={"server": server, "tool": tool, "key_id": principal.key_id},
            )
        tools = Tools(self.bus, self._registry)
        if timeout is None:
            return await tools.call(server, tool, arguments)
        return await tools.call(server, tool, arguments, timeout=timeout)

    async def _registry(self) -> Registry:
        return self.registry
