"""What the mesh acknowledged as a task survives any one SIGKILL and a NATS restart."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.servers import NatsServer, RedisServer
from agentmesh.broker.settings import Settings
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.service import ServiceKind
from agentmesh.schemas.task import TaskStatus
from tests.conftest import StartAgent
from tests.tasks.conftest import StartExecutor, online
from tests.waiting import until


@pytest.fixture
async def probe(start_agent: StartAgent) -> asyncio.Queue[str]:
    """An agent `probe`: the replicas tell it their instance id when they start blocking."""
    told: asyncio.Queue[str] = asyncio.Queue()
    agent = Agent("probe")

    @agent.handler
    async def on_probe(msg: Message, ctx: Context) -> str:
        told.put_nowait(msg.text)
        return "ok"

    await start_agent(agent)
    return told


async def test_an_agent_instance_sigkilled_mid_task_is_retried_on_the_other_replica(
    mesh: MeshClient, spawn, probe: asyncio.Queue[str], start_executor: StartExecutor
) -> None:
    await start_executor()
    first, second = (
        await spawn("agent", "run", "tests.tasks.replica:agent"),
        await spawn("agent", "run", "tests.tasks.replica:agent"),
    )
    records = await online(mesh, ServiceKind.AGENT, 3)  # the probe and two replicas
    pids = {r.instance_id: r.pid for r in records if r.service_id == "replica"}
    ref = await mesh.tasks.submit("replica", "block")
    async with asyncio.timeout(20):
        blocked_on = await probe.get()
        os.kill(pids[blocked_on], signal.SIGKILL)
        record = await mesh.tasks.wait(ref.task_id)
    assert record.status is TaskStatus.COMPLETED, record.error
    assert [a.number for a in record.attempts] == [1, 2]
    assert record.attempts[0].instance_id == blocked_on
    assert record.attempts[0].error is not None and record.attempts[0].error.code == "UNAVAILABLE"
    survivor = record.attempts[1].instance_id
    assert survivor != blocked_on and record.result.text == f"{survivor}:block:2"
    del first, second


async def test_an_executor_sigkilled_mid_task_is_taken_over_by_another(
    mesh: MeshClient, spawn, start_agent: StartAgent
) -> None:
    release = asyncio.Event()
    attempts: asyncio.Queue[int] = asyncio.Queue()
    agent = Agent("patient")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        assert ctx.task is not None
        attempts.put_nowait(ctx.task.attempt)
        if ctx.task.attempt == 1:
            await release.wait()  # never: its executor dies meanwhile
        return f"done at attempt {ctx.task.attempt}"

    await start_agent(agent)
    await spawn("worker", "executor")
    await spawn("worker", "executor")
    executors = await online(mesh, ServiceKind.EXECUTOR, 2)
    ref = await mesh.tasks.submit("patient", "work")
    async with asyncio.timeout(20):
        assert await attempts.get() == 1
        async for event in mesh.tasks.events(ref.task_id):  # until the attempt is recorded
            if event.status is TaskStatus.RUNNING:
                break
        holder = (await mesh.tasks.get(ref.task_id)).attempts[0].executor_id
        os.kill(next(e.pid for e in executors if e.instance_id == holder), signal.SIGKILL)
        assert await attempts.get() == 2  # after the lease (1 s here) ran out
        record = await mesh.tasks.wait(ref.task_id)
    release.set()  # the orphaned first attempt ends too
    assert record.status is TaskStatus.COMPLETED and record.result.text == "done at attempt 2"
    assert [a.executor_id == holder for a in record.attempts] == [True, False]


@pytest.fixture
def own_settings(settings: Settings, own_nats: NatsServer, own_redis: RedisServer) -> Settings:
    return settings.with_(nats_url=own_nats.url, redis_url=own_redis.url)


async def test_tasks_pending_and_running_survive_a_nats_restart(
    own_settings: Settings, own_nats: NatsServer, start_agent: StartAgent
) -> None:
    from agentmesh.workers.executor import Executor

    release = asyncio.Event()
    running: asyncio.Queue[str] = asyncio.Queue()
    busy = Agent("busy")

    @busy.handler
    async def handle(msg: Message, ctx: Context) -> str:
        running.put_nowait(msg.text)
        await release.wait()
        return f"busy: {msg.text}"

    await start_agent(busy, settings_=own_settings)
    executor = Executor()
    await executor.start(own_settings)
    try:
        async with MeshClient.connect(own_settings) as mesh, asyncio.timeout(60):
            started = [await mesh.tasks.submit("busy", f"r{i}") for i in range(3)]
            for _ in started:
                await running.get()
            waiting = [await mesh.tasks.submit("later", f"p{i}") for i in range(3)]
            await asyncio.to_thread(own_nats.stop)
            await asyncio.to_thread(own_nats.start)
            release.set()
            late = Agent("later")
            late.handler(lambda msg, ctx: f"later: {msg.text}")
            await start_agent(late, settings_=own_settings)
            done = [await mesh.tasks.wait(r.task_id) for r in started + waiting]
        assert [d.status for d in done] == [TaskStatus.COMPLETED] * 6, [d.error for d in done]
        texts = sorted(d.result.text for d in done)
        assert texts == sorted(
            [f"busy: r{i}" for i in range(3)] + [f"later: p{i}" for i in range(3)]
        )
    finally:
        await executor.stop()


async def test_a_thousand_tasks_through_two_executors_and_two_replicas_with_one_sigkill(
    mesh: MeshClient, spawn
) -> None:
    await spawn("agent", "run", "tests.tasks.replica:agent")
    await spawn("agent", "run", "tests.tasks.replica:agent")
    one = await spawn("worker", "executor")
    await spawn("worker", "executor")
    await online(mesh, ServiceKind.AGENT, 2)
    await online(mesh, ServiceKind.EXECUTOR, 2)
    refs = await asyncio.gather(*(mesh.tasks.submit("replica", f"t{i}") for i in range(1000)))
    async with asyncio.timeout(120):
        # In the middle: once some have completed, one executor dies.
        while (
            await mesh.tasks.wait(refs[300].task_id, timeout=5)
        ).status is not TaskStatus.COMPLETED:
            pass
        one.kill()
        done = await asyncio.gather(*(mesh.tasks.wait(r.task_id) for r in refs))
    assert all(d.status is TaskStatus.COMPLETED for d in done), {d.status for d in done}
    assert sorted(d.result.text.split(":")[1] for d in done) == sorted(f"t{i}" for i in range(1000))


async def test_a_task_accepted_by_a_gateway_sigkilled_right_after_its_answer_still_runs(
    mesh: MeshClient, spawn, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    """The 201 comes after JetStream stored the task: the gateway's death costs nothing."""
    import httpx

    from agentmesh.broker.servers import free_port

    port = free_port()
    gateway = await spawn("gateway", "--port", str(port))
    await online(mesh, ServiceKind.GATEWAY, 1)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

        async def submitted() -> httpx.Response | None:
            try:
                body = {"agent_id": "late", "task_description": "x"}
                return await http.post("/v1/tasks", json=body)
            except httpx.ConnectError:  # announced before uvicorn listens: retry
                return None

        answer = await until(submitted, timeout=20, what="the spawned gateway taking the task")
    assert answer.status_code == 201, answer.text
    gateway.kill()  # SIGKILL
    await gateway.wait()
    agent = Agent("late")
    agent.handler(lambda msg, ctx: f"ran: {msg.text}")
    await start_agent(agent)
    await start_executor()
    record = await mesh.tasks.wait(answer.json()["task_id"], timeout=20)
    assert record.status is TaskStatus.COMPLETED and record.result.text == "ran: x"
