"""Fixtures (a plugin of the root conftest): MCP workers on this test's mesh, the demo MCP
server over stdio and over HTTP (Streamable HTTP and SSE, in process on a free port)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.gateway.server import AsgiServer
from agentmesh.workers.mcp.config import MCPConfig
from agentmesh.workers.mcp.worker import MCPWorker
from tests.mcp.demo_server import create_server

DEMO = str(Path(__file__).with_name("demo_server.py"))
TIME = {"command": "python", "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
DEMO_STDIO = {"command": sys.executable, "args": [DEMO]}

StartMCPWorker = Callable[..., Awaitable[MCPWorker]]


@pytest.fixture
async def start_mcp_worker(settings: Settings) -> AsyncIterator[StartMCPWorker]:
    """`await start_mcp_worker({"time": TIME, ...})` runs an MCP worker with those servers and
    waits until they are up (`wait=False`: do not); stopped afterwards."""
    running: list[MCPWorker] = []

    async def start(servers: dict[str, Any], *, wait: bool = True) -> MCPWorker:
        worker = MCPWorker(MCPConfig.parse({"mcpServers": servers}))
        running.append(worker)
        await worker.start(settings)
        if wait:
            await worker.wait_up(timeout=30)
        return worker

    yield start
    for worker in reversed(running):
        await worker.stop()


class DemoHTTP:
    """The demo server over HTTP in this process: `/mcp` (Streamable HTTP) and `/sse`."""

    def __init__(self, port: int | None = None, *, token: str | None = None) -> None:
        self.port = port or free_port()
        self.token = token  # when set, requests need "Authorization: Bearer <token>"
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.sse_url = f"http://127.0.0.1:{self.port}/sse"
        self._server: AsgiServer | None = None

    async def start(self) -> DemoHTTP:
        mcp = create_server()
        http = mcp.streamable_http_app()
        http.mount("/", mcp.sse_app())
        app = http if self.token is None else _require_bearer(http, self.token)
        self._server = AsgiServer(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        await self._server.start()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None


def _require_bearer(app: ASGIApp, token: str) -> ASGIApp:
    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization") != f"Bearer {token}".encode():
                await PlainTextResponse("bad token", 401)(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


@pytest.fixture
async def demo_http() -> AsyncIterator[DemoHTTP]:
    server = await DemoHTTP().start()
    yield server
    await server.stop()
