"""The "Tasks" section of docs/BENCHMARKS.md, from one `TasksRun`, the issue's two targets
judged against this run."""

from __future__ import annotations

from tests.bench import report
from tests.bench.bus import best
from tests.bench.measure import Result, p50_range, scaled
from tests.bench.processes import MACHINE, Throughput
from tests.bench.task_agent import AGENT_ID
from tests.bench.tasks import (
    CONCURRENCY,
    IDLE_PAUSE,
    MESH,
    PULL_BATCH,
    RAW,
    ROUNDS,
    SEQUENTIAL_TASKS,
    START,
    SUBMIT,
    TARGET_RATIO,
    TARGET_START_P50_MS,
    TEXT,
    THROUGHPUT_TASKS,
    WARMUP,
    TasksRun,
)


def quickest(rounds: list[Result]) -> list[Result]:
    """Each path's round with the lowest p50, in first-seen order."""
    kept: dict[str, Result] = {}
    for r in rounds:
        if r.path not in kept or r.p50_ms < kept[r.path].p50_ms:
            kept[r.path] = r
    return list(kept.values())


def _latency_table(results: list[Result]) -> str:
    rows = [
        "| measured, one at a time | count | p50 ms | p99 ms | p50 vs raw |",
        "|---|---:|---:|---:|---:|",
    ]
    raw = next(r for r in results if r.path == RAW)
    for r in results:
        added = "" if r is raw else f"{r.p50_ms / raw.p50_ms:.1f}×"
        rows.append(f"| {r.path} | {r.requests:,} | {r.p50_ms:.3f} | {r.p99_ms:.3f} | {added} |")
    return "\n".join(rows)


def others(cpu: dict[str, float]) -> float:
    """% of one core the machine spent outside this run's processes (other work on it)."""
    return max(0.0, cpu[MACHINE] - sum(v for k, v in cpu.items() if k != MACHINE))


def cpu_table(loads: list[Throughput]) -> str:
    """CPU milliseconds per task (or call) of each process over each run, and the whole
    machine's use in % of one core, with the part of it outside this run's processes."""
    names = [n for n in loads[0].cpu if n != MACHINE]
    rows = [
        "| run | " + " | ".join(names) + f" | whole machine, % ({report.cpus()} cores) "
        "| of which other processes, % |",
        "|---|" + "---:|" * (len(names) + 2),
    ]
    for t in loads:
        per_item = 10 * t.result.seconds / t.result.requests  # ms per task (call) for 1% of a core
        cells = [f"{t.cpu[n] * per_item:.3f}" for n in names]
        rows.append(
            f"| {t.result.path} | " + " | ".join(cells) + f" | {t.cpu[MACHINE]:.0f} "
            f"| {others(t.cpu):.0f} |"
        )
    return "\n".join(rows)


def section(run: TasksRun) -> str:
    """The "Tasks" section of docs/BENCHMARKS.md."""
    latency = quickest(run.latency)
    by = {r.path: r for r in latency}
    fastest = best([t.result for t in run.throughput])
    rounds = {t.result: t for t in run.throughput}
    loads = [rounds[r] for r in fastest]
    raw64, mesh64 = (next(r for r in fastest if r.path == p) for p in (RAW, MESH))
    ratio = mesh64.rps / raw64.rps
    start = by[START]
    ratio_ok, start_ok = ratio >= TARGET_RATIO, start.p50_ms < TARGET_START_P50_MS
    met = ("neither target is met", "one of the two targets is met", "both targets are met")
    mesh_cpu = next(t.cpu for t in loads if t.result.path == MESH)
    per_task = 10 * mesh64.seconds / mesh64.requests
    executor_ms, agent_ms = mesh_cpu["executor"] * per_task, mesh_cpu["agent"] * per_task
    bench_ms = mesh_cpu["bench process"] * per_task
    one = scaled(SEQUENTIAL_TASKS)
    load1, load5, load15 = run.loadavg
    return report.wrap(f"""\
## Tasks: submit → completed through the executor, against raw JetStream

Measured {report.today()} at {report.revision()}, one run. Machine: {report.machine()}. Load
average as the measuring began: {load1:.2f}, {load5:.2f}, {load15:.2f} (1, 5, 15 minutes).

Command: {report.command()}.

- **{RAW}**: nats-py on two connections. A work-queue stream with file storage (as the task
  queue); the producer does `await js.publish(subject, data, stream=...)`, which waits for
  JetStream's ack; the consumer, a durable pull consumer with explicit ack, keeps pull requests
  (`$JS.API.CONSUMER.MSG.NEXT`) for {PULL_BATCH} messages outstanding, topped up when half have
  come (as nats.go's `Consume` does; nats-py's `fetch` holds a batch until it is full or timed
  out), handles each message with a no-op and does `await msg.ack()`. A call publishes one
  message and ends when the consumer has handled it (publish → handled).
- **{MESH}**: `mesh.tasks.submit("{AGENT_ID}", text)` with a {len(TEXT.encode())}-byte text.
  It returns once JetStream holds the record, the `pending` event and the queue message; the
  executor (`agentmesh worker executor`, 100 slots) pulls the task, calls the agent
  (`agentmesh agent run tests.bench.task_agent:agent`, whose handler returns the text and the
  CLOCK_MONOTONIC time it started), and records `running` and then `completed` (record and
  event each). A call ends when the bench process sees the task's `completed` status event, on
  one core NATS subscription to every task's events subject (`mesh.tasks.wait` would instead
  read the record and open a JetStream consumer per task).
- **Processes**: nats-server, redis-server, the executor, the agent, and the bench process, which
  runs the submitters, the event watcher and the whole raw path.
- **One at a time**: after {scaled(WARMUP):,} untimed calls of each path, {ROUNDS} interleaved
  rounds of {one:,} calls each: raw publish → handled, then the mesh's submit one task, see it
  completed, read its record and pause {IDLE_PAUSE * 1000:g} ms (untimed), and so on, so every
  task meets an idle mesh. From each
  task: how long `submit` took, submit → the agent's handler started (its stamp minus the submit
  time, the same clock) and submit → `completed` seen. Each path's round with the lowest p50 is
  shown; percentiles are nearest-rank.
- **Throughput, concurrency {CONCURRENCY}**: {CONCURRENCY} caller tasks in the bench process,
  each calling again as soon as its call ends, {scaled(THROUGHPUT_TASKS):,} calls per round,
  {ROUNDS} interleaved rounds (raw, mesh, raw, mesh); each path's round with the higher
  throughput is shown, with its CPU, read from `/proc/<pid>/stat` over the round.

### One at a time (idle mesh)

{_latency_table(latency)}

Over these rounds the machine was {run.latency_cpu[MACHINE]:.0f}% busy (of
{100 * report.cpus()}%), {others(run.latency_cpu):.0f}% of it outside this run's processes.
Across rounds the p50 was {p50_range(run.latency, RAW, digits=2)} raw,
{p50_range(run.latency, SUBMIT, digits=2)} for `submit`, {p50_range(run.latency, START, digits=2)}
to the handler's start and {p50_range(run.latency, MESH, digits=2)} to `completed`.

### Throughput, concurrency {CONCURRENCY}

{report.table(fastest, RAW)}

CPU per task (per message for the raw path) over each run, in milliseconds, and the whole
machine's CPU use in % of one core, with the part of it no process of this run used (other work
on the machine):

{cpu_table(loads)}

### Targets

| target | measured | result |
|---|---:|---|
| tasks/s >= {TARGET_RATIO}× raw JetStream messages/s at concurrency {CONCURRENCY} \
| {ratio:.2f}× | {report.verdict(ratio_ok)} |
| submit → handler start p50 < {TARGET_START_P50_MS:g} ms, one at a time \
| {start.p50_ms:.2f} ms | {report.verdict(start_ok)} |

**Where we stand.** In this run {met[ratio_ok + start_ok]}. One at a time, a task reaches its
agent's handler {start.p50_ms:.2f} ms after `submit` is called at the median (p99
{start.p99_ms:.2f} ms), of which `submit` itself takes {by[SUBMIT].p50_ms:.2f} ms, and is seen
completed after {by[MESH].p50_ms:.2f} ms, against {by[RAW].p50_ms:.2f} ms for a raw JetStream
message to be published and handled. With {CONCURRENCY} in flight the mesh completes
{mesh64.rps:,.0f} tasks/s against {raw64.rps:,.0f} raw messages/s ({ratio:.2f}×); per task the
executor spends {executor_ms:.2f} ms of CPU, the agent {agent_ms:.2f} ms and the bench process
(submit and watching) {bench_ms:.2f} ms. Where the time goes is under "Tasks: where the time
goes" below (written by hand; the bench does not rewrite it).
""")
