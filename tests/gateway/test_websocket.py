"""`WS /gateway/connect` against real uvicorn, NATS and Redis, with real `websockets` clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.durable import DurableState
from agentmesh.broker.ratelimit import Limit
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.server import make_server
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.agent import PresenceEvent, PresenceStatus
from agentmesh.schemas.codec import decode
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.errors import MeshError, Unavailable
from tests.conftest import StartAgent
from tests.gateway.conftest import Replica, StartGateway
from tests.waiting import until

TIMEOUT = 5.0


class Socket:
    """A raw WebSocket agent: frames in and out; heartbeats in the background unless told not."""

    def __init__(self, ws: ClientConnection, hello: dict[str, Any]) -> None:
        self.ws = ws
        self.hello = hello
        self.acks = 0

    async def send(self, frame: dict[str, Any] | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        """The next frame other than a heartbeat acknowledgement."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                frame = json.loads(await self.ws.recv())
                if frame["type"] != "heartbeat_ack":
                    return frame
                self.acks += 1

    async def heartbeat_acks(self, count: int) -> None:
        """Wait until `count` heartbeats were acknowledged (no other frame may come)."""
        async with asyncio.timeout(TIMEOUT + count * self.hello["heartbeat_interval"]):
            while self.acks < count:
                frame = json.loads(await self.ws.recv())
                assert frame["type"] == "heartbeat_ack", frame
                self.acks += 1

    async def expect(self, kind: str) -> dict[str, Any]:
        frame = await self.recv()
        assert frame["type"] == kind, frame
        return frame

    async def closed(self) -> ConnectionClosed:
        """Wait for the gateway to close the socket; the close it sent."""
        async with asyncio.timeout(TIMEOUT):
            try:
                while True:
                    await self.ws.recv()
            except ConnectionClosed as exc:
                return exc


def connect_url(replica: Replica, **params: str) -> str:
    return f"{replica.ws_url}/gateway/connect?{urlencode(params)}"


@asynccontextmanager
async def ws_agent(
    replica: Replica, agent_id: str, *, heartbeat: bool = True, **params: str
) -> AsyncIterator[Socket]:
    async with connect(connect_url(replica, agent_id=agent_id, **params)) as ws:
        async with asyncio.timeout(TIMEOUT):
            hello = json.loads(await ws.recv())
        assert hello["type"] == "connected", hello
        sock = Socket(ws, hello)
        beats = asyncio.create_task(_beat(ws, hello["heartbeat_interval"])) if heartbeat else None
        try:
            yield sock
        finally:
            if beats is not None:
                beats.cancel()


async def _beat(ws: ClientConnection, interval: float) -> None:
    try:
        while True:
            await ws.send(json.dumps({"type": "heartbeat", "timestamp": "2026-03-04T12:00:00Z"}))
            await asyncio.sleep(interval)
    except ConnectionClosed:
        pass


async def drain(ws: ClientConnection, into: asyncio.Queue[dict[str, Any]]) -> None:
    """Read every frame into a queue (a client that stops reading stalls its closing)."""
    try:
        async for raw in ws:
            into.put_nowait(json.loads(raw))
    except ConnectionClosed:
        pass


def echo_agent(agent_id: str = "sdk-agent") -> Agent:
    agent = Agent(agent_id, name="SDK Agent")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        return f"re: {msg.text} (from {msg.from_agent_id})"

    return agent


def text(value: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": value}]


@asynccontextmanager
async def presence_events(mesh: MeshClient, agent_id: str) -> AsyncIterator[asyncio.Queue]:
    queue: asyncio.Queue[PresenceEvent] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        queue.put_nowait(decode(msg.data, PresenceEvent))

    sub = await mesh.bus.nc.subscribe(mesh.bus.subjects.presence_events(agent_id), cb=on_event)
    await mesh.bus.nc.flush()
    try:
        yield queue
    finally:
        await sub.unsubscribe()


async def next_offline(queue: asyncio.Queue[PresenceEvent]) -> PresenceEvent:
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = await queue.get()
            if event.event is PresenceStatus.OFFLINE:
                return event


# Connecting ----------------------------------------------------------------------------------
async def test_a_connected_socket_is_an_agent_of_the_mesh_attached_via_the_gateway(
    gateway: Replica, http: httpx.AsyncClient, mesh: MeshClient, settings: Settings
) -> None:
    params = {"agent_name": "My Agent", "capabilities": '["search","analyze"]'}
    async with ws_agent(gateway, "my-agent-001", **params) as sock:
        hello = sock.hello
        assert hello["agent_id"] == "my-agent-001" and hello["instance_id"]
        assert hello["heartbeat_interval"] == settings.heartbeat_interval
        assert hello["heartbeat_timeout"] == settings.heartbeat_timeout
        listed = (await http.get("/gateway/agents")).json()["agents"]
        assert [
            (a["agent_id"], a["agent_name"], a["capabilities"], a["status"]) for a in listed
        ] == [("my-agent-001", "My Agent", ["search", "analyze"], "online")]
        presence = await mesh.agent("my-agent-001")
        assert presence is not None
        [instance] = presence.instances
        assert instance.via == "gateway" and instance.instance_id == hello["instance_id"]


async def test_heartbeat_frames_keep_the_agent_online_past_the_heartbeat_timeout(
    gateway: Replica, http: httpx.AsyncClient, settings: Settings
) -> None:
    async with ws_agent(gateway, "beating") as sock:
        # Three timeouts' worth of beats, each acknowledged (so processed) by the gateway.
        await sock.heartbeat_acks(int(3 * settings.heartbeat_timeout / settings.heartbeat_interval))
        r = await http.get("/gateway/agents/beating")
        assert r.status_code == 200 and r.json()["status"] == "online"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"agent_id": "a.b"}, "INVALID_ID"),
        ({"agent_id": "a>"}, "INVALID_ID"),
        ({}, "INVALID_ID"),
        ({"agent_id": "ok", "capabilities": "search"}, "INVALID_MESSAGE"),
        ({"agent_id": "ok", "capabilities": "[1, 2]"}, "INVALID_MESSAGE"),
        ({"agent_id": "ok", "capabilities": '{"a": 1}'}, "INVALID_MESSAGE"),
    ],
)
async def test_a_bad_agent_id_or_bad_capabilities_get_an_error_frame_and_close_1008(
    gateway: Replica, http: httpx.AsyncClient, params: dict[str, str], code: str
) -> None:
    async with connect(connect_url(gateway, **params)) as ws:
        async with asyncio.timeout(TIMEOUT):
            frame = json.loads(await ws.recv())
        assert frame["type"] == "error" and frame["code"] == code, frame
        sock = Socket(ws, {})
        closed = await sock.closed()
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, code)
    assert (await http.get("/gateway/agents")).json()["agents"] == []


async def test_with_auth_on_a_socket_without_a_key_is_refused_as_unauthorized(
    start_gateway: StartGateway,
) -> None:
    replica = await start_gateway(config=GatewayConfig(auth=True))
    async with connect(connect_url(replica, agent_id="intruder")) as ws:
        async with asyncio.timeout(TIMEOUT):
            frame = json.loads(await ws.recv())
        assert frame["type"] == "error" and frame["code"] == "UNAUTHORIZED", frame
        closed = await Socket(ws, {}).closed()
    assert closed.rcvd is not None and closed.rcvd.code == 1008


async def test_each_send_frame_counts_against_the_keys_rate_limit(
    start_gateway: StartGateway, settings: Settings, start_agent: StartAgent, durable: DurableState
) -> None:
    keys = KeyStore(durable, Subjects(settings.prefix))
    key, _ = await keys.create(
        "ws", scopes=frozenset({Scope.CONNECT}), rate_limit=Limit(2, 60), agents=["limited"]
    )
    replica = await start_gateway(config=GatewayConfig(auth=True))
    await start_agent(echo_agent())
    async with ws_agent(replica, "limited", api_key=key) as sock:  # the connect costs one
        send = {"type": "send", "to_agent_id": "sdk-agent", "content": text("x")}
        await sock.send({**send, "message_id": "m-1"})
        assert (await sock.expect("result"))["message_id"] == "m-1"
        await sock.send({**send, "message_id": "m-2"})
        error = await sock.expect("error")
    assert (error["code"], error["message_id"]) == ("RATE_LIMIT", "m-2")
    assert error["details"]["retry_after"] > 0


# Statelessness and delivery ------------------------------------------------------------------
async def test_a_websocket_agent_on_replica_1_answers_an_http_send_that_arrives_on_replica_2(
    start_gateway: StartGateway,
) -> None:
    one, two = await start_gateway(), await start_gateway()
    async with ws_agent(one, "ws-agent") as sock, httpx.AsyncClient(base_url=two.url) as http:
        body = {
            "from_agent_id": "sender-001",
            "to_agent_id": "ws-agent",
            "conversation_id": "conv-abc-123",
            "content": text("Hello"),
            "metadata": {"k": "v"},
            "wait": True,
        }
        sending = asyncio.create_task(http.post("/gateway/send", json=body, timeout=TIMEOUT))
        message = await sock.expect("message")
        assert message["from_agent_id"] == "sender-001" and message["to_agent_id"] == "ws-agent"
        assert message["conversation_id"] == "conv-abc-123" and message["metadata"] == {"k": "v"}
        assert message["content"] == text("Hello") and message["stream"] is False
        # The seed's result frame, without message_id: matched by conversation.
        await sock.send(
            {
                "type": "result",
                "conversation_id": "conv-abc-123",
                "success": True,
                "result": "Response content",
                "metadata": {},
            }
        )
        r = await sending
    assert r.status_code == 200, r.text
    sent = r.json()
    assert sent["status"] == "completed" and sent["message_id"] == message["message_id"]
    assert sent["result"]["result"] == "Response content"
    assert sent["result"]["from_agent_id"] == "ws-agent"
    assert sent["result"]["conversation_id"] == "conv-abc-123"


async def test_an_sdk_agent_and_a_websocket_agent_talk_both_ways(
    gateway: Replica, start_agent: StartAgent, mesh: MeshClient
) -> None:
    await start_agent(echo_agent())
    async with ws_agent(gateway, "ws-agent") as sock:
        # SDK → WebSocket agent
        asking = asyncio.create_task(mesh.ask("ws-agent", "ping", conversation_id="c1"))
        message = await sock.expect("message")
        assert message["from_agent_id"] == "tester" and message["content"] == text("ping")
        await sock.send(
            {"type": "result", "message_id": message["message_id"], "result": {"pong": True}}
        )
        reply = await asking
        assert reply.from_agent_id == "ws-agent" and reply.data == {"pong": True}
        assert reply.conversation_id == "c1"
        # WebSocket agent → SDK agent
        await sock.send(
            {
                "type": "send",
                "to_agent_id": "sdk-agent",
                "conversation_id": "c2",
                "content": text("hello"),
                "metadata": {},
                "message_id": "m-1",
            }
        )
        result = await sock.expect("result")
    assert result["message_id"] == "m-1" and result["success"] is True
    assert result["result"] == "re: hello (from ws-agent)"
    assert result["from_agent_id"] == "sdk-agent" and result["conversation_id"] == "c2"
    assert result["content"] == text("re: hello (from ws-agent)")


async def test_websocket_agents_on_two_replicas_talk_to_each_other(
    start_gateway: StartGateway,
) -> None:
    one, two = await start_gateway(), await start_gateway()
    async with ws_agent(one, "alice") as alice, ws_agent(two, "bob") as bob:
        await alice.send({"type": "send", "to_agent_id": "bob", "content": text("hi bob")})
        # Alice's next frame is read meanwhile: an error she gets instead is what the test shows.
        answer = asyncio.create_task(alice.recv())
        delivered = asyncio.create_task(bob.expect("message"))
        await asyncio.wait({answer, delivered}, return_when=asyncio.FIRST_COMPLETED)
        assert not answer.done(), f"alice got {answer.result()} before bob got the message"
        message = await delivered
        assert message["from_agent_id"] == "alice" and message["content"] == text("hi bob")
        await bob.send({"type": "result", "message_id": message["message_id"], "result": "hi"})
        result = await answer
        assert result["type"] == "result", result
    assert result["message_id"] == message["message_id"]
    assert result["from_agent_id"] == "bob" and result["result"] == "hi"


async def test_a_send_without_wait_is_acknowledged_once_stored_as_a_task(
    gateway: Replica, mesh: MeshClient
) -> None:
    async with ws_agent(gateway, "ws-agent") as sock:
        await sock.send(
            {"type": "send", "to_agent_id": "sdk-agent", "content": text("x"), "wait": False}
        )
        sent = await sock.expect("sent")
    assert sent["status"] == "delivered" and sent["message_id"]
    task = await mesh.tasks.get(sent["task_id"])  # stored: an executor delivers it
    assert task is not None and task.spec.agent_id == "sdk-agent"
    assert task.spec.input.message_id == sent["message_id"]
    assert task.spec.input.from_agent_id == "ws-agent" and task.spec.input.text == "x"


async def test_chunk_frames_stream_to_a_streaming_caller_and_join_for_a_plain_one(
    gateway: Replica, mesh: MeshClient
) -> None:
    async with ws_agent(gateway, "streamer") as sock:

        async def answer() -> None:
            message = await sock.expect("message")
            mid = message["message_id"]
            for piece in ("Hel", "lo"):
                await sock.send({"type": "chunk", "message_id": mid, "text": piece})
            await sock.send({"type": "result", "message_id": mid, "result": "!"})

        answering = asyncio.create_task(answer())
        chunks = [c.text async for c in mesh.stream("streamer", "go")]
        await answering
        assert chunks == ["Hel", "lo", "!"]
        answering = asyncio.create_task(answer())
        reply = await mesh.ask("streamer", "go")
        await answering
        assert reply.text == "Hello!"


async def test_a_failed_result_reaches_the_caller_as_an_error_with_its_text(
    gateway: Replica, mesh: MeshClient, http: httpx.AsyncClient
) -> None:
    async with ws_agent(gateway, "failing") as sock:
        asking = asyncio.create_task(mesh.ask("failing", "do it"))
        message = await sock.expect("message")
        await sock.send(
            {
                "type": "result",
                "message_id": message["message_id"],
                "success": False,
                "result": "disk full",
            }
        )
        with pytest.raises(MeshError) as err:
            await asking
        assert err.value.code == "INTERNAL" and err.value.message == "disk full"
        body = {"to_agent_id": "failing", "content": text("again"), "wait": True}
        posting = asyncio.create_task(http.post("/gateway/send", json=body))
        message = await sock.expect("message")
        await sock.send(
            {
                "type": "result",
                "message_id": message["message_id"],
                "success": False,
                "result": "slow down",
                "code": "RATE_LIMIT",
            }
        )
        r = await posting
    assert r.status_code == 429 and r.json()["error"]["code"] == "RATE_LIMIT"


# Cancellation and closing --------------------------------------------------------------------
async def test_a_caller_that_times_out_gets_504_and_the_socket_gets_a_cancel_frame(
    gateway: Replica, http: httpx.AsyncClient
) -> None:
    async with ws_agent(gateway, "sleepy") as sock:
        body = {"to_agent_id": "sleepy", "content": text("hi"), "wait": True, "timeout": 0.3}
        posting = asyncio.create_task(http.post("/gateway/send", json=body))
        message = await sock.expect("message")
        cancel = await sock.expect("cancel")
        assert cancel["message_id"] == message["message_id"]
        r = await posting
        assert r.status_code == 504 and r.json()["error"]["code"] == "TIMEOUT"
        # A late answer is refused, and the socket carries on.
        await sock.send({"type": "result", "message_id": message["message_id"], "result": "late"})
        error = await sock.expect("error")
        assert error["code"] == "INVALID_MESSAGE" and error["message_id"] == message["message_id"]
        assert "no pending message" in error["message"]


async def test_closing_the_socket_takes_the_agent_offline_at_once(
    start_gateway: StartGateway, settings: Settings, mesh: MeshClient
) -> None:
    # A long heartbeat timeout: only the deregistration can explain the agent going away.
    slow = settings.with_(heartbeat_interval=10.0, heartbeat_timeout=30.0)
    replica = await start_gateway(settings_=slow)
    async with httpx.AsyncClient(base_url=replica.url) as http:
        async with presence_events(mesh, "leaving") as events:
            async with ws_agent(replica, "leaving", heartbeat=False):
                assert (await http.get("/gateway/agents/leaving")).status_code == 200
            event = await next_offline(events)
        assert event.reason == "deregistered"
        r = await http.get("/gateway/agents/leaving")
        assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
        body = {"to_agent_id": "leaving", "content": text("x"), "wait": True}
        r = await http.post("/gateway/send", json=body)
        assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"


async def test_a_socket_that_closes_with_messages_pending_fails_them_as_unavailable(
    gateway: Replica, mesh: MeshClient
) -> None:
    async with ws_agent(gateway, "vanishing") as sock:
        asking = asyncio.create_task(mesh.ask("vanishing", "hello?"))
        await sock.expect("message")
    with pytest.raises(Unavailable):
        await asking


async def test_a_silent_socket_is_closed_at_the_heartbeat_timeout_and_leaves_presence(
    gateway: Replica, http: httpx.AsyncClient, settings: Settings
) -> None:
    async with ws_agent(gateway, "silent", heartbeat=False) as sock:
        error = await sock.expect("error")
        assert error["code"] == "TIMEOUT" and "heartbeat" in error["message"]
        closed = await sock.closed()
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (4000, "heartbeat timeout")
    # The agent left before the gateway closed the socket.
    assert (await http.get("/gateway/agents/silent")).status_code == 404


# Bad input -----------------------------------------------------------------------------------
GARBAGE: list[tuple[str | bytes | dict[str, Any], str]] = [
    ("not json", "INVALID_MESSAGE"),
    (b"\x00\x01binary", "INVALID_MESSAGE"),
    ("[]", "INVALID_MESSAGE"),
    ('"just a string"', "INVALID_MESSAGE"),
    ({"type": "nope"}, "INVALID_MESSAGE"),
    ({"no": "type"}, "INVALID_MESSAGE"),
    ({"type": "send", "content": text("x"), "message_id": "m-9"}, "INVALID_MESSAGE"),
    ({"type": "send", "to_agent_id": "b", "content": []}, "INVALID_MESSAGE"),
    ({"type": "send", "to_agent_id": "a.>", "content": text("x")}, "INVALID_ID"),
    ({"type": "send", "to_agent_id": "nobody", "content": text("x")}, "AGENT_NOT_FOUND"),
    (
        {"type": "send", "to_agent_id": "b", "content": [{"type": "file", "bytes": "%%"}]},
        "INVALID_MESSAGE",
    ),
    ({"type": "send", "to_agent_id": "b", "content": text("x"), "timeout": -1}, "INVALID_MESSAGE"),
    ({"type": "result", "message_id": "never-sent", "result": "x"}, "INVALID_MESSAGE"),
    ({"type": "result", "conversation_id": "nope", "result": "x"}, "INVALID_MESSAGE"),
    ({"type": "chunk", "message_id": "never-sent", "text": "x"}, "INVALID_MESSAGE"),
    ({"type": "result", "message_id": "x", "success": False, "code": "BOGUS"}, "INVALID_MESSAGE"),
]


async def test_garbage_frames_get_error_frames_and_the_socket_keeps_working(
    gateway: Replica, mesh: MeshClient
) -> None:
    async with ws_agent(gateway, "robust") as sock:
        for frame, code in GARBAGE:
            await sock.send(frame)
            error = await sock.expect("error")
            assert error["code"] == code, (frame, error)
            assert error["message"]
        # The error of an invalid send names the send's own message id.
        await sock.send({"type": "send", "content": text("x"), "message_id": "m-9"})
        assert (await sock.expect("error"))["message_id"] == "m-9"
        # Still an agent of the mesh.
        asking = asyncio.create_task(mesh.ask("robust", "still there?"))
        message = await sock.expect("message")
        await sock.send({"type": "result", "message_id": message["message_id"], "result": "yes"})
        assert (await asking).text == "yes"


async def test_an_oversized_frame_closes_that_socket_with_1009_and_the_gateway_keeps_serving(
    start_gateway: StartGateway, mesh: MeshClient
) -> None:
    replica = await start_gateway(config=GatewayConfig(max_body_bytes=64 * 1024))
    async with presence_events(mesh, "greedy") as events:
        async with ws_agent(replica, "greedy") as greedy, ws_agent(replica, "modest") as modest:
            assert greedy.hello["max_frame_bytes"] == 64 * 1024
            await greedy.send("x" * (100 * 1024))
            closed = await greedy.closed()
            assert closed.rcvd is not None and closed.rcvd.code == 1009
            assert (await next_offline(events)).reason == "deregistered"
            asking = asyncio.create_task(mesh.ask("modest", "ok?"))
            message = await modest.expect("message")
            await modest.send(
                {"type": "result", "message_id": message["message_id"], "result": "ok"}
            )
            assert (await asking).text == "ok"
        async with ws_agent(replica, "newcomer"):
            assert await mesh.agent("newcomer") is not None


async def test_a_message_from_the_mesh_with_file_bytes_arrives_as_base64(
    gateway: Replica, mesh: MeshClient
) -> None:
    async with ws_agent(gateway, "files") as sock:
        asking = asyncio.create_task(mesh.ask("files", b"\xff\x00raw"))
        message = await sock.expect("message")
        [part] = message["content"]
        assert part["type"] == "file" and part["bytes"] == "/wByYXc="
        reply_part = {"type": "file", "name": "back.bin", "bytes": "AAE="}
        await sock.send(
            {"type": "result", "message_id": message["message_id"], "content": [reply_part]}
        )
        reply = await asking
    assert reply.content[0].bytes == b"\x00\x01"  # type: ignore[union-attr]


async def test_closed_sockets_leave_no_service_call_or_task_behind_on_the_replica(
    settings: Settings, mesh: MeshClient
) -> None:
    port = free_port()
    server = make_server(settings, port=port, config=GatewayConfig(), log_level="warning")
    async with asyncio.timeout(10):
        serving = await server.start()
    try:
        replica = Replica(url=f"http://127.0.0.1:{port}", port=port)
        bus = server.config.app.state.gateway.bus

        async def settle() -> None:
            """Until the replica has finished with the closed sockets (their sessions end after
            the client's close returns): only the sink's service is left, and no call."""
            await until(
                lambda: len(bus._services) <= 1 and not bus._control.inflight,
                timeout=TIMEOUT,
                what="only the sink's service left on the replica, and no call in flight",
            )

        async with ws_agent(replica, "sink") as sink:  # takes messages and never answers
            received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            draining = asyncio.create_task(drain(sink.ws, received))

            async def sink_gets(kind: str) -> None:
                async with asyncio.timeout(TIMEOUT):
                    while (await received.get())["type"] != kind:
                        pass

            async with ws_agent(replica, "warm-up"):
                pass
            await settle()
            before = asyncio.all_tasks()
            for i in range(10):
                async with ws_agent(replica, f"churn-{i}") as sock:
                    asking = asyncio.create_task(mesh.ask(f"churn-{i}", "left hanging"))
                    await sock.expect("message")
                    await sock.send({"type": "send", "to_agent_id": "sink", "content": text("x")})
                    # Closing before the send reached the sink would race its cancel with it.
                    await sink_gets("message")
                await sink_gets("cancel")  # the closed socket's send was cancelled at the sink
                with pytest.raises(Unavailable):
                    await asking
            await settle()
            await until(  # no event to await
                lambda: not asyncio.all_tasks() - before,
                timeout=TIMEOUT,
                what="every task the churn started ended",
            )
        await draining
    finally:
        server.should_exit = True
        async with asyncio.timeout(15):
            await serving


@pytest.mark.parametrize("length", [100, 9_000, 60_000])
async def test_an_upgrade_with_a_long_request_line_is_answered_not_held(
    gateway: Replica, length: int
) -> None:
    """The probe held 200 sockets with request lines over 8 KiB: each gets an answer now."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        writer.write(
            (
                f"GET /gateway/connect?agent_id=long&pad={'a' * length} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        async with asyncio.timeout(5):
            status = await reader.readline()
        assert status.startswith(b"HTTP/1.1 "), status
    finally:
        writer.close()


async def test_a_replica_holds_at_most_max_connections_and_answers_503_beyond(
    start_gateway: StartGateway,
) -> None:
    replica = await start_gateway(config=GatewayConfig(max_connections=2))
    async with ws_agent(replica, "held-1"), ws_agent(replica, "held-2"):
        async with httpx.AsyncClient(base_url=replica.url, timeout=5) as http:
            assert (await http.get("/healthz")).status_code == 503  # at once, not queued
    async with httpx.AsyncClient(base_url=replica.url, timeout=5) as http:
        # Room again once they close: the server frees a connection's slot when it sees the
        # close, a moment after the client did (nothing to wait on from here but the answer).
        async def room() -> bool:
            return (await http.get("/healthz")).status_code != 503

        await until(room, timeout=5, what="/healthz answering other than 503")
