"""Durable tasks through an executor: submit, run, result, events, retries, cancel, bad input."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.errors import (
    Conflict,
    ErrorCode,
    InvalidId,
    InvalidMessage,
    NotFound,
    Unavailable,
)
from agentmesh.schemas.task import TaskEventKind, TaskStatus
from tests.conftest import StartAgent
from tests.tasks.conftest import StartExecutor


async def test_a_submitted_task_runs_on_its_agent_and_completes_with_the_reply(
    mesh: MeshClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    seen: list[object] = []
    agent = Agent("analyst")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        seen.append(ctx.task)
        await ctx.progress("halfway", {"pct": 50})
        return f"analysed: {msg.text}"

    await start_agent(agent)
    await start_executor()
    ref = await mesh.tasks.submit("analyst", "the sales")
    assert ref.status is TaskStatus.PENDING and ref.created
    record = await mesh.tasks.wait(ref.task_id, timeout=10)
    assert record.status is TaskStatus.COMPLETED
    assert record.result is not None and record.result.text == "analysed: the sales"
    assert [a.number for a in record.attempts] == [1]
    assert record.attempts[0].instance_id == agent.instance_id
    assert seen[0].task_id == ref.task_id and seen[0].attempt == 1  # type: ignore[attr-defined]
    events = [e async for e in mesh.tasks.events(ref.task_id, follow=False)]
    assert [(e.kind, e.status) for e in events] == [
        (TaskEventKind.STATUS, TaskStatus.PENDING),
        (TaskEventKind.STATUS, TaskStatus.RUNNING),
        (TaskEventKind.PROGRESS, None),
        (TaskEventKind.STATUS, TaskStatus.COMPLETED),
    ]
    assert events[2].note == "halfway" and events[2].data == {"pct": 50}
    # Replay after a sequence: only what came later.
    later = [e async for e in mesh.tasks.events(ref.task_id, after=events[1].seq or 0)]
    assert [e.seq for e in later] == [e.seq for e in events[2:]]


async def test_a_task_for_an_offline_agent_waits_pending_and_runs_when_it_comes_online(
    mesh: MeshClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    await start_executor()
    ref = await mesh.tasks.submit("latecomer", "hello")
    running = asyncio.create_task(mesh.tasks.wait(ref.task_id, timeout=15))
    # Several looks at the queue pass with nobody to take it; it stays pending, no attempt.
    record = await mesh.tasks.wait(ref.task_id, timeout=1.0)
    assert record.status is TaskStatus.PENDING and record.attempts == []
    agent = Agent("latecomer")
    agent.handler(lambda msg, ctx: f"late: {msg.text}")
    await start_agent(agent)
    record = await running
    assert record.status is TaskStatus.COMPLETED and record.result.text == "late: hello"


async def test_a_task_by_agent_type_goes_to_an_agent_of_that_type(
    mesh: MeshClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    agent = Agent("pa-1", agent_type="personal_assistant")
    contexts: list[Context] = []

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        contexts.append(ctx)
        return f"{ctx.agent_id}: {msg.text}"

    await start_agent(agent)
    await start_executor()
    trace = await mesh.traces.create("user_001", agent_type="personal_assistant")
    ref = await mesh.tasks.submit(trace_id=trace.trace_id, content="plan my day")
    record = await mesh.tasks.wait(ref.task_id, timeout=10)
    assert record.result is not None and record.result.text == "pa-1: plan my day"
    assert record.workspace_id == "user_001" and record.spec.agent_type == "personal_assistant"
    assert [t.task_id for t in await mesh.traces.tasks(trace.trace_id)] == [ref.task_id]
    assert await mesh.traces.workspaces() == {"user_001": 1}
    # The trace id is the W3C trace id of the call: the agent's spans join the trace.
    [ctx] = contexts
    assert ctx.task is not None and ctx.task.trace_id == trace.trace_id
    assert ctx.request.headers["traceparent"].split("-")[1] == trace.trace_id


async def test_a_handler_failure_fails_the_task_without_retry_unless_asked(
    mesh: MeshClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    calls = 0
    agent = Agent("flaky")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        nonlocal calls
        calls += 1
        raise RuntimeError("boom")

    await start_agent(agent)
    await start_executor()
    once = await mesh.tasks.submit("flaky", "x")
    record = await mesh.tasks.wait(once.task_id, timeout=10)
    assert record.status is TaskStatus.FAILED and record.error is not None
    assert record.error.code is ErrorCode.INTERNAL and "boom" in record.error.message
    assert len(record.attempts) == 1 and calls == 1
    retried = await mesh.tasks.submit("flaky", "x", retry_on_error=True, max_attempts=3)
    record = await mesh.tasks.wait(retried.task_id, timeout=10)
    assert record.status is TaskStatus.FAILED and len(record.attempts) == 3 and calls == 4


async def test_cancel_a_pending_task_and_a_running_one(
    mesh: MeshClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    started = asyncio.Event()
    stopped = asyncio.Event()
    agent = Agent("worker")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return "never"

    later = await mesh.tasks.submit("worker", "later", not_before=time.time() + 60)
    pending = await mesh.tasks.cancel(later.task_id)
    assert pending.status is TaskStatus.CANCELED
    await start_agent(agent)
    await start_executor()
    ref = await mesh.tasks.submit("worker", "now")
    async with asyncio.timeout(10):
        await started.wait()
        # Running at the instance (the record may not say so yet: the executor records the
        # attempt once the instance acknowledged it): either way the handler is stopped.
        await mesh.tasks.cancel(ref.task_id)
        await stopped.wait()  # the handler was cancelled at the instance
        record = await mesh.tasks.wait(ref.task_id)
    assert record.status is TaskStatus.CANCELED
    with pytest.raises(Conflict):
        await mesh.tasks.cancel(ref.task_id)
    assert (await mesh.tasks.get(later.task_id)).attempts == []


async def test_submitting_again_with_the_same_idempotency_key_returns_the_same_task(
    mesh: MeshClient,
) -> None:
    first = await mesh.tasks.submit("someone", "x", idempotency_key="order-42")
    again = await mesh.tasks.submit("someone", "y", idempotency_key="order-42")
    assert again.task_id == first.task_id and not again.created
    other = await mesh.tasks.submit("someone", "x", idempotency_key="order-43")
    assert other.task_id != first.task_id


async def test_bad_submissions_are_refused_with_stable_codes_and_store_nothing(
    mesh: MeshClient,
) -> None:
    with pytest.raises(InvalidId):
        await mesh.tasks.submit("bad.id", "x")
    with pytest.raises(InvalidMessage):
        await mesh.tasks.submit(content="no target")
    with pytest.raises(InvalidMessage):
        await mesh.tasks.submit("a", "x", deadline=time.time() - 1)
    with pytest.raises(NotFound):
        await mesh.tasks.submit(trace_id="0" * 32, content="x")
    with pytest.raises(NotFound):
        await mesh.tasks.get("task-" + "0" * 32)
    with pytest.raises(NotFound):
        await mesh.tasks.cancel("not-a-task")
    assert await mesh.tasks.list() == []


async def test_a_task_is_not_stored_when_jetstream_is_unreachable(mesh: MeshClient) -> None:
    await mesh.bus.nc.close()
    with pytest.raises(Unavailable):
        await mesh.tasks.submit("a", "x")


async def test_a_websocket_agent_takes_a_task_and_sees_which_it_is(
    mesh: MeshClient, start_gateway, start_executor: StartExecutor
) -> None:
    from tests.gateway.test_websocket import ws_agent

    replica = await start_gateway()
    await start_executor()
    async with ws_agent(replica, "ws-worker") as sock:
        ref = await mesh.tasks.submit("ws-worker", "over the socket")
        frame = await sock.expect("message")
        assert frame["task"] == {"task_id": ref.task_id, "attempt": 1, "trace_id": None}
        assert frame["content"] == [{"type": "text", "text": "over the socket"}]
        await sock.send({"type": "result", "message_id": frame["message_id"], "result": "done"})
        record = await mesh.tasks.wait(ref.task_id, timeout=10)
    assert record.status is TaskStatus.COMPLETED and record.result is not None
    assert record.result.text == "done"
    # A socket's calls are acknowledged by its gateway's connection to NATS: that is the
    # instance recorded (and the one a cancel goes to).
    assert record.attempts[0].instance_id


async def test_an_executor_takes_high_before_normal_before_low(
    mesh: MeshClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    order: list[str] = []
    first_started = asyncio.Event()
    release = asyncio.Event()
    agent = Agent("ranker")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        order.append(msg.text)
        if msg.text == "first":
            first_started.set()
            await release.wait()
        return msg.text

    await start_agent(agent)
    await start_executor(max_running=1)  # one slot: the others queue behind "first"
    first = await mesh.tasks.submit("ranker", "first")
    async with asyncio.timeout(10):
        await first_started.wait()
        refs = [await mesh.tasks.submit("ranker", p, priority=p) for p in ("low", "normal", "high")]
        release.set()
        for ref in [first, *refs]:
            assert (await mesh.tasks.wait(ref.task_id)).status is TaskStatus.COMPLETED
    assert order == ["first", "high", "normal", "low"]


async def test_an_agent_limit_holds_across_two_executors(
    mesh: MeshClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    running = peak = 0
    two_running = asyncio.Event()
    release = asyncio.Event()
    agent = Agent("narrow")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 2:
            two_running.set()
        try:
            await release.wait()
        finally:
            running -= 1
        return msg.text

    await start_agent(agent)
    for _ in range(2):
        await start_executor(agent_limits={"narrow": 2})
    refs = [await mesh.tasks.submit("narrow", f"n{i}") for i in range(6)]
    async with asyncio.timeout(15):
        await two_running.wait()
        # The other four stay pending through several looks at the queue by both executors.
        pending = await mesh.tasks.list(agent_id="narrow", status="pending")
        assert len(pending) == 4
        await asyncio.sleep(1.0)  # a window for a third start (each look is 0.5 s apart)
        assert peak == 2
        release.set()
        done = [await mesh.tasks.wait(r.task_id) for r in refs]
    assert all(d.status is TaskStatus.COMPLETED for d in done) and peak == 2
