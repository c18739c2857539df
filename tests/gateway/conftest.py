"""Real gateway replicas (uvicorn on free ports, in this test's event loop) and HTTP clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.utils.constants import TransportProtocol

from agentmesh.broker.servers import NatsServer, free_port
from agentmesh.broker.settings import Settings
from agentmesh.gateway.server import AsgiServer, make_server
from agentmesh.gateway.state import GatewayConfig


class NatsWithoutJetStream(NatsServer):
    """A nats-server with JetStream off, started on the port (and data dir) of `like`: core NATS
    works, every JetStream request has no responder, as when JetStream is down."""

    def __init__(self, like: NatsServer) -> None:
        super().__init__(port=like.port, data_dir=like.data_dir, host=like.host)

    def command(self) -> list[str]:
        full = super().command()
        at = full.index("-js")
        return full[:at] + full[at + 3 :]  # without "-js", "-sd", <dir>


@dataclass
class Replica:
    url: str  # http://127.0.0.1:PORT
    port: int

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1)


StartGateway = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def start_gateway(settings: Settings) -> AsyncIterator[StartGateway]:
    """`await start_gateway(config=...)` runs one more replica; all stop after the test."""
    running: list[AsgiServer] = []

    async def start(
        *, config: GatewayConfig | None = None, settings_: Settings | None = None
    ) -> Replica:
        port = free_port()
        server = make_server(
            settings_ or settings, port=port, config=config or GatewayConfig(), log_level="warning"
        )
        await server.start()
        running.append(server)
        return Replica(url=f"http://127.0.0.1:{port}", port=port)

    yield start
    for server in running:
        server.should_exit = True
    async with asyncio.timeout(15):
        await asyncio.gather(*(server.stop() for server in running))


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> Replica:
    return await start_gateway()


@pytest.fixture
async def http(gateway: Replica) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        yield client


JSONRPC = TransportProtocol.JSONRPC.value


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., Any]]:
    """`await connect(replica, agent_id, binding=..., streaming=...)` (or `connect(url)`, the
    agent's A2A URL): an SDK client from the agent's card (resolved through the gateway); all
    closed after the test."""
    opened: list[Client] = []
    http = httpx.AsyncClient(timeout=30)

    async def connect(
        where: Replica | str,
        agent_id: str = "",
        *,
        binding: str = JSONRPC,
        streaming: bool = False,
    ) -> Client:
        url = where if isinstance(where, str) else f"{where.url}/a2a/{agent_id}"
        config = ClientConfig(
            httpx_client=http,
            streaming=streaming,
            supported_protocol_bindings=[binding],
            use_client_preference=True,
        )
        client = await ClientFactory(config).create_from_url(url)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        await client.close()
    await http.aclose()
