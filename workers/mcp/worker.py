"""`MCPWorker`: connects to the MCP servers of an `mcp.json` and serves their tools on the bus.

Each server is served on `<p>.tool.<server>` in a queue group of the same name while its
session is up (a worker whose server is down leaves the group, so another worker's copy takes
the calls). Request body: msgpack `{"tool", "arguments"?, "timeout"?}`; reply: the MCP
`CallToolResult` as a map (`content`, `structuredContent`?, `isError`). See docs/PROTOCOL.md §10.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.settings import Settings
from agentmesh.broker.types import Request
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import InvalidMessage
from agentmesh.workers.mcp.config import MCPConfig
from agentmesh.workers.mcp.registry import ToolRegistry
from agentmesh.workers.mcp.upstream import Upstream

logger = logging.getLogger(__name__)

MAX_TIMEOUT = 3600.0


def parse_call(data: bytes) -> tuple[str, dict[str, Any], float | None]:
    """(tool, arguments, timeout) of a tool-call request; `InvalidMessage` if malformed."""
    body = unpack(data)
    if not isinstance(body, dict):
        raise InvalidMessage("a tool call must be a map with 'tool' and 'arguments'")
    tool = body.get("tool")
    if not isinstance(tool, str) or not tool:
        raise InvalidMessage("'tool' must be a non-empty string", details={"field": "tool"})
    arguments = body.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise InvalidMessage("'arguments' must be a map", details={"field": "arguments"})
    timeout = body.get("timeout")
    if timeout is not None:
        ok = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if not ok or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
            raise InvalidMessage(
                f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT:g}]",
                details={"field": "timeout"},
            )
    return tool, arguments, timeout


class MCPWorker:
    def __init__(self, config: MCPConfig) -> None:
        self.config = config
        self.worker_id = uuid.uuid4().hex[:16]
        self.upstreams: dict[str, Upstream] = {}
        self._bus: Bus | None = None
        self._redis: Any = None
        self._registry: ToolRegistry | None = None
        self._services: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        self._beat: asyncio.Task[None] | None = None
        self._state_changed = asyncio.Event()

    async def start(self, settings: Settings | None = None) -> None:
        settings = settings or Settings.from_env()
        self._redis = await connect_redis(settings)
        self._bus = await Bus.connect(
            settings, name="agentmesh-mcp-worker", instance_id=self.worker_id
        )
        self._registry = ToolRegistry(
            self._redis, self._bus.subjects, timeout=settings.heartbeat_timeout
        )
        for server in self.config.servers:
            upstream = Upstream(server, self._changed, ping_interval=settings.heartbeat_interval)
            self.upstreams[server.name] = upstream
        await self._announce()
        for upstream in self.upstreams.values():
            upstream.start()
        self._beat = asyncio.get_running_loop().create_task(self._heartbeat(settings))
        logger.info("MCP worker %s for %s", self.worker_id, ", ".join(self.upstreams))

    async def wait_up(self, timeout: float = 30.0) -> None:
        """Wait until every server is up (for tests and `agentmesh up`).

        Raises:
            TimeoutError: some server is still down at the deadline; the message says why.
        """
        try:
            await self.wait_for(
                lambda: all(u.state == "up" for u in self.upstreams.values()), timeout
            )
        except TimeoutError:
            down = [f"{u.name}: {u.error}" for u in self.upstreams.values() if u.state != "up"]
            why = "; ".join(down)
            raise TimeoutError(f"MCP servers not up after {timeout:g}s: {why}") from None

    async def wait_for(self, condition: Callable[[], bool], timeout: float) -> None:
        """Wait until `condition()` holds, checking it on every state change of a server."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._state_changed.clear()
                await self._state_changed.wait()

    async def _changed(self, upstream: Upstream) -> None:
        """An upstream connected, went down or changed its tools: serve or not, then announce."""
        assert self._bus is not None
        async with self._lock:
            name = upstream.name
            if upstream.state == "up" and name not in self._services:
                subject = self._bus.subjects.tool(name)
                self._services[name] = await self._bus.serve(
                    subject, self._handler(upstream), queue=subject
                )
            elif upstream.state != "up" and name in self._services:
                # Calls in flight fail fast on a dead session; do not wait for long ones.
                await self._services.pop(name).stop(timeout=1.0)
        await self._announce()
        if upstream.state == "up":
            logger.info("serving MCP server %s: %d tools", name, len(upstream.tools))
        self._state_changed.set()  # after the announcement: waiters may read the catalog

    def _handler(self, upstream: Upstream):  # noqa: ANN202 - a broker Handler
        async def handle(request: Request) -> bytes:
            tool, arguments, timeout = parse_call(request.data)
            return pack(await upstream.call(tool, arguments, timeout or upstream.config.timeout))

        return handle

    async def _announce(self) -> None:
        if self._registry is None:
            return
        servers = {name: u.info() for name, u in self.upstreams.items()}
        try:
            await self._registry.announce(self.worker_id, servers)
        except (RedisError, OSError) as exc:
            logger.warning("could not announce MCP servers (%s); retrying", exc)

    async def _heartbeat(self, settings: Settings) -> None:
        while True:
            await asyncio.sleep(settings.heartbeat_interval)
            await self._announce()

    async def stop(self) -> None:
        """Take no new calls, let those in flight finish, close the sessions (stopping stdio
        servers), withdraw the catalog, disconnect."""
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        async with self._lock:
            services, self._services = list(self._services.values()), {}
        for service in services:
            await service.stop()
        for upstream in self.upstreams.values():
            await upstream.stop()
        if self._registry is not None:
            try:
                await self._registry.withdraw(self.worker_id)
            except (RedisError, OSError) as exc:
                logger.warning("could not withdraw MCP servers (%s)", exc)
            self._registry = None
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
