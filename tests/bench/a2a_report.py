"""The "A2A" section of docs/BENCHMARKS.md, from one `A2ARun`, judged against the issue's two
targets (added p50 at most 2 ms; throughput at least 0.8× the direct server's)."""

from __future__ import annotations

from tests.bench import report
from tests.bench.a2a import (
    CONCURRENCY,
    DIRECT,
    DIRECT_SERVER,
    LATENCY_REQUESTS,
    MESH,
    ROUNDS,
    TARGET_ADDED_MS,
    TARGET_RATIO,
    TASK,
    TEXT,
    THROUGHPUT_REQUESTS,
    WARMUP,
    A2ARun,
)
from tests.bench.bus import best
from tests.bench.measure import p50_range, scaled
from tests.bench.processes import MACHINE, Throughput
from tests.bench.tasks_report import cpu_table, others, quickest


def _mesh_cpu_ms(t: Throughput) -> float:
    """CPU per call of the mesh's processes (gateway, executor, agent, NATS, Redis)."""
    per_call = 10 * t.result.seconds / t.result.requests
    mesh = ("gateway", "executor", "echo agent", "nats-server", "redis-server")
    return sum(t.cpu.get(n, 0.0) for n in mesh) * per_call


def section(run: A2ARun) -> str:
    latency = quickest(run.latency)
    by = {r.path: r for r in latency}
    direct, mesh, task = by[DIRECT], by[MESH], by[TASK]
    added = mesh.p50_ms - direct.p50_ms
    fastest = best([t.result for t in run.throughput])
    rounds = {t.result: t for t in run.throughput}
    loads = [rounds[r] for r in fastest]
    direct_c, mesh_c = (next(r for r in fastest if r.path == p) for p in (DIRECT, MESH))
    ratio = mesh_c.rps / direct_c.rps
    added_ok, ratio_ok = added <= TARGET_ADDED_MS, ratio >= TARGET_RATIO
    met = ("neither target is met", "one of the two targets is met", "both targets are met")
    by_load = {t.result.path: t for t in loads}
    per_call = 10 * direct_c.seconds / direct_c.requests
    direct_cpu = by_load[DIRECT].cpu[DIRECT_SERVER] * per_call
    load1, load5, load15 = run.loadavg
    return report.wrap(f"""\
## A2A: SendMessage through the gateway, against an a2a-sdk server directly

Measured {report.today()} at {report.revision()}, one run. Machine: {report.machine()}. Load
average as the measuring began: {load1:.2f}, {load5:.2f}, {load15:.2f} (1, 5, 15 minutes).

Command: {report.command()}.

- **The client**, the same on both paths: the official `a2a-sdk` client
  (`ClientFactory(...).create_from_url(...)`, from the agent's card, JSON-RPC binding, not
  streaming) sending a blocking `SendMessage` with a {len(TEXT.encode())}-byte text and a new
  `messageId` each time; a call ends when the client has the completed Task, whose artifact
  is the text (checked).
- **{DIRECT}**: `python -m tests.bench.a2a_echo`, the SDK's own server classes: its
  `DefaultRequestHandler` over an `InMemoryTaskStore`, running an `AgentExecutor` in that
  process that enqueues the Task, adds the text as an artifact and completes it (`TaskUpdater`);
  the SDK's card, JSON-RPC and HTTP+JSON routes on a Starlette app under uvicorn with the
  gateway's protocol settings (httptools, asyncio loop, keep-alive 30 s, no access log).
- **{MESH}**: `agentmesh gateway` serves `/a2a/echo` (the SDK's routes and dispatchers over the
  gateway's `MeshRequestHandler`): it submits the message as a durable mesh task and waits for
  its final status (`TaskStore.wait`: the record, then the task's events); an executor
  (`agentmesh worker executor`) runs it as a mesh call of the demo echo agent (`agentmesh agent
  run agentmesh.agents.examples.echo:agent`) and records `running` and `completed`.
- **{TASK}**: the same durable task from the bench process without HTTP or A2A
  (`mesh.tasks.submit` with an idempotency key, as the gateway submits a message, then
  `mesh.tasks.wait`, as the gateway waits): what of the added time is the task's.
- **Processes**: nats-server, redis-server, the gateway, the executor, the echo agent, the direct
  server, and the bench process with the clients.
- **One at a time**: after {scaled(WARMUP):,} untimed calls of each path, {ROUNDS} interleaved
  rounds of {scaled(LATENCY_REQUESTS):,} calls per path; each path's round with the lowest p50
  is shown; percentiles are nearest-rank.
- **Throughput, concurrency {CONCURRENCY}**: {CONCURRENCY} caller tasks in the bench process,
  each calling again as soon as its call ends, {scaled(THROUGHPUT_REQUESTS):,} calls per round,
  {ROUNDS} interleaved rounds (direct, gateway, direct, gateway); each path's round with the
  higher throughput is shown, with its CPU, read from `/proc/<pid>/stat` over the round.

### One at a time

{report.table(latency, DIRECT, short="direct")}

Over these rounds the machine was {run.latency_cpu[MACHINE]:.0f}% busy (of
{100 * report.cpus()}%), {others(run.latency_cpu):.0f}% of it not charged to this run's processes
(other work on the machine, kernel time such as loopback networking, and this VM's steal time).
Across rounds the p50 was {p50_range(run.latency, DIRECT)} direct,
{p50_range(run.latency, MESH)} through the gateway and {p50_range(run.latency, TASK)} for the
task alone.

### Throughput, concurrency {CONCURRENCY}

{report.table(fastest, DIRECT, short="direct")}

CPU per call over each run, in milliseconds, and the whole machine's CPU use in % of one core,
with the part of it not charged to a process of this run (other work, kernel time, steal time):

{cpu_table(loads)}

### Targets

| target | measured | result |
|---|---:|---|
| added p50 over the direct server <= {TARGET_ADDED_MS:g} ms, one at a time \
| {added:+.2f} ms | {report.verdict(added_ok)} |
| calls/s >= {TARGET_RATIO}× the direct server's at concurrency {CONCURRENCY} \
| {ratio:.2f}× | {report.verdict(ratio_ok)} |

**Where we stand.** In this run {met[added_ok + ratio_ok]}. One at a time a blocking
`SendMessage` through the gateway takes {mesh.p50_ms:.2f} ms at the median against
{direct.p50_ms:.2f} ms to the SDK's server directly ({added:+.2f} ms); the durable task alone,
from the bench process, takes {task.p50_ms:.2f} ms, so {task.p50_ms - direct.p50_ms:.2f} ms of
the added time would be there without HTTP or A2A and {mesh.p50_ms - task.p50_ms:.2f} ms is the
gateway's A2A request around it. With {CONCURRENCY} in flight the gateway completes
{mesh_c.rps:,.0f} calls/s against {direct_c.rps:,.0f} for the direct server ({ratio:.2f}×); per
call the mesh's processes spend {_mesh_cpu_ms(by_load[MESH]):.2f} ms of CPU, the direct server
{direct_cpu:.2f} ms. Where the time goes is under "A2A: where the time goes" below (written by
hand; the bench does not rewrite it).
""")
