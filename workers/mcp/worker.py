"""`MCPWorker`: connects to the MCP servers of an `mcp.json` and serves their tools on the bus.

Each server is served on `<p>.tool.<server>` in a queue group of the same name while its
session is up (a worker whose server is down leaves the group, so another worker's copy takes
the calls). Request body: msgpack `{"tool", "arguments"?, "timeout"?}`; reply: the MCP
`CallToolResult` as a map (`content`, `structuredContent`?, `isError`). See docs/PROTOCOL.md §10.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agentmesh.broker.lifecycle import MeshService
from agentmesh.broker.settings import Settings
from agentmesh.broker.types import Request
from agentmesh.schemas.codec import pack
from agentmesh.schemas.service import Serves, ServiceKind
from agentmesh.schemas.tools import parse_call
from agentmesh.workers.mcp.config import MCPConfig
from agentmesh.workers.mcp.upstream import Upstream

logger = logging.getLogger(__name__)


class MCPWorker(MeshService):
    """Serves the tools of an `MCPConfig`'s servers; in the registry as kind `mcp-worker`, with
    its servers and their tools in the record's `detail.servers` (the mesh's tool catalog).

    Args:
        config: the MCP servers.
        name: the worker's service name in the registry (several workers may share one).
    """

    kind = ServiceKind.MCP_WORKER

    def __init__(self, config: MCPConfig, *, name: str = "mcp-worker") -> None:
        super().__init__(name)
        self.config = config
        self.upstreams: dict[str, Upstream] = {}
        self._services: dict[str, Any] = {}
        self._retiring: set[Upstream] = set()  # removed by apply(), not yet stopped
        self._lock = asyncio.Lock()
        self._state_changed = asyncio.Event()

    @property
    def worker_id(self) -> str | None:
        """This worker's instance id (while it runs)."""
        return self.instance_id

    def serves(self) -> Serves:
        # What is subscribed, not what is connected: a server is announced once calls reach it.
        return Serves(tools=sorted(self._services))

    def detail(self) -> dict[str, Any]:
        return {"servers": {name: u.info() for name, u in self.upstreams.items()}}

    async def on_start(self) -> None:
        interval = self.bus.settings.heartbeat_interval
        for server in self.config.servers:
            self.upstreams[server.name] = Upstream(server, self._changed, ping_interval=interval)

    async def start(self, settings: Settings | None = None) -> None:
        await super().start(settings)  # announced (every server down) before any connects
        for upstream in self.upstreams.values():
            upstream.start()
        logger.info("MCP worker %s for %s", self.instance_id, ", ".join(self.upstreams))

    async def wait_up(self, timeout: float = 30.0) -> None:
        """Wait until every server is up (for tests and `agentmesh up`).

        Raises:
            TimeoutError: some server is still down at the deadline; the message says why.
        """
        try:
            await self.wait_for(self._all_served, timeout)
        except TimeoutError:
            down = [f"{u.name}: {u.error}" for u in self.upstreams.values() if u.state != "up"]
            why = "; ".join(down)
            raise TimeoutError(f"MCP servers not up after {timeout:g}s: {why}") from None

    def _all_served(self) -> bool:
        """Every server is up and its subject subscribed (calls reach it)."""
        return all(u.state == "up" and name in self._services for name, u in self.upstreams.items())

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
            if self.upstreams.get(name) is not upstream:
                return  # removed or replaced by `apply`: its late news is not ours to act on
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
        """Re-announce now (a server's state or tools changed); returns once Redis has it."""
        await self.announce()

    async def apply(self, config: MCPConfig) -> None:
        """Serve `config` from now on: start added servers, stop removed ones, restart changed ones.

        A removed or changed server first leaves its queue group, then the calls in flight on it
        finish (bounded), then its session closes. A changed server is unserved while its new
        session connects, usually well under a second; other workers' copies take those calls.
        """
        assert self._bus is not None, "apply() needs a started worker"
        wanted = {s.name: s for s in config.servers}
        gone: list[tuple[Upstream, Any]] = []
        async with self._lock:
            for name, upstream in list(self.upstreams.items()):
                if wanted.get(name) != upstream.config:
                    del self.upstreams[name]
                    self._retiring.add(upstream)  # stopped below, or by on_stop if cancelled
                    gone.append((upstream, self._services.pop(name, None)))
        for _, service in gone:
            if service is not None:
                await service.unsubscribe()  # no new call reaches it
        if gone:
            await self._announce()  # out of the catalog before the (bounded) drain
        for upstream, service in gone:
            if service is not None:
                await service.stop()  # the calls in flight finish
            await upstream.stop()
            self._retiring.discard(upstream)
            why = "changed, restarting it" if upstream.name in wanted else "removed"
            logger.info("stopped MCP server %s (%s)", upstream.name, why)
        interval = self._bus.settings.heartbeat_interval
        added = []
        async with self._lock:
            for name, server in wanted.items():
                if name not in self.upstreams:
                    self.upstreams[name] = Upstream(server, self._changed, ping_interval=interval)
                    added.append(self.upstreams[name])
        self.config = config
        await self._announce()
        for upstream in added:
            upstream.start()
        self._state_changed.set()

    async def on_stop(self) -> None:
        """Take no new calls, let those in flight finish, close the sessions (stopping stdio
        servers); the registry entry is already withdrawn."""
        async with self._lock:
            services, self._services = list(self._services.values()), {}
        for service in services:
            await service.stop()
        for upstream in [*self.upstreams.values(), *self._retiring]:
            await upstream.stop()
        self.upstreams, self._retiring = {}, set()
