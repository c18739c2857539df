"""The gateway benchmark: POST /gateway/send (wait) to the echo agent side by side with
`MeshClient.ask`, throughput through one gateway process, and many WebSocket agents on it.

The gateway and the echo agent are real child processes (`agentmesh gateway`, `agentmesh agent
run`), as deployed; the section is written by `gateway_report.section`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from agentmesh.agents.client import MeshClient
from agentmesh.broker.settings import Settings
from tests.bench import ws_agents
from tests.bench.http1 import Connection, post
from tests.bench.loadgen import SEND_PATH, TEXT, Window, send_body
from tests.bench.measure import (
    Call,
    Result,
    measure,
    percentile,
    progress,
    run,
    scale,
    scaled,
)
from tests.bench.processes import (
    BIN,
    Child,
    ChildError,
    CpuMeter,
    agent_online,
    gateway_ready,
    launch_echo,
    launch_gateway,
    settings_env,
    stopping,
)

MESH = "MeshClient.ask"
HTTPX = "gateway, httpx"  # POST /gateway/send with wait, from httpx.AsyncClient
HTTP1 = "gateway, minimal client"  # the same request from tests.bench.http1
ECHO = "echo"
LATENCY_REQUESTS = 3000  # per round and path, before BENCH_SCALE
WARMUP = 300
ROUNDS = 2
LOADGENS = 2  # processes
LOADGEN_CONCURRENCY = 32  # connections per process: 64 in all
LOADGEN_STARTUP = 3.0  # seconds from spawning the load generators to their common window
THROUGHPUT_SECONDS = 5.0  # the window, before BENCH_SCALE
MESH_C64_REQUESTS = 20000
TIMEOUT = 10.0
# Presence must follow the WebSocket heartbeats within seconds, not the default minute.
HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT = 1.0, 5.0


@dataclass(frozen=True, slots=True)
class Throughput:
    """Requests completed by all load generators in their common window."""

    processes: int
    concurrency: int
    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float]  # % of one core over the window, per process and machine-wide

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True, slots=True)
class GatewayRun:
    latency: list[Result]  # every round of every path, concurrency 1
    throughput: Throughput
    mesh64: Result  # MeshClient.ask at concurrency 64 to the same echo agent: the mesh's headroom
    ws: ws_agents.WsResult | None  # None: BENCH_WS_AGENTS=0


def bench_settings(settings: Settings) -> Settings:
    return settings.with_(
        heartbeat_interval=HEARTBEAT_INTERVAL,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        request_timeout=TIMEOUT,
    )


async def run_all(settings: Settings, *, logs: Path, server_pids: dict[str, int]) -> GatewayRun:
    """Start a gateway and the echo agent as processes, measure, stop them."""
    settings = bench_settings(settings)
    env = settings_env(settings)
    ws_agents.raise_limits()  # before the gateway starts: it inherits the limit
    async with MeshClient.connect(settings) as mesh:
        with stopping([]) as children:
            gateway = launch_gateway(env, logs)
            children.append(gateway.child)
            echo = launch_echo(env, logs)
            children.append(echo)
            await gateway_ready(gateway)
            await agent_online(mesh, ECHO, echo)
            progress(f"gateway pid {gateway.child.pid} on {gateway.url}, echo pid {echo.pid}")
            latency = await latency_rounds(gateway.port, gateway.url, mesh)
            pids = {"gateway": gateway.child.pid, "echo agent": echo.pid, **server_pids}
            throughput = await measure_throughput(gateway.port, pids, logs)
            mesh64 = await mesh_c64(mesh)
            ws = None
            if ws_agents.count() > 0:
                ws = await ws_agents.run(gateway, mesh, pids=pids, logs=logs)
    return GatewayRun(latency, throughput, mesh64, ws)


async def latency_rounds(port: int, url: str, mesh: MeshClient) -> list[Result]:
    """Concurrency 1: MeshClient.ask, then the gateway through httpx and through a minimal
    client; warmed up, then interleaved rounds."""
    body = send_body(ECHO)
    raw = post(SEND_PATH, port, body)
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http:
        conn = await Connection.open(port)

        async def via_mesh() -> str:
            return (await mesh.ask(ECHO, TEXT, timeout=TIMEOUT)).text

        async def via_httpx() -> str:
            response = await http.post(SEND_PATH, json=body)
            return _reply_text(response.status_code, response.content)

        async def via_http1() -> str:
            return _reply_text(*await conn.request(raw))

        paths: tuple[tuple[str, Call], ...] = (
            (MESH, via_mesh),
            (HTTPX, via_httpx),
            (HTTP1, via_http1),
        )
        try:
            return await _rounds(paths)
        finally:
            conn.close()


def _reply_text(status: int, body: bytes) -> str:
    if status != 200:
        raise RuntimeError(f"POST {SEND_PATH} answered {status}: {body[:200]!r}")
    return json.loads(body)["result"]["result"]


async def _rounds(paths: tuple[tuple[str, Call], ...]) -> list[Result]:
    for name, call in paths:
        if await call() != TEXT:
            raise RuntimeError(f"{name} did not echo the text it was sent")
        await run(call, requests=scaled(WARMUP), concurrency=1)
    results = []
    for round_no in range(1, ROUNDS + 1):
        for name, call in paths:
            result = await measure(name, call, requests=scaled(LATENCY_REQUESTS), concurrency=1)
            progress(
                f"c=1 round {round_no} {name}: p50 {result.p50_ms:.3f} ms, "
                f"p99 {result.p99_ms:.3f} ms"
            )
            results.append(result)
    return results


def throughput_seconds() -> float:
    return max(1.0, THROUGHPUT_SECONDS * scale())


async def measure_throughput(port: int, pids: dict[str, int], logs: Path) -> Throughput:
    """LOADGENS processes × LOADGEN_CONCURRENCY connections, one common window."""
    seconds = throughput_seconds()
    start_at = time.time() + LOADGEN_STARTUP
    outs = [logs / f"loadgen-{i}.json" for i in range(LOADGENS)]
    with stopping([]) as gens:
        for i, out in enumerate(outs):
            argv = [str(BIN / "python"), "-m", "tests.bench.loadgen", "--port", str(port)]
            argv += ["--concurrency", str(LOADGEN_CONCURRENCY), "--start-at", str(start_at)]
            argv += ["--seconds", str(seconds), "--out", str(out)]
            log = logs / f"loadgen-{i}.log"
            gens.append(Child(f"load generator {i}", argv, env=os.environ, log=log))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        meter = CpuMeter({**pids, **{g.name: g.pid for g in gens}})
        await asyncio.sleep(seconds)
        cpu = meter.percent()
        for gen in gens:
            if await asyncio.to_thread(gen.proc.wait, TIMEOUT + seconds) != 0:
                raise ChildError(f"{gen.name} failed:\n{gen.tail()}")
    windows = [Window(**json.loads(out.read_text())) for out in outs]
    if any(w.late for w in windows):
        raise ChildError("a load generator was not ready before its window: raise LOADGEN_STARTUP")
    latencies = sorted(ns for w in windows for ns in w.latencies_ns)
    result = Throughput(
        processes=LOADGENS,
        concurrency=LOADGENS * LOADGEN_CONCURRENCY,
        seconds=seconds,
        requests=len(latencies),
        errors=sum(w.errors for w in windows),
        p50_ms=percentile(latencies, 50) / 1e6,
        p99_ms=percentile(latencies, 99) / 1e6,
        cpu=cpu,
    )
    progress(
        f"c={result.concurrency} through the gateway: {result.rps:,.0f} req/s, "
        f"p50 {result.p50_ms:.3f} ms, gateway CPU {cpu['gateway']:.0f}%"
    )
    return result


async def mesh_c64(mesh: MeshClient) -> Result:
    async def call() -> object:
        return await mesh.ask(ECHO, TEXT, timeout=TIMEOUT)

    await run(call, requests=scaled(WARMUP), concurrency=64)
    result = await measure(MESH, call, requests=scaled(MESH_C64_REQUESTS), concurrency=64)
    progress(f"c=64 {MESH} from the bench process: {result.rps:,.0f} req/s")
    return result
