"""Running a gateway replica under uvicorn (`agentmesh gateway`, `agentmesh up`)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn

from agentmesh.broker.settings import Settings
from agentmesh.gateway.app import create_app
from agentmesh.gateway.handshake import handshake_protocol
from agentmesh.gateway.state import GatewayConfig

DEFAULT_PORT = 8001


class AsgiServer(uvicorn.Server):
    """uvicorn, run as a task of the caller's event loop.

    - No signal capture of its own: whoever runs it (`up`, `agentmesh gateway`, a test) owns
      SIGINT/SIGTERM and stops it with `stop()`, in its own shutdown order.
    - `start()` returns once it listens: uvicorn only exposes a `started` flag, so `startup`
      is wrapped to set an event that can be awaited instead of polled.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._ready.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn waits for every open response: long ones (task waits, event streams) end now.
        draining = getattr(getattr(self.config.app, "state", None), "draining", None)
        if isinstance(draining, asyncio.Event):
            draining.set()
        await super().shutdown(sockets=sockets)

    async def start(self) -> asyncio.Task[None]:
        """Serve in a task; return it once listening, or raise why start-up failed."""
        self._task = asyncio.get_running_loop().create_task(self.serve())
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            await asyncio.wait({ready, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not self._ready.is_set():
            self._task.result()  # raises what stopped it, if anything did
            raise RuntimeError(f"the server did not start on port {self.config.port}")
        return self._task

    async def stop(self) -> None:
        self.should_exit = True
        if self._task is not None:
            await self._task


def make_server(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    config: GatewayConfig | None = None,
    log_level: str = "info",
) -> AsgiServer:
    config = config or GatewayConfig.from_env()
    app = create_app(settings, config)
    app.state.listen = f"{host}:{port}"  # for the replica's registry record
    return AsgiServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="on",
            http=handshake_protocol(config),  # httptools, closing who sends no headers in time
            # wsproto: uvicorn's default (websockets-sansio) never answered nor closed an upgrade
            # whose request line passed 8 KiB, so such sockets were held (issue 10, item 7).
            ws="wsproto",
            ws_max_size=config.max_body_bytes,
            limit_concurrency=config.max_connections,  # beyond it: 503 at once, not a queue
            ws_ping_interval=20,
            ws_ping_timeout=20,
            timeout_keep_alive=30,
            server_header=False,
            access_log=False,
        )
    )
