"""`handshake_timeout`: a connection that sends no complete request headers in time is closed.

Raw sockets against a real replica; every wait is on the socket, with a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import httpx
import pytest

from agentmesh.gateway.config import GatewaySection
from agentmesh.gateway.state import GatewayConfig
from tests.gateway.conftest import Replica, StartGateway
from tests.gateway.test_websocket import ws_agent

HANDSHAKE = 0.5  # seconds: the replicas' handshake_timeout here
DEADLINE = HANDSHAKE + 5  # the server must have closed by then (a loaded machine is slow)
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
UPGRADE = (
    b"GET /gateway/connect?agent_id=half HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
)


@pytest.fixture
async def replica(start_gateway: StartGateway) -> Replica:
    return await start_gateway(config=GatewayConfig(handshake_timeout=HANDSHAKE))


@asynccontextmanager
async def raw(replica: Replica) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", replica.port)
    try:
        yield reader, writer
    finally:
        writer.close()


async def until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """What the server sends until it closes the connection, and how many seconds that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(DEADLINE):
        data = await reader.read()  # to end of stream
    return data, loop.time() - start


async def response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP response with a Content-Length: its status and body."""
    async with asyncio.timeout(DEADLINE):
        head = await reader.readuntil(b"\r\n\r\n")
        fields = dict(
            line.lower().split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line
        )
        body = await reader.readexactly(int(fields[b"content-length"]))
    return int(head.split(b" ", 2)[1]), body


def test_the_handshake_timeout_comes_from_the_environment_or_the_mesh_file() -> None:
    assert GatewayConfig.from_env({}).handshake_timeout == 10.0
    base = GatewayConfig.from_env({"AGENTMESH_GATEWAY_HANDSHAKE_TIMEOUT": "2.5"})
    assert base.handshake_timeout == 2.5
    assert GatewaySection().to_config(base).handshake_timeout == 2.5  # not set: kept
    assert GatewaySection(handshake_timeout=4).to_config(base).handshake_timeout == 4
    for bad in ("0", "-1", "nan", "soon"):
        with pytest.raises(ValueError, match="AGENTMESH_GATEWAY_"):
            GatewayConfig.from_env({"AGENTMESH_GATEWAY_HANDSHAKE_TIMEOUT": bad})


async def test_a_connection_that_sends_nothing_is_closed_after_the_handshake_timeout(
    replica: Replica,
) -> None:
    async with raw(replica) as (reader, _):
        data, took = await until_closed(reader)
    assert data == b""  # no request, so no answer
    assert took >= HANDSHAKE * 0.9


@pytest.mark.parametrize(
    "partial",
    [b"GET /heal", HEALTHZ[:-2], UPGRADE],
    ids=["request-line", "headers", "websocket-upgrade"],
)
async def test_a_request_whose_headers_stop_midway_is_answered_408_and_closed(
    replica: Replica, partial: bytes
) -> None:
    async with raw(replica) as (reader, writer):
        writer.write(partial)
        data, took = await until_closed(reader)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert took >= HANDSHAKE * 0.9


async def test_headers_sent_a_byte_at_a_time_are_cut_off_at_the_handshake_timeout(
    replica: Replica,
) -> None:
    """Slowloris: bytes keep coming, but the deadline is on the whole headers."""
    async with raw(replica) as (reader, writer):

        async def trickle() -> None:
            for byte in HEALTHZ[:-2] + b"X-Pad: " + b"a" * 1000:
                if reader.at_eof():
                    return
                writer.write(bytes([byte]))
                await asyncio.sleep(HANDSHAKE / 10)  # the client's pace, not a synchronisation

        sender = asyncio.create_task(trickle())
        try:
            data, _ = await until_closed(reader)
        except ConnectionResetError:  # a trickled byte raced the close: closed all the same
            data = b""
        finally:
            sender.cancel()
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data


async def test_a_kept_alive_connection_stays_usable_past_the_handshake_timeout(
    replica: Replica,
) -> None:
    async with raw(replica) as (reader, writer):
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        with pytest.raises(TimeoutError):  # idle twice the handshake timeout: still open
            async with asyncio.timeout(2 * HANDSHAKE):
                await reader.read(1)
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200


async def test_a_slow_next_request_on_a_kept_alive_connection_is_answered_408(
    replica: Replica,
) -> None:
    """The deadline runs again from the first byte of the next request."""
    async with raw(replica) as (reader, writer):
        writer.write(HEALTHZ)
        assert (await response(reader))[0] == 200
        writer.write(b"\r\n" + HEALTHZ[:-2])  # a stray CRLF first: uvicorn skips it
        data, took = await until_closed(reader)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert took >= HANDSHAKE * 0.9


async def test_requests_and_websocket_agents_outlive_a_short_handshake_timeout(
    replica: Replica,
) -> None:
    async with httpx.AsyncClient(base_url=replica.url, timeout=DEADLINE) as http:
        assert (await http.get("/healthz")).status_code == 200
    async with ws_agent(replica, "past-handshake") as sock:
        # heartbeats acknowledged for twice the handshake timeout: the socket was not cut
        interval = sock.hello["heartbeat_interval"]
        await sock.heartbeat_acks(int(2 * HANDSHAKE / interval) + 1)


async def test_a_new_handshake_timeout_applies_to_new_connections_without_a_restart(
    start_gateway: StartGateway,
) -> None:
    config = GatewayConfig(handshake_timeout=60)
    replica = await start_gateway(config=config)
    assert config.apply(replace(config, handshake_timeout=HANDSHAKE)) == ["handshake_timeout"]
    async with raw(replica) as (reader, _):
        data, _ = await until_closed(reader)  # within DEADLINE, far below the first 60 s
    assert data == b""
