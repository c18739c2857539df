"""An agent and its callers, against real NATS and Redis: replies, streams, errors, replicas."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgpack
import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.settings import Settings
from agentmesh.schemas.envelope import DataPart, Message, TextPart
from agentmesh.schemas.errors import (
    AgentNotFound,
    ErrorCode,
    InvalidId,
    InvalidMessage,
    MeshTimeout,
    PayloadTooLarge,
    RemoteError,
    Unauthorized,
)
from tests.conftest import StartAgent
from tests.waiting import until


def echo_agent(agent_id: str = "echo", **kw: object) -> Agent:
    agent = Agent(agent_id, name="Echo", capabilities=["echo"], **kw)  # type: ignore[arg-type]

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> object:
        return msg.content

    return agent


async def test_ask_returns_the_agents_reply_addressed_back_to_the_caller(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    await start_agent(echo_agent())
    reply = await mesh.ask("echo", "hello", conversation_id="conv-1")
    assert reply.text == "hello"
    assert reply.from_agent_id == "echo"
    assert reply.to_agent_id == "tester"
    assert reply.conversation_id == "conv-1"


async def test_structured_data_and_parts_survive_the_round_trip(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    await start_agent(echo_agent())
    payload = {"n": 1, "items": [1.5, "x", None, True], "nested": {"b": b"\x00\x01"}}
    assert (await mesh.ask("echo", payload)).data == payload
    reply = await mesh.ask("echo", [TextPart(text="a"), DataPart(data=[1]), TextPart(text="b")])
    assert reply.text == "ab"
    assert reply.data == [1]


async def test_a_generator_handler_streams_chunks_in_order(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    agent = Agent("counter")

    @agent.handler
    async def handle(msg: Message, ctx: Context):  # type: ignore[no-untyped-def]
        for i in range(int(msg.text)):
            yield f"{i},"

    await start_agent(agent)
    chunks = [c.text async for c in mesh.stream("counter", "5")]
    assert chunks == ["0,", "1,", "2,", "3,", "4,"]
    # Asked without streaming, the same handler's chunks arrive as one reply.
    assert (await mesh.ask("counter", "3")).text == "0,1,2,"


async def test_streaming_from_a_plain_handler_yields_its_reply_as_one_chunk(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    await start_agent(echo_agent())
    assert [c.text async for c in mesh.stream("echo", "whole")] == ["whole"]


async def test_no_responders_is_agent_not_found_at_once_not_a_timeout(mesh: MeshClient) -> None:
    async with asyncio.timeout(1):  # far below the 5 s request timeout
        with pytest.raises(AgentNotFound) as err:
            await mesh.ask("ghost", "anyone?")
    assert err.value.code is ErrorCode.AGENT_NOT_FOUND
    assert "ghost" in err.value.message
    with pytest.raises(AgentNotFound):
        async for _ in mesh.stream("ghost", "anyone?"):
            pass


async def test_a_slow_agent_times_out_and_its_handler_is_cancelled(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    agent = Agent("slow")
    started, cancelled = asyncio.Event(), asyncio.Event()

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    await start_agent(agent)
    with pytest.raises(MeshTimeout) as err:
        await mesh.ask("slow", "hi", timeout=0.3)
    assert isinstance(err.value, TimeoutError)
    assert started.is_set()
    async with asyncio.timeout(2):
        await cancelled.wait()


async def test_handler_errors_reach_the_caller_with_their_code_and_the_agent_keeps_serving(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    agent = Agent("moody")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        if msg.text == "bug":
            raise ZeroDivisionError("division by zero")
        if msg.text == "deny":
            raise Unauthorized("not for you")
        return "fine"

    await start_agent(agent)
    with pytest.raises(RemoteError) as bug:
        await mesh.ask("moody", "bug")
    assert bug.value.code is ErrorCode.INTERNAL
    assert "ZeroDivisionError" in bug.value.message
    with pytest.raises(Unauthorized):
        await mesh.ask("moody", "deny")
    assert (await mesh.ask("moody", "ok")).text == "fine"


async def test_replicas_share_the_load(mesh: MeshClient, start_agent: StartAgent) -> None:
    replicas = [Agent("worker"), Agent("worker")]
    for replica in replicas:
        replica.handler(lambda msg, ctx: ctx.instance_id)
        await start_agent(replica)
    replies = await asyncio.gather(*(mesh.ask("worker", str(i)) for i in range(60)))
    served = Counter(r.text for r in replies)
    assert set(served) == {r.instance_id for r in replicas}
    assert all(n > 0 for n in served.values())


async def test_a_slow_handler_does_not_serialise_one_instance(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    agent = Agent("gather")
    arrived = 0
    all_here = asyncio.Event()

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        nonlocal arrived
        arrived += 1
        if arrived == 8:
            all_here.set()
        await all_here.wait()  # only returns once 8 calls run at the same time
        return "together"

    await start_agent(agent)
    async with asyncio.timeout(3):
        replies = await asyncio.gather(*(mesh.ask("gather", "x") for _ in range(8)))
    assert [r.text for r in replies] == ["together"] * 8


async def test_cancelling_a_call_cancels_the_handler_on_the_replica_doing_the_work(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    replicas = [Agent("busy"), Agent("busy")]
    started: dict[str, asyncio.Event] = {}
    cancelled: dict[str, asyncio.Event] = {}
    any_started = asyncio.Event()

    def make_handler(index: int):  # type: ignore[no-untyped-def]
        async def handle(msg: Message, ctx: Context) -> str:
            started[ctx.instance_id].set()
            any_started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                assert ctx.cancelled
                cancelled[ctx.instance_id].set()
                raise
            return "never"

        return handle

    for i, replica in enumerate(replicas):
        replica.handler(make_handler(i))
        await start_agent(replica)
        started[replica.instance_id] = asyncio.Event()  # type: ignore[index]
        cancelled[replica.instance_id] = asyncio.Event()  # type: ignore[index]

    call = asyncio.create_task(mesh.ask("busy", "work", timeout=10))
    async with asyncio.timeout(2):
        await any_started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    worker = next(i for i, e in started.items() if e.is_set())
    idle = next(i for i in started if i != worker)
    async with asyncio.timeout(2):
        await cancelled[worker].wait()
    assert not started[idle].is_set() and not cancelled[idle].is_set()


async def test_breaking_out_of_a_stream_cancels_the_producer(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    agent = Agent("firehose")
    stopped = asyncio.Event()

    @agent.handler
    async def handle(msg: Message, ctx: Context):  # type: ignore[no-untyped-def]
        try:
            i = 0
            while True:
                i += 1
                yield str(i)
                await asyncio.sleep(0.01)  # a producer pacing its output, not synchronisation
        finally:
            stopped.set()

    await start_agent(agent)
    got = []
    async for chunk in mesh.stream("firehose", "go"):
        got.append(chunk.text)
        if len(got) == 3:
            break
    assert got == ["1", "2", "3"]
    async with asyncio.timeout(2):
        await stopped.wait()


async def test_malformed_bodies_get_invalid_message_and_the_agent_keeps_serving(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    await start_agent(echo_agent())
    subject = mesh.bus.subjects.agent("echo")
    for garbage in (
        b"\xc1",
        b"\x93\x01",
        msgpack.packb([1, 2]),
        msgpack.packb({"content": "x"}),
        msgpack.packb({"content": [{"type": "nope"}]}),
        b"",
    ):
        with pytest.raises(InvalidMessage) as err:
            await mesh.bus.request(subject, garbage)
        assert err.value.code is ErrorCode.INVALID_MESSAGE
    # A message with no reply subject cannot be answered; it is dropped, nothing breaks.
    await mesh.bus.nc.publish(subject, b"\xc1")
    assert (await mesh.ask("echo", "still here")).text == "still here"


async def test_oversized_payloads_are_refused_by_caller_and_agent(
    settings: Settings, start_agent: StartAgent
) -> None:
    small = settings.with_(max_message_bytes=2000)
    await start_agent(echo_agent(), settings_=small)
    async with MeshClient.connect(small) as limited, MeshClient.connect(settings) as generous:
        with pytest.raises(PayloadTooLarge) as err:
            await limited.ask("echo", "x" * 5000)
        assert err.value.details["limit"] == 2000
        # A caller with a larger limit gets through NATS; the agent refuses it with a reply.
        with pytest.raises(PayloadTooLarge):
            await generous.ask("echo", "x" * 5000)
        assert (await generous.ask("echo", "small")).text == "small"


async def test_invalid_ids_are_refused_before_anything_is_sent_or_subscribed(
    mesh: MeshClient,
) -> None:
    for bad in ("a.>", "*", ">", "a b", "a.b", "", "x\n", "tab\there"):
        with pytest.raises(InvalidId):
            Agent(bad)
        with pytest.raises(InvalidId):
            await mesh.ask(bad, "hi")
        with pytest.raises(InvalidId):
            await mesh.agent(bad)


async def test_an_agent_delegates_to_another_within_the_same_conversation(
    mesh: MeshClient, start_agent: StartAgent
) -> None:
    worker, boss = Agent("worker"), Agent("boss")
    seen: list[Message] = []

    @worker.handler
    async def work(msg: Message, ctx: Context) -> str:
        seen.append(msg)
        return msg.text.upper()

    @boss.handler
    async def manage(msg: Message, ctx: Context) -> str:
        answer = await ctx.ask("worker", msg.text)
        return f"boss says {answer.text}"

    await start_agent(worker)
    await start_agent(boss)
    reply = await mesh.ask("boss", "do it", conversation_id="conv-9")
    assert reply.text == "boss says DO IT"
    assert seen[0].from_agent_id == "boss"
    assert seen[0].conversation_id == "conv-9"


async def test_an_agent_without_a_handler_refuses_to_start(settings: Settings) -> None:
    with pytest.raises(RuntimeError, match="no handler"):
        await Agent("lazy").start(settings)


async def test_stopping_an_agent_finishes_the_calls_in_flight_then_leaves(
    mesh: MeshClient, settings: Settings
) -> None:
    agent = Agent("draining")
    started, release = asyncio.Event(), asyncio.Event()

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        started.set()
        await release.wait()
        return "finished"

    await agent.start(settings)
    call = asyncio.create_task(mesh.ask("draining", "work"))
    async with asyncio.timeout(2):
        await started.wait()
    stopping = asyncio.create_task(agent.stop())

    async def left() -> bool:  # state in Redis
        return await mesh.agent("draining") is None

    # Presence is left first, so no new caller is routed here ...
    await until(left, timeout=2, what="the agent's presence left")
    assert not stopping.done()  # ... while the call in flight is still running
    release.set()
    async with asyncio.timeout(2):
        assert (await call).text == "finished"
        await stopping
    with pytest.raises(AgentNotFound):
        await mesh.ask("draining", "anyone?")
