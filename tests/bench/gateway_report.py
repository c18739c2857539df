"""The "Gateway" section of docs/BENCHMARKS.md, from one `GatewayRun`, targets judged."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from tests.bench import report, ws_agents
from tests.bench.bus import best
from tests.bench.gateway import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    HTTP1,
    HTTPX,
    LATENCY_REQUESTS,
    LOADGEN_CONCURRENCY,
    LOADGENS,
    MESH,
    ROUNDS,
    WARMUP,
    GatewayRun,
    Throughput,
)
from tests.bench.loadgen import TEXT
from tests.bench.measure import Result, p50_range, scaled
from tests.bench.processes import MACHINE
from tests.bench.ws_agents import WsResult

TARGET_ADDED_P50_MS = 1.0  # gateway (httpx) p50 minus MeshClient.ask p50 at concurrency 1
TARGET_RPS = 1500  # through one gateway process at concurrency 64
TARGET_WS_AGENTS = 1000  # connected and heartbeating on one gateway process
CPU_BOUND = 90.0  # % of one core from which the gateway counts as CPU-bound


def _stack() -> str:
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"uvicorn {http}, {loop} event loop"


def _added(by: dict[str, Result], path: str) -> float:
    return by[path].p50_ms - by[MESH].p50_ms


def _cpu_table(cpu: dict[str, float]) -> str:
    rows = ["| process | CPU, % of one core |", "|---|---:|"]
    ours = {k: v for k, v in cpu.items() if k != MACHINE}
    rows += [f"| {name} | {value:.0f} |" for name, value in ours.items()]
    others = cpu[MACHINE] - sum(ours.values())
    rows.append(f"| everything else on the machine | {max(0.0, others):.0f} |")
    rows.append(f"| whole machine ({report.cpus()} cores) | {cpu[MACHINE]:.0f} |")
    return "\n".join(rows)


def _throughput_table(t: Throughput, mesh64: Result) -> str:
    return "\n".join(
        [
            "| load | concurrency | seconds | requests | req/s | p50 ms | p99 ms | errors | "
            "gateway CPU |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| POST /gateway/send (wait), {t.processes} processes × {LOADGEN_CONCURRENCY} "
            f"connections | {t.concurrency} | {t.seconds:.1f} | {t.requests:,} | {t.rps:,.0f} | "
            f"{t.p50_ms:.2f} | {t.p99_ms:.2f} | {t.errors} | {t.cpu['gateway']:.0f}% |",
            f"| {MESH} from the bench process, no gateway | {mesh64.concurrency} | "
            f"{mesh64.seconds:.1f} | {mesh64.requests:,} | {mesh64.rps:,.0f} | "
            f"{mesh64.p50_ms:.2f} | {mesh64.p99_ms:.2f} | 0 | |",
        ]
    )


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _drop(ws: WsResult) -> str:
    if ws.drop_seconds is None:
        return f"more than {ws_agents.DROP_TIMEOUT:g} s"
    return f"{ws.drop_seconds:.2f} s"


def _ws_table(ws: WsResult) -> str:
    per_agent_kib = (ws.rss_mib - ws.rss_before_mib) * 1024 / max(1, ws.connected)
    drop = _drop(ws)
    rows = [
        "| measure | value |",
        "|---|---:|",
        f"| agents connected (`connected` frames) | {ws.connected:,} of {ws.agents:,} |",
        f"| connect, all of them (first handshake → last `connected` frame) | "
        f"{ws.connect_seconds:.1f} s |",
        f"| connect, per connection p50 / p99 (retries included) | {ws.connect_p50_ms:.0f} / "
        f"{ws.connect_p99_ms:.0f} ms |",
        f"| connect attempts refused with UNAVAILABLE, then retried | {ws.refused:,} |",
        f"| online in presence after {ws.hold_seconds:.0f} s of heartbeats "
        f"(`MeshClient.agents()`) | {ws.online:,} ({_yes(ws.all_online)}) |",
        f"| `GET /gateway/status` `connected_agents` then (with the echo agent) | "
        f"{ws.status_connected:,} |",
        f"| heartbeats sent / `heartbeat_ack`s received | {ws.heartbeats:,} / {ws.acks:,} |",
        f"| gateway RSS before → holding them | {ws.rss_before_mib:.0f} → {ws.rss_mib:.0f} MiB "
        f"({per_agent_kib:.0f} KiB per agent) |",
        f"| gateway CPU while holding them | {ws.cpu['gateway']:.0f}% of one core |",
        f"| `MeshClient.ask` to {ws.asks} random agents, p50 / p99 | {ws.ask_p50_ms:.2f} / "
        f"{ws.ask_p99_ms:.2f} ms |",
        f"| after closing all: none of them in presence | after {drop} |",
        f"| gone on close, before the {ws.heartbeat_timeout:g} s heartbeat timeout | "
        f"{_yes(ws.dropped)} |",
        f"| `connected_agents` then | {ws.status_after} |",
        f"| error frames received once connected | {len(ws.errors)} |",
    ]
    rows += [f"| gateway log: {kind} | {n:,} |" for kind, n in ws.warnings.items()]
    return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    measured: str
    ok: bool
    target: bool = True  # one of issue 3's targets; else a check that explains one

    def row(self) -> str:
        verdict = report.verdict(self.ok) if self.target else ("ok" if self.ok else "**no**")
        return f"| {self.name} | {self.measured} | {verdict} |"


def _checks(run: GatewayRun, added: float, added_http1: float) -> list[_Check]:
    t, ws = run.throughput, run.ws
    checks = [
        _Check(
            f"the gateway adds <= {TARGET_ADDED_P50_MS:g} ms p50 at concurrency 1 (httpx client)",
            f"{added:+.3f} ms",
            added <= TARGET_ADDED_P50_MS,
        ),
        _Check(
            "check: the same with the minimal client (the gateway's own share)",
            f"{added_http1:+.3f} ms",
            added_http1 <= TARGET_ADDED_P50_MS,
            target=False,
        ),
        _Check(
            f">= {TARGET_RPS:,} req/s through one gateway process at concurrency 64",
            f"{t.rps:,.0f} req/s",
            t.rps >= TARGET_RPS,
        ),
    ]
    if ws is None or ws.agents < TARGET_WS_AGENTS:
        return checks  # the WebSocket target is judged only at its full count
    failures = ws.refused + sum(ws.warnings.values())
    checks += [
        _Check(
            f"{TARGET_WS_AGENTS:,} WebSocket agents connected and heartbeating on one process",
            f"{ws.online:,} online",
            ws.all_online and ws.connected == ws.agents,
        ),
        _Check(
            "check: no presence failures on the way (refused connects, failed heartbeats or "
            "deregistrations), and all gone on close",
            f"{failures:,} failures; gone after {_drop(ws)}",
            failures == 0 and ws.dropped,
            target=False,
        ),
    ]
    return checks


def _targets_table(checks: list[_Check], ws_tried: int) -> str:
    rows = ["| target | measured | result |", "|---|---:|---|", *(c.row() for c in checks)]
    if ws_tried < TARGET_WS_AGENTS:
        rows.append(
            f"| {TARGET_WS_AGENTS:,} WebSocket agents on one process | {ws_tried:,} tried "
            "(BENCH_WS_AGENTS) | not judged |"
        )
    return "\n".join(rows)


def _throughput_words(t: Throughput) -> str:
    gateway, machine = t.cpu["gateway"], t.cpu[MACHINE]
    others = max(0.0, machine - sum(v for k, v in t.cpu.items() if k != MACHINE))
    bound = (
        f"the gateway process was CPU-bound ({gateway:.0f}% of one core), so {t.rps:,.0f} req/s "
        f"is its ceiling on this machine: about {gateway * 10_000 / t.rps:,.0f} µs of gateway "
        f"CPU per request"
        if gateway >= CPU_BOUND
        else f"the gateway process used {gateway:.0f}% of one core, short of CPU-bound, so "
        f"something else limited it (see the CPU table)"
    )
    noise = (
        f" Other processes on the machine used {others:.0f}% of a core meanwhile, so this run "
        f"was not alone: read the throughput as a lower bound."
        if others >= 15
        else ""
    )
    return (
        f"At concurrency 64 {bound}. The load generators, the echo agent and NATS share the "
        f"other core ({report.cpus()} cores in all); the load generators used "
        f"{sum(v for k, v in t.cpu.items() if k.startswith('load generator')):.0f}% between them."
        f"{noise}"
    )


def _ws_words(ws: WsResult | None) -> str:
    if ws is None:
        return "The WebSocket part was skipped (BENCH_WS_AGENTS=0)."
    return (
        f"{ws.connected:,} WebSocket agents connected in {ws.connect_seconds:.1f} s and stayed "
        f"online on heartbeats alone for {ws.hold_seconds:.0f} s (longer than the "
        f"{HEARTBEAT_TIMEOUT:g} s timeout), costing the gateway {ws.cpu['gateway']:.0f}% of a "
        f"core (about {ws.cpu['gateway'] * 10_000 * HEARTBEAT_INTERVAL / ws.connected:,.0f} µs "
        f"per heartbeat, one a second from each agent) and "
        f"{ws.rss_mib - ws.rss_before_mib:.0f} MiB; a message to any of them came back "
        f"in {ws.ask_p50_ms:.2f} ms at the median. {_drop_words(ws)}"
    )


def _drop_words(ws: WsResult) -> str:
    failed = ws.warnings.get("deregister failed", 0)
    if ws.dropped:
        return f"Closing them took them out of presence in {ws.drop_seconds:.2f} s."
    seen = f"; the gateway logged {failed:,} failed deregistrations" if failed else ""
    return (
        f"Closing them did **not** take them all out of presence at once: the last left only "
        f"when its heartbeats timed out{seen} (see below)."
    )


def section(run: GatewayRun) -> str:
    """The "Gateway" section of docs/BENCHMARKS.md."""
    results = best(run.latency)
    by = {r.path: r for r in results}
    added, added_http1 = _added(by, HTTPX), _added(by, HTTP1)
    t = run.throughput
    checks = _checks(run, added, added_http1)
    targets = _targets_table(checks, run.ws.agents if run.ws else 0)
    judged = [c for c in checks if c.target]
    passed = sum(c.ok for c in judged)
    ws = "" if run.ws is None else _ws_table(run.ws)
    n, warmup, ws_count = scaled(LATENCY_REQUESTS), scaled(WARMUP), ws_agents.count()
    return report.wrap(f"""\
## Gateway: HTTP send and WebSocket agents, one gateway process

Measured {report.today()} at {report.revision()}, one run. Machine: {report.machine()}.

Command: {report.command()}.

- **Processes**: nats-server, redis-server, one gateway (`agentmesh gateway --port <free>`:
  {_stack()}), the echo agent (`agentmesh agent run agentmesh.agents.examples.echo:agent`), and the
  bench process; load generators are processes of their own. Heartbeat interval
  {HEARTBEAT_INTERVAL:g} s and timeout {HEARTBEAT_TIMEOUT:g} s for all of them, so presence follows
  the heartbeats.
- **Latency, concurrency 1**: `{MESH}("echo", text)` from the bench process (no gateway), against
  `POST /gateway/send` with `"wait": true` and the same {len(TEXT.encode())}-byte text, sent
  from one keep-alive `httpx.AsyncClient` ({HTTPX}) and from a minimal keep-alive HTTP/1.1 client
  ({HTTP1}, `tests/bench/http1.py`: it only frames bytes, so the difference between the two is
  httpx's own time). Each path is warmed up with {warmup:,} calls, then measured in {ROUNDS}
  interleaved rounds of {n:,} calls; each path's fastest round is shown.
- **Throughput, concurrency 64**: {LOADGENS} load-generator processes
  (`tests/bench/loadgen.py`) × {LOADGEN_CONCURRENCY} keep-alive connections of the minimal
  client, each sending the same request again as soon as its reply is in, all counting the
  requests completed in one common window of {t.seconds:.1f} s. httpx is not the load generator:
  it spends about as much CPU per request as the gateway does (compare the two gateway rows of
  the latency table), and the machine has {report.cpus()} cores. CPU is read from
  `/proc/<pid>/stat` over the window.
- **WebSocket agents**: {ws_agents.CLIENT_PROCESSES} client processes
  (`tests/bench/ws_clients.py`, the `websockets` client) open {ws_count:,} connections to
  `/gateway/connect?agent_id=ws-bench-NNNN`, {ws_agents.CONNECT_PARALLEL_TOTAL} handshakes in
  flight at a time, wait for each `connected` frame, then send a `heartbeat` frame from every
  agent every {HEARTBEAT_INTERVAL:g} s and answer every `message` frame with a `result` echoing
  its text. The bench checks presence after the hold, asks a random sample, closes all and polls
  presence until none is left.

### Latency, concurrency 1

{report.table(results, MESH, short="ask")}

Across rounds the p50 was {p50_range(run.latency, MESH)} for {MESH},
{p50_range(run.latency, HTTPX)} through httpx and {p50_range(run.latency, HTTP1)} through the
minimal client.

### Throughput, concurrency 64

{_throughput_table(t, run.mesh64)}

CPU over the window:

{_cpu_table(t.cpu)}

### WebSocket agents on one gateway process

{ws or "Skipped (BENCH_WS_AGENTS=0)."}

### Targets

{targets}

**Where we stand.** Targets met in this run: {passed} of {len(judged)}. At concurrency
1 the gateway adds {added:.3f} ms to the median call through httpx ({by[HTTPX].p50_ms:.3f} ms
against {by[MESH].p50_ms:.3f} ms for `{MESH}`), of which {added - added_http1:.3f} ms is httpx
itself: with the minimal client the gateway adds {added_http1:.3f} ms. {_throughput_words(t)}
{_ws_words(run.ws)} Where the gateway's time goes, and what would close the gaps, is under
"Gateway: where the time goes" below (profiled by hand with py-spy; the bench does not rewrite
it).
""")
