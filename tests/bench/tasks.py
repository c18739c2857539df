"""The tasks benchmark: `mesh.tasks.submit` → executor → agent → completed, side by side with raw
JetStream (nats-py: a work-queue stream, publish with ack, pull, a no-op handler, ack) carrying
the same number of messages, in one run.

The executor (`agentmesh worker executor`) and the agent (`tests/bench/task_agent.py`, run by
`agentmesh agent run`) are processes of their own, as deployed; the submitters, the watcher of
the task events and the whole raw path run in the bench process. The section is written by
`tasks_report.section`.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.msg import Msg
from nats.js import api

from agentmesh.agents.client import MeshClient
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.codec import decode
from agentmesh.schemas.task import TaskEvent, TaskEventKind, TaskStatus
from tests.bench.measure import Call, Result, measure, percentile, progress, run, scaled
from tests.bench.processes import (
    BIN,
    Child,
    ChildError,
    CpuMeter,
    Throughput,
    agent_online,
    metered,
    settings_env,
    stopping,
)
from tests.bench.task_agent import AGENT_ID

RAW = "raw JetStream (publish → pull → ack)"
MESH = "mesh.tasks.submit → executor → agent"
SUBMIT = "mesh.tasks.submit returns"
START = "submit → agent handler starts"
TEXT = "hello from the bench"  # 20 bytes, as in the other sections
CONCURRENCY = 64  # tasks (messages) in flight in the throughput runs
THROUGHPUT_TASKS = 2000  # per round and path, before BENCH_SCALE
SEQUENTIAL_TASKS = 200  # per round and path, one at a time on an idle mesh, before BENCH_SCALE
PULL_BATCH = CONCURRENCY  # messages the raw consumer keeps asked for
PULL_EXPIRES = 30.0  # seconds a raw pull request lasts (then it is renewed)
WARMUP = 100
IDLE_PAUSE = 0.005  # seconds after each task one at a time: the executor's tail is over
ROUNDS = 2
TIMEOUT = 30.0  # for one task to complete
TARGET_RATIO = 0.5  # mesh tasks/s over raw messages/s at concurrency 64, at least
TARGET_START_P50_MS = 5.0  # submit → handler start at the median, one at a time, under


@dataclass(frozen=True, slots=True)
class TasksRun:
    latency: list[Result]  # every round at concurrency 1: RAW, MESH, SUBMIT and START
    latency_cpu: dict[str, float]  # % of one core over all those rounds
    throughput: list[Throughput]  # every round at CONCURRENCY: RAW and MESH
    loadavg: tuple[float, float, float]  # the machine's, as the measuring began


def summary(path: str, concurrency: int, latencies: list[int], seconds: float) -> Result:
    """A `Result` from latencies in ns (`measure` does the same for the calls it times)."""
    ordered = sorted(latencies)
    return Result(
        path=path,
        concurrency=concurrency,
        requests=len(ordered),
        seconds=seconds,
        p50_ms=percentile(ordered, 50) / 1e6,
        p99_ms=percentile(ordered, 99) / 1e6,
    )


# The raw baseline --------------------------------------------------------------------------------
@asynccontextmanager
async def raw_path(settings: Settings) -> AsyncIterator[Call]:
    """A work-queue stream (file storage, as the task queue) with a durable pull consumer
    (explicit ack), a producer connection that publishes with ack and a consumer connection
    that handles each message with a no-op and acks it. A call publishes one message and
    returns once it has been handled.

    The consumer keeps pull requests for PULL_BATCH messages outstanding, topping them up when
    half are delivered (what nats.go's `Consume` does), on a plain subscription to its inbox.
    nats-py's `fetch(n)`, once the queue has run dry, holds what it got until the n-th message
    or its timeout; and in one run with it a message went unhandled until its redelivery.
    """
    producer = await nats.connect(settings.nats_url, name="bench-raw-producer")
    consumer = await nats.connect(settings.nats_url, name="bench-raw-consumer")
    stream, subject = f"bench_{settings.prefix}_raw_queue", f"{settings.prefix}.bench.queue"
    js = producer.jetstream()
    await js.add_stream(
        api.StreamConfig(
            name=stream,
            subjects=[subject],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
        )
    )
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name="bench", ack_policy=api.AckPolicy.EXPLICIT, max_ack_pending=-1
        ),
    )
    waiting: dict[bytes, asyncio.Future[None]] = {}
    ids = itertools.count()
    inbox = consumer.new_inbox()
    requested = 0  # messages asked for and not yet delivered

    async def pull() -> None:
        nonlocal requested
        ask = {"batch": PULL_BATCH - requested, "expires": int(PULL_EXPIRES * 1e9)}
        requested = PULL_BATCH
        await consumer.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.bench", json.dumps(ask).encode(), reply=inbox
        )

    async def on_msg(msg: Msg) -> None:
        nonlocal requested
        status = msg.headers.get("Status") if msg.headers else None
        if status is not None:  # a request ended (expired): what it still owed is not coming
            requested -= int(msg.headers.get("Nats-Pending-Messages", 0))
        else:
            requested -= 1
            done = waiting.pop(msg.data, None)  # the no-op "work": its producer hears of it
            if done is not None and not done.done():
                done.set_result(None)
            await msg.ack()
        if requested <= PULL_BATCH // 2:
            await pull()

    async def call() -> None:
        data = str(next(ids)).encode()
        done = waiting[data] = asyncio.get_running_loop().create_future()
        await js.publish(subject, data, stream=stream)
        await asyncio.wait_for(done, TIMEOUT)

    sub = await consumer.subscribe(inbox, cb=on_msg)
    await pull()
    try:
        yield call
    finally:
        await sub.unsubscribe()
        await js.delete_stream(stream)
        await consumer.close()
        await producer.close()


# The mesh ---------------------------------------------------------------------------------------
class Watcher:
    """Every task's final status event, from one core NATS subscription to the events subjects
    (JetStream stores them; core subscribers see them as they are published). `finished(id)`
    is the `time.monotonic_ns()` at which this process saw the task complete."""

    def __init__(self, client: MeshClient) -> None:
        self.client = client
        self._seen: dict[str, tuple[TaskStatus, int]] = {}
        self._waiting: dict[str, asyncio.Future[tuple[TaskStatus, int]]] = {}
        self._sub = None

    async def start(self) -> None:
        subject = Subjects(self.client.settings.prefix).task_events()
        self._sub = await self.client.bus.nc.subscribe(subject, cb=self._on_event)
        await self.client.bus.nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        now = time.monotonic_ns()
        event = decode(msg.data, TaskEvent)
        if event.kind is not TaskEventKind.STATUS or not (event.status and event.status.terminal):
            return
        done = (event.status, now)
        waiter = self._waiting.pop(event.task_id, None)
        if waiter is None:
            self._seen[event.task_id] = done  # before its submitter asked
        elif not waiter.done():
            waiter.set_result(done)

    async def finished(self, task_id: str, *, timeout: float = TIMEOUT) -> int:
        done = self._seen.pop(task_id, None)
        if done is None:
            waiter = self._waiting[task_id] = asyncio.get_running_loop().create_future()
            try:
                done = await asyncio.wait_for(waiter, timeout)
            finally:
                self._waiting.pop(task_id, None)
        status, at = done
        if status is not TaskStatus.COMPLETED:
            record = await self.client.tasks.get(task_id)
            raise RuntimeError(f"task {task_id} ended {status.value}: {record.error!r}")
        return at


def mesh_call(client: MeshClient, watcher: Watcher) -> Call:
    async def call() -> None:
        ref = await client.tasks.submit(AGENT_ID, TEXT)
        await watcher.finished(ref.task_id)

    return call


async def sequential(client: MeshClient, watcher: Watcher, tasks: int) -> list[Result]:
    """One task at a time, each after a short pause, so the mesh is idle at each submit: how
    long `submit` takes, how long until the agent's handler starts, and until this process sees
    `completed`."""
    submitted: list[int] = []
    started: list[int] = []
    completed: list[int] = []
    gc.collect()
    begin = time.monotonic_ns()
    for _ in range(tasks):
        t0 = time.monotonic_ns()
        ref = await client.tasks.submit(AGENT_ID, TEXT)
        submitted.append(time.monotonic_ns() - t0)
        completed.append(await watcher.finished(ref.task_id) - t0)
        result = (await client.tasks.get(ref.task_id)).result
        if result is None or result.data.get("text") != TEXT:
            raise RuntimeError(f"task {ref.task_id} completed with {result!r}")
        started.append(result.data["started_ns"] - t0)
        await asyncio.sleep(IDLE_PAUSE)
    seconds = (time.monotonic_ns() - begin) / 1e9  # with the untimed reads and pauses
    return [
        summary(MESH, 1, completed, sum(completed) / 1e9),
        summary(SUBMIT, 1, submitted, seconds),
        summary(START, 1, started, seconds),
    ]


async def first_task(client: MeshClient, watcher: Watcher, children: list[Child]) -> None:
    """Return once a task has gone through: the executor is up and takes tasks."""
    ref = await client.tasks.submit(AGENT_ID, TEXT)
    deadline = time.monotonic() + 30.0
    while True:
        try:
            await watcher.finished(ref.task_id, timeout=0.2)
            return
        except TimeoutError:
            for child in children:
                child.check_running()
            if time.monotonic() > deadline:
                tails = "\n".join(c.tail() for c in children)
                raise ChildError(f"no task completed in 30 s:\n{tails}") from None


def start_children(settings: Settings, logs: Path, children: list[Child]) -> dict[str, Child]:
    env = settings_env(settings)
    agentmesh = str(BIN / "agentmesh")
    argv = {
        "executor": [agentmesh, "worker", "executor"],
        "agent": [agentmesh, "agent", "run", "tests.bench.task_agent:agent"],
    }
    started = {}
    for name, args in argv.items():
        child = Child(name, args, env=env, log=logs / f"{name}.log")
        children.append(child)
        started[name] = child
    return started


async def throughput(path: str, call: Call, pids: dict[str, int]) -> Throughput:
    return await metered(
        path, call, pids, requests=scaled(THROUGHPUT_TASKS), concurrency=CONCURRENCY
    )


async def run_all(settings: Settings, *, logs: Path, server_pids: dict[str, int]) -> TasksRun:
    """Start the executor and the agent as processes, measure both paths, stop them."""
    latency: list[Result] = []
    loads: list[Throughput] = []
    with stopping([]) as children:
        started = start_children(settings, logs, children)
        async with (
            MeshClient.connect(settings, sender_id="bench") as client,
            raw_path(settings) as raw,
        ):
            watcher = Watcher(client)
            await watcher.start()
            try:
                await agent_online(client, AGENT_ID, started["agent"])
                await first_task(client, watcher, children)
                pids = {"bench process": os.getpid()}
                pids |= {name: child.pid for name, child in started.items()}
                pids |= server_pids
                progress(", ".join(f"{name} pid {pid}" for name, pid in pids.items()))
                mesh = mesh_call(client, watcher)
                await run(raw, requests=scaled(WARMUP), concurrency=CONCURRENCY)
                await run(mesh, requests=scaled(WARMUP), concurrency=CONCURRENCY)
                loadavg = os.getloadavg()
                meter = CpuMeter(pids)
                for _ in range(ROUNDS):
                    n = scaled(SEQUENTIAL_TASKS)
                    latency.append(await measure(RAW, raw, requests=n, concurrency=1))
                    latency.extend(await sequential(client, watcher, n))
                    progress(
                        "c=1 "
                        + "; ".join(
                            f"{r.path}: p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"
                            for r in latency[-4:]
                        )
                    )
                latency_cpu = meter.percent()
                for _ in range(ROUNDS):
                    loads.append(await throughput(RAW, raw, pids))
                    loads.append(await throughput(MESH, mesh, pids))
            finally:
                await watcher.stop()
    return TasksRun(latency, latency_cpu, loads, loadavg)
