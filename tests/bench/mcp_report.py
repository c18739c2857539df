"""The "MCP" section of docs/BENCHMARKS.md, from one `MCPRun`. There is no target: the section
reports what the mesh adds to a tool call, and what it costs in throughput."""

from __future__ import annotations

from tests.bench import report
from tests.bench.bus import best
from tests.bench.llm import LATENCY_REQUESTS, ROUNDS, WARMUP
from tests.bench.mcp import (
    CONCURRENCY,
    DIRECT,
    DIRECT_SERVER,
    SERVER,
    TEXT,
    THROUGHPUT_REQUESTS,
    TOOL,
    VIA_BUS,
    VIA_MCP,
    VIA_MCP_RAW,
    VIA_POST,
    WORKERS,
    MCPRun,
    with_workers,
)
from tests.bench.measure import p50_range, scaled
from tests.bench.processes import MACHINE, Throughput


def _cpu_table(loads: list[Throughput]) -> str:
    """CPU milliseconds per call of each process over each throughput run (processes idle
    throughout left out), and the whole machine's use in % of one core."""
    names = list(dict.fromkeys(n for t in loads for n in t.cpu if n != MACHINE))
    names = [n for n in names if any(t.cpu.get(n, 0) >= 1 for t in loads)]
    rows = [
        "| run | " + " | ".join(names) + f" | whole machine, % ({report.cpus()} cores) |",
        "|---|" + "---:|" * (len(names) + 1),
    ]
    for t in loads:
        per_call = 10 * t.result.seconds / t.result.requests  # ms per call for 1% of a core
        cells = [f"{t.cpu[n] * per_call:.2f}" if n in t.cpu else "" for n in names]
        rows.append(f"| {t.result.path} | " + " | ".join(cells) + f" | {t.cpu[MACHINE]:.0f} |")
    return "\n".join(rows)


def section(run: MCPRun) -> str:
    """The "MCP" section of docs/BENCHMARKS.md."""
    latency = best(run.latency)
    by = {r.path: r for r in latency}
    direct = by[DIRECT]
    added = {
        path: by[path].p50_ms - direct.p50_ms for path in (VIA_BUS, VIA_MCP, VIA_MCP_RAW, VIA_POST)
    }
    fastest = best([t.result for t in run.throughput])
    rounds = {t.result: t for t in run.throughput}
    loads = [rounds[r] for r in fastest]  # each path's fastest round, in the order measured
    rates = {t.result.path: t.result.rps for t in loads}
    one, two = WORKERS
    base = next(t for t in loads if t.result.path == DIRECT)
    base_rps = base.result.rps

    def rate(path: str, workers: int) -> str:
        rps = rates[with_workers(path, workers)]
        return f"{rps:,.0f} calls/s ({rps / base_rps:.2f}×)"

    p50s = {r.path: p50_range(run.latency, r.path, digits=2) for r in latency}
    n, warmup = scaled(LATENCY_REQUESTS), scaled(WARMUP, minimum=10)
    return report.wrap(f"""\
## MCP: a tool call through the mesh, against the mcp client calling the server directly

Measured {report.today()} at {report.revision()}, one run. Machine: {report.machine()}.

Command: {report.command()}.

- **The call**: `{TOOL}` of the demo MCP server (`tests/mcp/demo_server.py`, the SDK's
  `MCPServer`, over stdio) with a {len(TEXT.encode())}-byte text, answered with the same text.
- **Processes**: nats-server, redis-server, the gateway (`agentmesh gateway`), one or two MCP
  workers (`agentmesh worker mcp --config mcp.json`, server `{SERVER}`), each with its own demo
  server, and the bench process, which runs every caller and, for the direct path, its own demo
  server as a child.
- **Paths**: {DIRECT}: the official `mcp` client (`Client(StdioServerParameters(...))`, one
  session) calls `{TOOL}`. {VIA_BUS}: `MeshClient.tools.call("{SERVER}", "{TOOL}", ...)` over
  NATS to a worker, which calls its server over its own SDK session. {VIA_MCP}: the same `mcp`
  client, over Streamable HTTP to the gateway's stateless `/mcp`, calls `{SERVER}_{TOOL}`, and the
  gateway calls the worker on the bus. {VIA_MCP_RAW}: the JSON-RPC request that client sends
  (headers and `_meta` included), sent as prepared bytes by a minimal keep-alive HTTP/1.1 client
  (`tests/bench/http1.py`, one connection per call in flight), so that the difference to the
  previous path is the `mcp` client's own cost. {VIA_POST}: the gateway's plain tool route, from
  the same minimal client.
- **Latency, concurrency 1**: each path is warmed up with {warmup:,} calls, then measured in
  {ROUNDS} interleaved rounds of {n:,} calls; each path's fastest round is shown. Added latency
  is each path's p50 minus the direct path's.
- **Throughput, concurrency {CONCURRENCY}**: {CONCURRENCY} caller tasks in the bench process
  share one `mcp` client session, one `MeshClient`, or the minimal client's {CONCURRENCY}
  connections, and make {scaled(THROUGHPUT_REQUESTS):,} calls after {CONCURRENCY * 8} untimed
  ones, in {ROUNDS} interleaved rounds; each path's fastest round is shown, with its CPU. The
  direct baseline is one session to one server; a worker also holds one session per
  server, so the mesh paths are measured with {one} worker, then {two} (two sessions to two
  servers, which can beat the one direct session). CPU is read from `/proc/<pid>/stat` over each
  run.

### Latency, concurrency 1

{report.table(latency, DIRECT, short="direct")}

Across rounds the p50 was {p50s[DIRECT]} direct, {p50s[VIA_BUS]}
on the bus, {p50s[VIA_MCP]} through `/mcp` with the `mcp` client,
{p50s[VIA_MCP_RAW]} with the minimal client and {p50s[VIA_POST]}
through `POST /v1/tools/call`.

### Throughput, concurrency {CONCURRENCY}

{report.table(fastest, DIRECT, short="direct")}

CPU per call over each run, in milliseconds (the process's CPU time over the calls made), and
the whole machine's CPU use in % of one core (other work on the machine included):

{_cpu_table(loads)}

**Where we stand.** At concurrency 1 the direct call takes {direct.p50_ms:.2f} ms at the
median; the bus adds {added[VIA_BUS]:+.2f} ms, the gateway's `/mcp` {added[VIA_MCP]:+.2f} ms
with the `mcp` client and {added[VIA_MCP_RAW]:+.2f} ms with the minimal one, and
`POST /v1/tools/call` {added[VIA_POST]:+.2f} ms. With {CONCURRENCY} calls in flight one MCP
session reaches {base_rps:,.0f} calls/s directly, with its demo server at
{base.cpu[DIRECT_SERVER]:.0f}% of a core; through the mesh with {one} worker the bus
gives {rate(VIA_BUS, one)}, `/mcp` {rate(VIA_MCP, one)} with the `mcp` client and
{rate(VIA_MCP_RAW, one)} with the minimal one, and `POST /v1/tools/call` {rate(VIA_POST, one)};
with {two} workers {rate(VIA_BUS, two)}, {rate(VIA_MCP, two)}, {rate(VIA_MCP_RAW, two)} and
{rate(VIA_POST, two)}. Where the time goes is under "MCP: where the time goes" below (written by
hand; the bench does not rewrite it).
""")
