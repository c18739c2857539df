"""Many WebSocket agents held on one gateway process: connect them, keep them heartbeating,
check presence and reachability, close them, check they leave presence.

The agents live in `ws_clients` processes; this module drives them and watches the gateway.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agentmesh.agents.client import MeshClient
from tests.bench.loadgen import TEXT
from tests.bench.measure import percentile, scale
from tests.bench.processes import (
    BIN,
    Child,
    ChildError,
    CpuMeter,
    Gateway,
    raise_nofile,
    rss_mib,
    stopping,
)
from tests.bench.ws_clients import CONNECT_PARALLEL

PREFIX = "ws-bench-"
DEFAULT_AGENTS = 1000  # BENCH_WS_AGENTS
CLIENT_PROCESSES = 2
CONNECT_PARALLEL_TOTAL = CLIENT_PROCESSES * CONNECT_PARALLEL  # handshakes in flight
HOLD_SECONDS = 10.0  # before BENCH_SCALE; never shorter than the heartbeat timeout
SAMPLE_ASKS = 100
CONNECT_TIMEOUT = 180.0
DROP_TIMEOUT = 30.0
ASK_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class WsResult:
    agents: int  # asked to connect
    connected: int  # `connected` frames received
    connect_seconds: float  # first connect started → last `connected` frame
    connect_p50_ms: float
    connect_p99_ms: float
    refused: int  # connect attempts refused with UNAVAILABLE and retried
    hold_seconds: float
    online: int  # of ours, in presence at the end of the hold
    status_connected: int  # GET /gateway/status connected_agents then (the echo agent too)
    heartbeats: int  # sent by the clients over the whole run
    acks: int
    rss_before_mib: float
    rss_mib: float  # the gateway's resident memory while holding them
    cpu: dict[str, float]  # % of one core over the hold
    asks: int
    ask_p50_ms: float
    ask_p99_ms: float
    drop_seconds: float | None  # close → none of ours in presence (None: not within the timeout)
    status_after: int  # connected_agents after the drop
    heartbeat_timeout: float
    errors: list[str]
    warnings: dict[str, int]  # gateway log warnings, by kind

    @property
    def all_online(self) -> bool:
        return self.online == self.agents

    @property
    def dropped(self) -> bool:
        """Gone from presence on close, not only once their heartbeats timed out."""
        return self.drop_seconds is not None and self.drop_seconds < self.heartbeat_timeout


def count() -> int:
    """`BENCH_WS_AGENTS` (default 1000); 0 skips this part."""
    return int(os.environ.get("BENCH_WS_AGENTS", "") or DEFAULT_AGENTS)


def raise_limits() -> None:
    """Enough file descriptors for every socket, in this process and the ones it starts."""
    raise_nofile(2 * count() + 1024)


def hold_seconds(timeout: float) -> float:
    return max(timeout + 1.0, HOLD_SECONDS * scale())


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _ours_online(mesh: MeshClient) -> int:
    return sum(1 for p in await mesh.agents() if p.agent_id.startswith(PREFIX))


async def _status_connected(http: httpx.AsyncClient) -> int:
    response = await http.get("/gateway/status")
    response.raise_for_status()
    return int(response.json()["connected_agents"])


def _launch(gateway: Gateway, agents: int, logs: Path) -> list[Child]:
    clients, first = [], 1
    for i in range(CLIENT_PROCESSES):
        n = agents // CLIENT_PROCESSES + (i < agents % CLIENT_PROCESSES)
        argv = [str(BIN / "python"), "-m", "tests.bench.ws_clients", "--url", gateway.ws_url]
        argv += ["--prefix", PREFIX, "--first", str(first), "--count", str(n)]
        log = logs / f"ws-clients-{i}.log"
        clients.append(Child(f"WebSocket clients {i}", argv, env=os.environ, log=log, talk=True))
        first += n
    return clients


async def _asks(mesh: MeshClient, agents: int) -> list[int]:
    """Sequential asks to a random sample of the agents; latencies in ns."""
    sample = random.sample(range(1, agents + 1), min(SAMPLE_ASKS, agents))
    latencies = []
    for n in sample:
        start = time.perf_counter_ns()
        reply = await mesh.ask(f"{PREFIX}{n:04d}", TEXT, timeout=ASK_TIMEOUT)
        latencies.append(time.perf_counter_ns() - start)
        if reply.text != TEXT:
            raise RuntimeError(f"{PREFIX}{n:04d} answered {reply.text!r}")
    return sorted(latencies)


# What the gateway logs when presence fails it, as counted in its log.
WARNINGS = {
    "attach failed": "cannot attach agent",
    "heartbeat failed": "heartbeat of agent",
    "deregister failed": "could not deregister",
}


def _warnings(log: Path) -> dict[str, int]:
    text = log.read_text(errors="replace")
    return {kind: text.count(needle) for kind, needle in WARNINGS.items()}


async def _drop_seconds(mesh: MeshClient, since: float) -> float | None:
    deadline = since + DROP_TIMEOUT
    while time.monotonic() < deadline:
        if await _ours_online(mesh) == 0:
            return time.monotonic() - since
        await asyncio.sleep(0.05)
    return None


async def _hold(
    gateway_pid: int, pids: dict[str, int], seconds: float
) -> tuple[float, dict[str, float]]:
    """Let the agents heartbeat for `seconds`: the gateway's peak RSS, and everyone's CPU."""
    meter = CpuMeter(pids)
    rss, ticks = rss_mib(gateway_pid), max(1, round(seconds))
    for _ in range(ticks):
        await asyncio.sleep(seconds / ticks)
        rss = max(rss, rss_mib(gateway_pid))
    return rss, meter.percent()


async def _close(
    clients: list[Child], mesh: MeshClient
) -> tuple[list[dict[str, Any]], float | None]:
    """Close every agent; what the clients counted, and how long until presence had none."""
    for client in clients:
        client.say("close")
    closed_at = time.monotonic()
    bye = [await c.hear(timeout=CONNECT_TIMEOUT) for c in clients]
    drop = await _drop_seconds(mesh, closed_at)
    for client in clients:
        if await asyncio.to_thread(client.proc.wait, ASK_TIMEOUT) != 0:
            raise ChildError(f"{client.name} failed:\n{client.tail()}")
    return bye, drop


async def run(gateway: Gateway, mesh: MeshClient, *, pids: dict[str, int], logs: Path) -> WsResult:
    """Connect `BENCH_WS_AGENTS` agents, hold them, sample asks, close them."""
    agents, timeout = count(), mesh.settings.heartbeat_timeout
    hold = hold_seconds(timeout)
    rss_before = rss_mib(gateway.child.pid)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=ASK_TIMEOUT) as http:
        with stopping(_launch(gateway, agents, logs)) as clients:
            hello = [await c.hear(timeout=CONNECT_TIMEOUT) for c in clients]
            connect_ns = sorted(ns for h in hello for ns in h["connect_ns"])
            connect_seconds = max(h["ended"] for h in hello) - min(h["started"] for h in hello)
            _progress(f"{len(connect_ns)} WebSocket agents connected in {connect_seconds:.1f} s")
            all_pids = {**pids, **{c.name: c.pid for c in clients}}
            rss, cpu = await _hold(gateway.child.pid, all_pids, hold)
            online = await _ours_online(mesh)
            status_connected = await _status_connected(http)
            _progress(f"after {hold:.0f} s: {online} online, gateway {cpu['gateway']:.0f}% CPU")
            asks = await _asks(mesh, agents)
            bye, drop = await _close(clients, mesh)
            status_after = await _status_connected(http)
    return WsResult(
        agents=agents,
        connected=len(connect_ns),
        connect_seconds=connect_seconds,
        connect_p50_ms=percentile(connect_ns, 50) / 1e6,
        connect_p99_ms=percentile(connect_ns, 99) / 1e6,
        refused=sum(h["refused"] for h in hello),
        hold_seconds=hold,
        online=online,
        status_connected=status_connected,
        heartbeats=sum(b["heartbeats"] for b in bye),
        acks=sum(b["acks"] for b in bye),
        rss_before_mib=rss_before,
        rss_mib=rss,
        cpu=cpu,
        asks=len(asks),
        ask_p50_ms=percentile(asks, 50) / 1e6,
        ask_p99_ms=percentile(asks, 99) / 1e6,
        drop_seconds=drop,
        status_after=status_after,
        heartbeat_timeout=timeout,
        errors=[e for b in bye for e in b["errors"]],
        warnings=_warnings(gateway.child.log),
    )
