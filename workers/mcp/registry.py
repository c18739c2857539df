"""The mesh's tool catalog: every MCP worker announces its servers and their tools in Redis.

p:mcp:workers          ZSET worker id → its last announcement (Unix seconds)
p:mcp:worker:<id>      STRING JSON {server name: {state, transport, tools, error, restarts}},
                       expiring after two heartbeat timeouts

A worker announces on every change (connected, lost, tools changed) and every heartbeat. Readers
merge the announcements of live workers: a server is `up` while any worker has it up, and its
tools are taken from one of those workers.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from agentmesh.broker.subjects import Subjects

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CatalogTool:
    server: str
    tool: dict[str, Any]  # the MCP Tool object (name, description, inputSchema, ...)

    @property
    def name(self) -> str:
        """The tool's own name on its server."""
        return self.tool["name"]

    @property
    def federated_name(self) -> str:
        """`{server}_{tool}`: the name the gateway's `/mcp` lists."""
        return f"{self.server}_{self.name}"


@dataclass(slots=True)
class CatalogServer:
    name: str
    state: str  # "up" when at least one worker has it connected, else "down"
    workers: int = 0  # live workers that have it up
    tools: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # why it is down (from a worker that has it down)


@dataclass(slots=True)
class Catalog:
    servers: dict[str, CatalogServer] = field(default_factory=dict)

    def tools(self) -> list[CatalogTool]:
        """Every tool of every server that is up, by server then tool name."""
        return [
            CatalogTool(server.name, tool)
            for server in sorted(self.servers.values(), key=lambda s: s.name)
            if server.state == "up"
            for tool in sorted(server.tools, key=lambda t: t["name"])
        ]

    def find(self, server: str, tool: str) -> CatalogTool | None:
        entry = self.servers.get(server)
        if entry is None:
            return None
        found = next((t for t in entry.tools if t.get("name") == tool), None)
        return None if found is None else CatalogTool(server, found)

    def federated(self) -> dict[str, CatalogTool]:
        """`{server}_{tool}` → tool; on a clash (`a_b`+`c` vs `a`+`b_c`) the first server wins."""
        out: dict[str, CatalogTool] = {}
        for tool in self.tools():
            if tool.federated_name in out:
                logger.warning("two tools federate to %s; keeping the first", tool.federated_name)
                continue
            out[tool.federated_name] = tool
        return out


class ToolRegistry:
    def __init__(self, redis: aioredis.Redis, subjects: Subjects, *, timeout: float) -> None:
        self.redis = redis
        self.subjects = subjects
        self.timeout = timeout
        self._workers = subjects.key("mcp", "workers")

    def _worker(self, worker_id: str) -> str:
        return self.subjects.key("mcp", "worker", worker_id)

    async def announce(self, worker_id: str, servers: dict[str, dict[str, Any]]) -> None:
        ttl = int(self.timeout * 2 * 1000)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._worker(worker_id), json.dumps(servers), px=ttl)
            pipe.zadd(self._workers, {worker_id: time.time()})
            pipe.pexpire(self._workers, ttl)
            await pipe.execute()

    async def withdraw(self, worker_id: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._worker(worker_id))
            pipe.zrem(self._workers, worker_id)
            await pipe.execute()

    async def catalog(self) -> Catalog:
        cutoff = time.time() - self.timeout
        ids = sorted(await self.redis.zrangebyscore(self._workers, f"({cutoff}", "+inf"))
        if not ids:
            return Catalog()
        blobs = await self.redis.mget([self._worker(i.decode()) for i in ids])
        catalog = Catalog()
        for blob in blobs:
            if blob is None:
                continue  # withdrawn or expired between the two reads
            try:
                announced = json.loads(blob)
            except ValueError:
                continue
            for name, info in announced.items():
                _merge(catalog, name, info)
        return catalog


def _merge(catalog: Catalog, name: str, info: dict[str, Any]) -> None:
    entry = catalog.servers.setdefault(name, CatalogServer(name=name, state="down"))
    if info.get("state") == "up":
        if entry.state != "up":
            entry.tools = list(info.get("tools") or [])
            entry.error = None
        entry.state = "up"
        entry.workers += 1
    elif entry.state != "up":
        entry.error = info.get("error") or info.get("state")
