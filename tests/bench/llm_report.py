"""The "LLM" section of docs/BENCHMARKS.md, from one `LLMRun`, targets judged."""

from __future__ import annotations

from dataclasses import dataclass

from tests.bench import report
from tests.bench.bus import best
from tests.bench.llm import (
    ALIAS,
    DIRECT,
    DIRECT_HTTPX,
    KEY_LIMITS,
    LATENCY_REQUESTS,
    LOADGEN_CONCURRENCY,
    LOADGENS,
    ROUNDS,
    SLOTS,
    UPSTREAM_LATENCY,
    VIA_BUS,
    VIA_GATEWAY,
    VIA_GATEWAY_KEY,
    WARMUP,
    LLMRun,
    Load,
)
from tests.bench.measure import p50_range, scaled
from tests.bench.processes import MACHINE

TARGET_ADDED_P50_MS = 2.0  # through the gateway, against the upstream called directly
TARGET_SCALING = 1.8  # two workers against one, while the upstream's latency bounds them
CPU_BOUND = 90.0  # % of one core from which a process counts as CPU-bound
DEFAULT_SLOTS = 100  # Settings.max_concurrency


def ideal(load: Load, call_ms: dict[str, float]) -> float:
    """Requests a second if every call in flight took as long as one call alone (its path's
    p50 at concurrency 1): the bound the upstream's latency sets."""
    in_flight = load.concurrency
    if load.workers:
        in_flight = min(in_flight, load.workers * (load.slots or DEFAULT_SLOTS))
    return in_flight / (call_ms.get(load.path, UPSTREAM_LATENCY * 1000) / 1000)


def bound(load: Load, call_ms: dict[str, float]) -> str:
    """What limited a run, from its CPU use and its distance to the latency bound."""
    ours = {k: v for k, v in load.cpu.items() if k != MACHINE}
    name, busiest = max(ours.items(), key=lambda kv: kv[1])
    if busiest >= CPU_BOUND:
        return f"CPU of {name} ({busiest:.0f}%)"
    if load.cpu[MACHINE] >= 0.9 * 100 * report.cpus():
        return f"CPU of the machine ({load.cpu[MACHINE]:.0f}%)"
    if load.rps >= 0.8 * ideal(load, call_ms):
        return "the upstream's latency"
    return f"none at 90% CPU; busiest {name} ({busiest:.0f}%)"


def _slots(load: Load) -> str:
    return "" if not load.workers else str(load.slots or DEFAULT_SLOTS)


def _loads_table(loads: list[Load], call_ms: dict[str, float]) -> str:
    rows = [
        "| path | workers | calls per worker | concurrency | seconds | requests | req/s | "
        "latency bound req/s | p50 ms | p99 ms | errors | bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in loads:
        rows.append(
            f"| {t.path} | {t.workers or ''} | {_slots(t)} | {t.concurrency} | {t.seconds:.1f} | "
            f"{t.requests:,} | {t.rps:,.0f} | {ideal(t, call_ms):,.0f} | {t.p50_ms:.1f} | "
            f"{t.p99_ms:.1f} | {t.errors} | {bound(t, call_ms)} |"
        )
    return "\n".join(rows)


def _cpu_table(loads: list[Load]) -> str:
    names: list[str] = []
    for t in loads:
        names += [n for n in t.cpu if n != MACHINE and n not in names]
    names = [n for n in names if any(t.cpu.get(n, 0) >= 1 for t in loads)]  # idle throughout
    rows = [
        "| run | " + " | ".join(names) + f" | whole machine ({report.cpus()} cores) |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for i, t in enumerate(loads, 1):
        cells = [f"{t.cpu[n]:.0f}" if n in t.cpu else "" for n in names]
        label = f"{i}. {t.path}, {t.workers or 'no'} worker(s) × {_slots(t) or '-'}"
        rows.append(f"| {label} | " + " | ".join(cells) + f" | {t.cpu[MACHINE]:.0f} |")
    return "\n".join(rows)


@dataclass(frozen=True, slots=True)
class _Check:
    name: str
    measured: str
    ok: bool
    target: bool = True

    def row(self) -> str:
        verdict = report.verdict(self.ok) if self.target else ("ok" if self.ok else "**no**")
        return f"| {self.name} | {self.measured} | {verdict} |"


def _find(loads: list[Load], path: str, workers: int, slots: int | None) -> Load:
    return next(t for t in loads if (t.path, t.workers, t.slots) == (path, workers, slots))


def section(run: LLMRun) -> str:
    """The "LLM" section of docs/BENCHMARKS.md."""
    results = best(run.latency)
    by = {r.path: r for r in results}
    direct = by[DIRECT].p50_ms
    added = by[VIA_GATEWAY].p50_ms - direct
    added_bus = by[VIA_BUS].p50_ms - direct
    httpx_share = by[DIRECT_HTTPX].p50_ms - direct
    keyed = by[VIA_GATEWAY_KEY].p50_ms - by[VIA_GATEWAY].p50_ms
    loads = run.loads
    call_ms = {r.path: r.p50_ms for r in results}
    one, two = (_find(loads, VIA_GATEWAY, n, SLOTS) for n in (1, 2))
    bus_one, bus_two = (_find(loads, VIA_BUS, n, SLOTS) for n in (1, 2))
    free_one, free_two = (_find(loads, VIA_GATEWAY, n, None) for n in (1, 2))
    upstream64 = _find(loads, DIRECT, 0, None)
    scaling, bus_scaling = two.rps / one.rps, bus_two.rps / bus_one.rps
    latency_bound = not any(bound(t, call_ms).startswith("CPU") for t in (one, two))
    checks = [
        _Check(
            f"the gateway path adds <= {TARGET_ADDED_P50_MS:g} ms p50 at concurrency 1",
            f"{added:+.2f} ms",
            added <= TARGET_ADDED_P50_MS,
        ),
        _Check(
            f"two workers >= {TARGET_SCALING:g}× one worker through the gateway, while the "
            f"upstream's latency is the bound ({SLOTS} calls per worker)",
            f"{scaling:.2f}×" + ("" if latency_bound else " (CPU-bound)"),
            scaling >= TARGET_SCALING and latency_bound,
        ),
        _Check(
            "check: the same on the bus (`MeshClient.llm().chat`, no gateway)",
            f"{bus_scaling:.2f}×",
            bus_scaling >= TARGET_SCALING,
            target=False,
        ),
        _Check(
            f"check: two workers against one with the default {DEFAULT_SLOTS} calls per "
            "worker (64 callers)",
            f"{free_two.rps / free_one.rps:.2f}×",
            free_two.rps >= free_one.rps,
            target=False,
        ),
    ]
    judged = [c for c in checks if c.target]
    passed = sum(c.ok for c in judged)
    n, warmup, c64 = (
        scaled(LATENCY_REQUESTS),
        scaled(WARMUP, minimum=10),
        LOADGENS * LOADGEN_CONCURRENCY,
    )
    return report.wrap(f"""\
## LLM: gateway → bus → LLM worker → upstream, against the upstream directly

Measured {report.today()} at {report.revision()}, one run. Machine: {report.machine()}.

Command: {report.command()}.

- **Processes**: nats-server, redis-server, a stand-in upstream (`python -m tests.bench.upstream
  --latency {UPSTREAM_LATENCY:g}`: uvicorn, answers every chat completion after a fixed
  {UPSTREAM_LATENCY * 1000:g} ms), two gateways (`agentmesh gateway`, one with
  `AGENTMESH_AUTH=on`), one or two LLM workers (`agentmesh worker llm --config models.yaml`,
  alias `{ALIAS}` on the upstream through the OpenAI provider, whose HTTP client is httpx), and
  the bench process; load generators are processes of their own.
- **Latency, concurrency 1**: the same chat completion (one short user message) sent with a
  minimal keep-alive HTTP/1.1 client (`tests/bench/http1.py`) straight to the upstream
  ({DIRECT}), and to the gateway ({VIA_GATEWAY}); through the gateway with auth on and an API
  key with a request and a token limit ({KEY_LIMITS[0]} and {KEY_LIMITS[1]}, never reached: the
  cost of checking them, reserving tokens and correcting them); from `httpx.AsyncClient` straight
  to the upstream, as the worker calls it ({DIRECT_HTTPX}); and `MeshClient.llm(alias).chat` from
  the bench process, with no gateway ({VIA_BUS}). Each path is warmed up with {warmup:,} calls,
  then measured in {ROUNDS} interleaved rounds of {n:,} calls; each path's fastest round is
  shown. Added latency is each path's p50 minus the direct path's.
- **Throughput, concurrency {c64}**: {LOADGENS} load-generator processes × {LOADGEN_CONCURRENCY}
  keep-alive connections of the minimal client (`tests/bench/loadgen.py`), or {c64} tasks
  calling `MeshClient.llm(alias).chat` in the bench process, counting the calls completed in
  one window. With {c64} calls in flight and {UPSTREAM_LATENCY * 1000:g} ms each, the upstream
  allows {c64 / UPSTREAM_LATENCY:,.0f} req/s. A worker takes at most `AGENTMESH_MAX_CONCURRENCY`
  calls at once (default {DEFAULT_SLOTS}, more than the {c64} callers); the scaling runs give
  each worker {SLOTS} (`AGENTMESH_MAX_CONCURRENCY={SLOTS}`), so that a worker is bounded by the
  upstream's latency ({SLOTS} calls per call time) and a second one should double the
  throughput, while two workers, the gateway and the upstream together stay well within the
  machine's {report.cpus()} cores. The "latency bound" column is the calls in flight divided by
  the path's own p50 at concurrency 1; a run counts as CPU-bound when one of its processes used
  {CPU_BOUND:.0f}% of a core or more, or the machine 90% of all its cores. CPU is read from
  `/proc/<pid>/stat` over each window.

### Latency, concurrency 1

{report.table(results, DIRECT, short="direct")}

Across rounds the p50 was {p50_range(run.latency, DIRECT, digits=2)} direct,
{p50_range(run.latency, VIA_GATEWAY, digits=2)} through the gateway and
{p50_range(run.latency, VIA_BUS, digits=2)} on the bus.

### Throughput, concurrency {c64}

{_loads_table(loads, call_ms)}

CPU over each window, % of one core:

{_cpu_table(loads)}

### Targets

| target | measured | result |
|---|---:|---|
{chr(10).join(c.row() for c in checks)}

**Where we stand.** Targets met in this run: {passed} of {len(judged)}. At concurrency 1 a
chat completion through the gateway takes {by[VIA_GATEWAY].p50_ms:.2f} ms at the median against
{direct:.2f} ms straight to the upstream: {added:+.2f} ms. Of that, {added_bus:.2f} ms is already
there on the bus without the gateway (the worker's share: NATS both ways, the worker's Redis
cooldown check, and its HTTP call, where httpx alone adds {httpx_share:.2f} ms over the minimal
client), so the gateway's own share is {added - added_bus:.2f} ms; an API key with request and
token limits adds {keyed:+.2f} ms more (three Redis round trips before the call: the key lookup,
the request limit and the token reservation; the correction and the usage count run after the
reply). Straight to the upstream, {c64} callers reach
{upstream64.rps:,.0f} req/s ({bound(upstream64, call_ms)}). Through the mesh with the
default {DEFAULT_SLOTS} calls per worker, one worker gives {free_one.rps:,.0f} req/s (bound:
{bound(free_one, call_ms)}) and two give {free_two.rps:,.0f} req/s
({bound(free_two, call_ms)}). With {SLOTS} calls per worker, one worker gives
{one.rps:,.0f} req/s ({one.rps / ideal(one, call_ms):.0%} of its latency bound;
{bound(one, call_ms)}) and two give {two.rps:,.0f} req/s ({bound(two, call_ms)}): {scaling:.2f}×
through the gateway and {bus_scaling:.2f}× on the bus. What the worker spends its time on, and
what would close the gaps, is under "LLM: where the time goes" below (written by hand; the bench
does not rewrite it).
""")
