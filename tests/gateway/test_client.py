"""`GatewayClient` against real gateway replicas (uvicorn), NATS and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.gateway import GatewayClient
from agentmesh.gateway.server import make_server
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.errors import (
    AgentNotFound,
    ConnectionFailed,
    InvalidId,
    MeshError,
    MeshTimeout,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from tests.conftest import StartAgent
from tests.gateway.conftest import Replica, StartGateway
from tests.gateway.test_websocket import next_offline, presence_events

TIMEOUT = 5.0


@asynccontextmanager
async def client_for(
    replica: Replica | str, agent_id: str, **kw: Any
) -> AsyncIterator[GatewayClient]:
    url = replica if isinstance(replica, str) else replica.ws_url
    client = GatewayClient(url, agent_id=agent_id, **kw)
    yield client
    await client.close()


@asynccontextmanager
async def replica_on(settings: Settings, port: int) -> AsyncIterator[None]:
    """A gateway replica on a chosen port, stopped (gracefully) on leaving."""
    server = make_server(settings, port=port, config=GatewayConfig(), log_level="warning")
    async with asyncio.timeout(10):
        await server.start()
    try:
        yield
    finally:
        async with asyncio.timeout(15):
            await server.stop()


def blocking_agent(agent_id: str, started: asyncio.Event, release: asyncio.Event) -> Agent:
    agent = Agent(agent_id)

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        started.set()
        await release.wait()
        return "released"

    return agent


async def test_the_client_is_an_agent_whose_handler_answers_messages_from_anywhere(
    gateway: Replica, mesh: MeshClient, http: httpx.AsyncClient
) -> None:
    seen: list[dict[str, Any]] = []
    async with client_for(
        gateway, "my-agent-001", agent_name="My Agent", capabilities=["search"]
    ) as client:

        @client.on_message
        async def handle(message: dict[str, Any]) -> str:
            seen.append(message)
            return f"ws: {message['text']}"

        await client.connect()
        assert client.connected and client.instance_id
        presence = await mesh.agent("my-agent-001")
        assert presence is not None and presence.agent_name == "My Agent"
        assert presence.capabilities == ["search"] and presence.instances[0].via == "gateway"
        reply = await mesh.ask("my-agent-001", "hi", conversation_id="c1")
        assert reply.text == "ws: hi" and reply.conversation_id == "c1"
        body = {"to_agent_id": "my-agent-001", "content": [{"type": "text", "text": "yo"}]}
        r = await http.post("/gateway/send", json={**body, "wait": True})
        assert r.json()["result"]["result"] == "ws: yo"
    assert seen[0]["from_agent_id"] == "tester" and seen[0]["conversation_id"] == "c1"


async def test_a_handler_may_return_data_or_stream_chunks(
    gateway: Replica, mesh: MeshClient
) -> None:
    async with client_for(gateway, "data-agent") as data, client_for(gateway, "streamer") as st:

        @data.on_message
        async def as_data(message: dict[str, Any]) -> dict[str, Any]:
            return {"length": len(message["text"])}

        @st.on_message
        async def as_chunks(message: dict[str, Any]) -> AsyncIterator[str]:
            for word in message["text"].split():
                yield word + " "

        await data.connect()
        await st.connect()
        assert (await mesh.ask("data-agent", "four")).data == {"length": 4}
        chunks = [c.text async for c in mesh.stream("streamer", "one two three")]
        assert chunks == ["one ", "two ", "three "]
        assert (await mesh.ask("streamer", "a b")).text == "a b "


async def test_a_failing_handler_answers_the_caller_with_an_error(
    gateway: Replica, mesh: MeshClient
) -> None:
    async with client_for(gateway, "flaky") as client:

        @client.on_message
        async def handle(message: dict[str, Any]) -> str:
            if message["text"] == "limit":
                raise RateLimited("too many", retry_after=1.0)
            raise ValueError("bad input")

        await client.connect()
        with pytest.raises(MeshError) as err:
            await mesh.ask("flaky", "x")
        assert err.value.code == "INTERNAL" and err.value.message == "ValueError: bad input"
        with pytest.raises(RateLimited):
            await mesh.ask("flaky", "limit")


async def test_the_client_sends_to_an_sdk_agent_and_raises_the_gateways_error_codes(
    gateway: Replica, start_agent: StartAgent
) -> None:
    echo = Agent("sdk-agent")

    @echo.handler
    async def handle(msg: Message, ctx: Context) -> str:
        return f"re: {msg.text} (from {msg.from_agent_id}, {msg.metadata.get('k')})"

    await start_agent(echo)
    async with client_for(gateway, "client-agent") as client:
        await client.connect()
        result = await client.send("sdk-agent", "hello", conversation_id="c9", metadata={"k": 1})
        assert result["result"] == "re: hello (from client-agent, 1)"
        assert result["from_agent_id"] == "sdk-agent" and result["conversation_id"] == "c9"
        sent = await client.send("sdk-agent", "fire and forget", wait=False)
        assert sent["type"] == "sent" and sent["status"] == "delivered"
        assert sent["task_id"].startswith("task-")  # stored as a task
        with pytest.raises(AgentNotFound):
            await client.send("nobody", "hello")
        with pytest.raises(InvalidId):
            await client.send("a.>", "hello")


async def test_a_send_past_its_timeout_raises_and_a_cancelled_call_cancels_the_handler(
    gateway: Replica, start_agent: StartAgent, mesh: MeshClient
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    await start_agent(blocking_agent("slow", started, release))
    cancelled = asyncio.Event()
    try:
        async with client_for(gateway, "patient") as client:

            @client.on_message
            async def handle(message: dict[str, Any]) -> str:
                try:
                    await asyncio.Event().wait()
                finally:
                    cancelled.set()
                return "never"

            await client.connect()
            with pytest.raises(MeshTimeout):
                await client.send("slow", "hurry", timeout=0.3)
            with pytest.raises(MeshTimeout):
                await mesh.ask("patient", "hurry", timeout=0.3)
            async with asyncio.timeout(TIMEOUT):
                await cancelled.wait()  # the `cancel` frame reached the handler
    finally:
        release.set()


async def test_closing_the_client_takes_the_agent_offline_at_once(
    gateway: Replica, mesh: MeshClient
) -> None:
    async with presence_events(mesh, "short-lived") as events:
        async with client_for(gateway, "short-lived") as client:
            await client.connect()
            assert await mesh.agent("short-lived") is not None
        assert (await next_offline(events)).reason == "deregistered"
    assert not client.connected


async def test_the_clients_heartbeats_keep_it_online_past_the_heartbeat_timeout(
    gateway: Replica, mesh: MeshClient, settings: Settings
) -> None:
    async with client_for(gateway, "steady") as client:
        await client.connect()
        loop = asyncio.get_running_loop()
        end = loop.time() + 3 * settings.heartbeat_timeout
        while loop.time() < end:  # observed over time: online at every look
            assert await mesh.agent("steady") is not None
            await asyncio.sleep(settings.heartbeat_interval)
        assert client.connected


async def test_connect_raises_when_the_gateway_is_unreachable_or_refuses_the_key(
    start_gateway: StartGateway,
) -> None:
    async with client_for(f"ws://127.0.0.1:{free_port()}", "lonely") as client:
        with pytest.raises(ConnectionFailed):
            await client.connect()
    replica = await start_gateway(config=GatewayConfig(auth=True))
    async with client_for(replica, "keyless") as client:
        with pytest.raises(Unauthorized):
            await client.connect()
    with pytest.raises(InvalidId):
        GatewayClient(replica.ws_url, agent_id="bad.id")


async def test_the_client_reconnects_after_its_gateway_replica_restarts(
    settings: Settings, mesh: MeshClient, start_agent: StartAgent
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    await start_agent(blocking_agent("blocker", started, release))
    port = free_port()
    try:
        async with client_for(f"ws://127.0.0.1:{port}", "phoenix", reconnect_interval=0.05) as c:

            @c.on_message
            async def handle(message: dict[str, Any]) -> str:
                return "alive"

            async with replica_on(settings, port):
                await c.connect()
                first = c.instance_id
                assert (await mesh.ask("phoenix", "?")).text == "alive"
                sending = asyncio.create_task(c.send("blocker", "wait for me"))
                async with asyncio.timeout(TIMEOUT):
                    await started.wait()
            # The replica stopped: it took the agent offline and closed the socket (1012).
            assert await mesh.agent("phoenix") is None
            with pytest.raises(Unavailable):
                await sending
            async with replica_on(settings, port):
                await c.wait_connected(TIMEOUT)  # `sending` failed: it had seen the drop
                assert c.instance_id != first
                assert (await mesh.ask("phoenix", "again?")).text == "alive"
                presence = await mesh.agent("phoenix")
                assert presence is not None
                assert [i.instance_id for i in presence.instances] == [c.instance_id]
    finally:
        release.set()
