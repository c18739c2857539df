"""The base of the fake upstreams: a real uvicorn server on a free port, started and stopped
in the test's event loop (awaiting its start-up, not polling for it)."""

from __future__ import annotations

from typing import Self

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from agentmesh.broker.servers import free_port
from agentmesh.gateway.server import AsgiServer


class FakeServer:
    def __init__(self, routes: list[Route]) -> None:
        self.port = free_port()
        app = Starlette(routes=routes)
        self.server = AsgiServer(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )

    async def start(self) -> Self:
        await self.server.start()
        return self

    async def stop(self) -> None:
        await self.server.stop()
