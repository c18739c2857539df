"""The LLM benchmark: client → gateway → bus → LLM worker → a local upstream with a fixed
latency, side by side with the same client calling that upstream directly, in one run.

Every part is a process of its own, as deployed: the upstream (`python -m tests.bench.upstream`),
the gateway (`agentmesh gateway`), the workers (`agentmesh worker llm --config`), and the load
generators (`tests/bench/loadgen.py`). The section is written by `llm_report.section`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from agentmesh.agents.client import MeshClient
from agentmesh.broker.bus import Bus
from agentmesh.broker.durable import DurableState
from agentmesh.broker.ratelimit import Limit
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.schemas.errors import MeshError
from agentmesh.schemas.service import ServiceKind, ServiceRecord
from tests.bench.http1 import Connection, HttpError, post
from tests.bench.loadgen import Window
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
    Gateway,
    gateway_ready,
    settings_env,
    started,
    stopping,
)

ALIAS = "bench-4.1-mini"  # a dotted alias, as real ones are
UPSTREAM_LATENCY = 0.020  # seconds, fixed
CHAT_PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hello from the bench"}]
DIRECT = "upstream directly"
DIRECT_HTTPX = "upstream directly, httpx (the worker's client)"
VIA_GATEWAY = "gateway → worker → upstream"
VIA_GATEWAY_KEY = "the same, API key with request and token limits"
VIA_BUS = "MeshClient.llm().chat → worker → upstream"
LATENCY_REQUESTS = 500  # per round and path, before BENCH_SCALE; each takes >= 20 ms
WARMUP = 50
ROUNDS = 2
LOADGENS = 2  # processes
LOADGEN_CONCURRENCY = 32  # connections per process: 64 in all
LOADGEN_STARTUP = 3.0  # seconds from spawning the load generators to their common window
THROUGHPUT_SECONDS = 5.0  # per window, before BENCH_SCALE
SLOTS = 2  # max_concurrency per worker in the latency-bound scaling runs
TIMEOUT = 10.0
KEY_LIMITS = ("1000000/60", "1000000000/60")  # requests, tokens: checked, never reached


@dataclass(frozen=True, slots=True)
class Load:
    """Requests completed at one concurrency in one common window."""

    path: str  # through the gateway (HTTP), straight to the upstream, or on the bus
    workers: int  # 0: no worker involved
    slots: int | None  # max_concurrency per worker; None: the default (100)
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
class LLMRun:
    latency: list[Result]  # every round of every path, concurrency 1
    loads: list[Load]


def chat_body(model: str) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES}


def window_seconds() -> float:
    return max(1.0, THROUGHPUT_SECONDS * scale())


class Mesh:
    """The processes of one run, started and stopped in order; workers come and go."""

    def __init__(self, settings: Settings, logs: Path, server_pids: Mapping[str, int]) -> None:
        self.settings = settings
        self.env = settings_env(settings)
        self.logs = logs
        self.server_pids = dict(server_pids)
        self.config = logs / "models.yaml"
        self.upstream_port = free_port()
        self.children: list[Child] = []
        self.workers: list[Child] = []
        self.gateway: Gateway | None = None
        self.keyed: Gateway | None = None  # AGENTMESH_AUTH=on

    def start_upstream(self) -> Child:
        argv = [str(BIN / "python"), "-m", "tests.bench.upstream"]
        argv += ["--port", str(self.upstream_port), "--latency", str(UPSTREAM_LATENCY)]
        child = Child("upstream", argv, env=os.environ, log=self.logs / "upstream.log")
        self.children.append(child)
        base_url = f"http://127.0.0.1:{self.upstream_port}/v1"
        model = {"provider": "openai", "base_url": base_url, "model": "bench"}
        self.config.write_text(
            yaml.safe_dump({"models": [{"name": ALIAS, "deployments": [model]}]})
        )
        return child

    def start_gateway(self, name: str, **env: str) -> Gateway:
        port = free_port()
        argv = [str(BIN / "agentmesh"), "gateway", "--port", str(port)]
        log = self.logs / f"{name}.log"
        child = Child(name, argv, env={**self.env, **env}, log=log)
        self.children.append(child)
        return Gateway(child, port)

    def start_worker(self, slots: int | None) -> Child:
        env = dict(self.env)
        if slots is not None:
            env["AGENTMESH_MAX_CONCURRENCY"] = str(slots)
        argv = [str(BIN / "agentmesh"), "worker", "llm", "--config", str(self.config)]
        n = len(self.workers)
        child = Child(f"worker {n}", argv, env=env, log=self.logs / f"worker-{n}.log")
        self.children.append(child)
        self.workers.append(child)
        return child

    def stop_workers(self) -> None:
        for child in self.workers:
            child.stop()
            self.children.remove(child)
        self.workers.clear()

    def pids(self) -> dict[str, int]:
        return {c.name: c.pid for c in self.children if c.proc.poll() is None} | self.server_pids

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


async def upstream_ready(child: Child, port: int, *, timeout: float = 20.0) -> None:
    raw = post(CHAT_PATH, port, chat_body("bench"))

    async def answers() -> bool:
        try:
            conn = await Connection.open(port)
            try:
                status, _ = await conn.request(raw)
            finally:
                conn.close()
        except (OSError, HttpError):
            return False  # not listening yet
        return status == 200

    await started(answers, [child], timeout=timeout, what="the upstream ready")


async def workers_serving(mesh: Mesh, count: int, *, timeout: float = 20.0) -> None:
    """Return once exactly `count` LLM workers announce the alias (they subscribe first)."""
    async with MeshClient.connect(mesh.settings) as client:

        async def serving() -> bool:
            workers = await client.services(ServiceKind.LLM_WORKER)
            records = [w for w in workers if isinstance(w, ServiceRecord)]
            return sum(ALIAS in w.serves.models for w in records) == count

        what = f"{count} workers serving {ALIAS}"
        await started(serving, mesh.workers, timeout=timeout, what=what)


async def bench_key(settings: Settings) -> str:
    """An API key with a request and a token limit, both far above what the run uses."""
    async with await Bus.connect(settings, name="bench") as bus:
        key, _ = await KeyStore(DurableState(bus.nc), bus.subjects).create(
            "bench",
            scopes=frozenset({Scope.SEND}),
            rate_limit=Limit.parse(KEY_LIMITS[0]),
            token_limit=Limit.parse(KEY_LIMITS[1]),
        )
    return key


async def run_all(settings: Settings, *, logs: Path, server_pids: dict[str, int]) -> LLMRun:
    """Start the upstream, the gateways and the workers as processes, measure, stop them."""
    settings = settings.with_(request_timeout=TIMEOUT)
    mesh = Mesh(settings, logs, server_pids)
    loads: list[Load] = []
    try:
        upstream = mesh.start_upstream()
        mesh.gateway = mesh.start_gateway("gateway")
        mesh.keyed = mesh.start_gateway("gateway with auth", AGENTMESH_AUTH="on")
        mesh.start_worker(None)
        await upstream_ready(upstream, mesh.upstream_port)
        await gateway_ready(mesh.gateway)
        await gateway_ready(mesh.keyed)
        await workers_serving(mesh, 1)
        progress(f"upstream pid {upstream.pid}, gateway pid {mesh.gateway.child.pid}")
        key = await bench_key(settings)
        async with MeshClient.connect(settings) as client:
            latency = await latency_rounds(mesh, client, key)
            loads.append(await http_load(mesh, DIRECT, mesh.upstream_port, "bench", None))
            # Uncapped workers (max_concurrency 100 > 64 callers): whatever bounds comes first.
            loads.append(await http_load(mesh, VIA_GATEWAY, mesh.gateway.port, ALIAS, None))
            loads.append(await bus_load(mesh, client, None))
            mesh.start_worker(None)
            await workers_serving(mesh, 2)
            loads.append(await http_load(mesh, VIA_GATEWAY, mesh.gateway.port, ALIAS, None))
            loads.append(await bus_load(mesh, client, None))
            mesh.stop_workers()
            await workers_serving(mesh, 0)
            # Workers of SLOTS calls each: the upstream's latency bounds each worker.
            for count in (1, 2):
                mesh.start_worker(SLOTS)
                await workers_serving(mesh, count)
                loads.append(await http_load(mesh, VIA_GATEWAY, mesh.gateway.port, ALIAS, SLOTS))
                loads.append(await bus_load(mesh, client, SLOTS))
    finally:
        mesh.stop()
    return LLMRun(latency, loads)


async def latency_rounds(mesh: Mesh, client: MeshClient, key: str) -> list[Result]:
    """Concurrency 1, one keep-alive connection per path; warmed up, then interleaved rounds."""
    assert mesh.gateway is not None and mesh.keyed is not None
    llm = client.llm(ALIAS)
    targets = (
        (DIRECT, mesh.upstream_port, "bench", {}),
        (VIA_GATEWAY, mesh.gateway.port, ALIAS, {}),
        (VIA_GATEWAY_KEY, mesh.keyed.port, ALIAS, {"Authorization": f"Bearer {key}"}),
    )
    conns: list[Connection] = []
    paths: list[tuple[str, Call]] = []
    url = f"http://127.0.0.1:{mesh.upstream_port}/v1/chat/completions"
    # As the worker's OpenAI provider makes its calls: one pooled client, a JSON body.
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200))
    try:
        for name, port, model, headers in targets:
            conn = await Connection.open(port)
            conns.append(conn)
            raw = post(CHAT_PATH, port, chat_body(model), headers=headers)
            paths.append((name, _http_call(conns, port, raw)))

        async def via_httpx() -> str:
            response = await http.post(url, json=chat_body("bench"), timeout=TIMEOUT)
            return response.json()["choices"][0]["message"]["content"]

        async def via_bus() -> str:
            reply = await llm.chat(MESSAGES, timeout=TIMEOUT)
            return reply["choices"][0]["message"]["content"]

        paths.insert(1, (DIRECT_HTTPX, via_httpx))
        paths.append((VIA_BUS, via_bus))
        return await rounds(paths)
    finally:
        await http.aclose()
        for conn in conns:
            conn.close()


def _http_call(conns: list[Connection], port: int, raw: bytes) -> Call:
    """A call over one keep-alive connection, opened again if the server closed it while the
    other paths had their turn (uvicorn closes connections idle for 5 s); `rounds` makes an
    untimed call first, so the reconnection is never measured."""
    current = [conns[-1]]

    async def call() -> str:
        try:
            status, body = await current[0].request(raw)
        except HttpError:
            current[0] = await Connection.open(port)
            conns.append(current[0])  # closed with the others
            status, body = await current[0].request(raw)
        if status != 200:
            raise RuntimeError(f"POST {CHAT_PATH} answered {status}: {body[:200]!r}")
        return json.loads(body)["choices"][0]["message"]["content"]

    return call


async def rounds(paths: list[tuple[str, Call]]) -> list[Result]:
    for _, call in paths:
        await run(call, requests=scaled(WARMUP, minimum=10), concurrency=1)
    results = []
    for round_no in range(1, ROUNDS + 1):
        for name, call in paths:
            await call()  # untimed: reconnects a connection closed while idle
            result = await measure(name, call, requests=scaled(LATENCY_REQUESTS), concurrency=1)
            progress(
                f"c=1 round {round_no} {name}: p50 {result.p50_ms:.3f} ms, "
                f"p99 {result.p99_ms:.3f} ms"
            )
            results.append(result)
    return results


async def http_load(mesh: Mesh, path: str, port: int, model: str, slots: int | None) -> Load:
    """LOADGENS processes × LOADGEN_CONCURRENCY connections, one common window."""
    seconds = window_seconds()
    start_at = time.time() + LOADGEN_STARTUP
    n = len(list(mesh.logs.glob("loadgen-*.json")))
    outs = [mesh.logs / f"loadgen-{n + i}.json" for i in range(LOADGENS)]
    body = json.dumps(chat_body(model))
    with stopping([]) as gens:
        for i, out in enumerate(outs):
            argv = [str(BIN / "python"), "-m", "tests.bench.loadgen", "--port", str(port)]
            argv += ["--concurrency", str(LOADGEN_CONCURRENCY), "--start-at", str(start_at)]
            argv += ["--seconds", str(seconds), "--out", str(out)]
            argv += ["--path", CHAT_PATH, "--body", body]
            log = mesh.logs / f"loadgen-{n + i}.log"
            gens.append(Child(f"load generator {i}", argv, env=os.environ, log=log))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        meter = CpuMeter({**mesh.pids(), **{g.name: g.pid for g in gens}})
        await asyncio.sleep(seconds)
        cpu = meter.percent()
        for gen in gens:
            if await asyncio.to_thread(gen.proc.wait, TIMEOUT + seconds) != 0:
                raise ChildError(f"{gen.name} failed:\n{gen.tail()}")
    windows = [Window(**json.loads(out.read_text())) for out in outs]
    if any(w.late for w in windows):
        raise ChildError("a load generator was not ready before its window: raise LOADGEN_STARTUP")
    latencies = sorted(ns for w in windows for ns in w.latencies_ns)
    load = Load(
        path=path,
        workers=0 if port == mesh.upstream_port else len(mesh.workers),
        slots=slots,
        concurrency=LOADGENS * LOADGEN_CONCURRENCY,
        seconds=seconds,
        requests=len(latencies),
        errors=sum(w.errors for w in windows),
        p50_ms=percentile(latencies, 50) / 1e6,
        p99_ms=percentile(latencies, 99) / 1e6,
        cpu=cpu,
    )
    _report(load)
    return load


async def bus_load(mesh: Mesh, client: MeshClient, slots: int | None) -> Load:
    """64 concurrent `mesh.llm(alias).chat` calls from this process, for one window."""
    llm, seconds = client.llm(ALIAS), window_seconds()
    concurrency = LOADGENS * LOADGEN_CONCURRENCY
    await run(
        lambda: llm.chat(MESSAGES, timeout=TIMEOUT),
        requests=concurrency * 4,
        concurrency=concurrency,
    )
    latencies: list[int] = []
    errors = 0
    clock = time.perf_counter_ns

    async def caller() -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            start = clock()
            try:
                await llm.chat(MESSAGES, timeout=TIMEOUT)
            except MeshError:  # counted; the run goes on
                errors += 1
                continue
            if time.monotonic() < stop_at:  # calls that end after the window are not counted
                latencies.append(clock() - start)

    meter = CpuMeter({**mesh.pids(), "bench process (callers)": os.getpid()})
    stop_at = time.monotonic() + seconds
    callers = asyncio.gather(*(caller() for _ in range(concurrency)))
    await asyncio.sleep(seconds)
    cpu = meter.percent()
    await callers
    latencies.sort()
    load = Load(
        path=VIA_BUS,
        workers=len(mesh.workers),
        slots=slots,
        concurrency=concurrency,
        seconds=seconds,
        requests=len(latencies),
        errors=errors,
        p50_ms=percentile(latencies, 50) / 1e6,
        p99_ms=percentile(latencies, 99) / 1e6,
        cpu=cpu,
    )
    _report(load)
    return load


def _report(load: Load) -> None:
    busy = ", ".join(f"{k} {v:.0f}%" for k, v in load.cpu.items() if v >= 5)
    progress(
        f"c={load.concurrency} {load.path}, {load.workers} worker(s), slots {load.slots or 100}: "
        f"{load.rps:,.0f} req/s, p50 {load.p50_ms:.2f} ms, {load.errors} errors; CPU {busy}"
    )
