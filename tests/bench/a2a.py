"""The A2A benchmark: a blocking `SendMessage` from the official `a2a-sdk` client (JSON-RPC) to
the mesh's echo agent through a gateway, side by side with the same client calling an `a2a-sdk`
echo server (`tests/bench/a2a_echo.py`, the SDK's own server classes) directly, in one run.

Through the gateway the message becomes a durable mesh task: the gateway (`agentmesh gateway`)
submits it and waits for its final status, an executor (`agentmesh worker executor`) runs it as
a mesh call of the echo agent (`agentmesh agent run agentmesh.agents.examples.echo:agent`). All
are processes of their own, as deployed, and so is the direct server; the clients are in the
bench process. A third path, `mesh.tasks.submit` + `mesh.tasks.wait` from the bench process,
is the same durable task (with an idempotency key, as the gateway gives it) without HTTP and
A2A, to show which part of the added time is the task's. The section is written by
`a2a_report.section`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from a2a.client import Client, ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import (
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    TaskState,
)
from a2a.utils.constants import TransportProtocol

from agentmesh.agents.client import MeshClient
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.schemas.task import TaskStatus
from tests.bench.gateway import bench_settings
from tests.bench.measure import Call, Result, measure, progress, run, scaled
from tests.bench.processes import (
    BIN,
    Child,
    CpuMeter,
    Throughput,
    agent_online,
    answers_200,
    gateway_ready,
    launch_echo,
    launch_gateway,
    metered,
    settings_env,
    started,
    stopping,
)

ECHO = "echo"
TEXT = "hello from the bench"  # 20 bytes, as in the other sections
DIRECT = "a2a-sdk client → a2a-sdk echo server"
MESH = "a2a-sdk client → gateway → task → executor → echo"
TASK = "mesh.tasks.submit + wait → executor → echo"
DIRECT_SERVER = "a2a-sdk server"  # its name in the CPU readings
LATENCY_REQUESTS = 300  # per round and path, before BENCH_SCALE
WARMUP = 50
ROUNDS = 2
CONCURRENCY = 16  # calls in flight in the throughput runs
THROUGHPUT_REQUESTS = 1000  # per round and path, before BENCH_SCALE
TARGET_ADDED_MS = 2.0  # added p50 over the direct server, one at a time, at most
TARGET_RATIO = 0.8  # gateway calls/s over the direct server's at CONCURRENCY, at least
TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class A2ARun:
    latency: list[Result]  # every round of every path, concurrency 1
    latency_cpu: dict[str, float]  # % of one core over all those rounds
    throughput: list[Throughput]  # every round of DIRECT and MESH at CONCURRENCY
    loadavg: tuple[float, float, float]  # the machine's, as the measuring began


def request() -> SendMessageRequest:
    """A blocking SendMessage (the default) with a new message id."""
    message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=TEXT)])
    return SendMessageRequest(
        message=message, configuration=SendMessageConfiguration(return_immediately=False)
    )


def a2a_call(client: Client) -> Call:
    """One blocking SendMessage; checks the answer is the completed task with the text."""

    async def call() -> None:
        answers = [r async for r in client.send_message(request())]
        task = answers[-1].task
        if task.status.state != TaskState.TASK_STATE_COMPLETED:
            raise RuntimeError(f"task {task.id} ended {TaskState.Name(task.status.state)}")
        if [p.text for a in task.artifacts for p in a.parts] != [TEXT]:
            raise RuntimeError(f"task {task.id} answered {list(task.artifacts)!r}")

    return call


def task_call(mesh: MeshClient) -> Call:
    async def call() -> None:
        key = f"bench:{uuid.uuid4().hex}"  # as the gateway submits: the message id's key
        ref = await mesh.tasks.submit(ECHO, TEXT, idempotency_key=key)
        record = await mesh.tasks.wait(ref.task_id, timeout=TIMEOUT)
        if record.status is not TaskStatus.COMPLETED or record.result is None:
            raise RuntimeError(f"task {ref.task_id} ended {record.status.value}")
        if record.result.text != TEXT:
            raise RuntimeError(f"task {ref.task_id} answered {record.result.text!r}")

    return call


@asynccontextmanager
async def a2a_client(url: str) -> AsyncIterator[Client]:
    """The SDK client for the agent at `url`, from its card: JSON-RPC, not streaming."""
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as http:
        config = ClientConfig(
            httpx_client=http,
            streaming=False,
            supported_protocol_bindings=[TransportProtocol.JSONRPC.value],
        )
        client = await ClientFactory(config).create_from_url(url)
        try:
            yield client
        finally:
            await client.close()


async def server_ready(child: Child, url: str, *, timeout: float = 20.0) -> None:
    """Return once the direct server answers its card."""
    async with httpx.AsyncClient(timeout=1.0) as http:
        card = f"{url}/.well-known/agent-card.json"
        await started(
            lambda: answers_200(http, card), [child], timeout=timeout, what=f"{child.name} ready"
        )


async def throughput(path: str, call: Call, pids: dict[str, int]) -> Throughput:
    requests = scaled(THROUGHPUT_REQUESTS)
    return await metered(
        path, call, pids, requests=requests, concurrency=CONCURRENCY, warm=CONCURRENCY * 4
    )


async def run_all(settings: Settings, *, logs: Path, server_pids: dict[str, int]) -> A2ARun:
    """Start the gateway, the executor, the echo agent and the direct server; measure; stop."""
    settings = bench_settings(settings)
    env = settings_env(settings)
    port = free_port()
    direct_url = f"http://127.0.0.1:{port}"
    latency: list[Result] = []
    loads: list[Throughput] = []
    async with MeshClient.connect(settings, sender_id="bench") as mesh:
        with stopping([]) as children:
            gateway = launch_gateway(env, logs)
            children.append(gateway.child)
            argv = [str(BIN / "agentmesh"), "worker", "executor"]
            executor = Child("executor", argv, env=env, log=logs / "executor.log")
            children.append(executor)
            echo = launch_echo(env, logs)
            children.append(echo)
            argv = [sys.executable, "-m", "tests.bench.a2a_echo", "--port", str(port)]
            direct = Child(DIRECT_SERVER, argv, env=os.environ, log=logs / "a2a-echo.log")
            children.append(direct)
            await gateway_ready(gateway)
            await agent_online(mesh, ECHO, echo)
            await server_ready(direct, direct_url)
            async with (
                a2a_client(direct_url) as direct_client,
                a2a_client(f"{gateway.url}/a2a/{ECHO}") as mesh_client,
            ):
                paths: tuple[tuple[str, Call], ...] = (
                    (DIRECT, a2a_call(direct_client)),
                    (MESH, a2a_call(mesh_client)),
                    (TASK, task_call(mesh)),
                )
                for _, call in paths:  # the first mesh one also waits for the executor
                    await asyncio.wait_for(call(), TIMEOUT)
                    await run(call, requests=scaled(WARMUP), concurrency=1)
                pids = {"bench process": os.getpid(), "gateway": gateway.child.pid}
                pids |= {"executor": executor.pid, "echo agent": echo.pid}
                pids |= {DIRECT_SERVER: direct.pid, **server_pids}
                progress(", ".join(f"{name} pid {pid}" for name, pid in pids.items()))
                loadavg = os.getloadavg()
                meter = CpuMeter(pids)
                for round_no in range(1, ROUNDS + 1):
                    for name, call in paths:
                        result = await measure(
                            name, call, requests=scaled(LATENCY_REQUESTS), concurrency=1
                        )
                        latency.append(result)
                        progress(
                            f"c=1 round {round_no} {name}: p50 {result.p50_ms:.3f} ms, "
                            f"p99 {result.p99_ms:.3f} ms"
                        )
                latency_cpu = meter.percent()
                for _ in range(ROUNDS):
                    for name, call in paths[:2]:
                        loads.append(await throughput(name, call, pids))
    return A2ARun(latency, latency_cpu, loads, loadavg)
