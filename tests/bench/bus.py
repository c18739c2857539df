"""The bus benchmark: `MeshClient.ask` to an echo `Agent` against raw nats-py request/reply.

Both paths run in this one process on one event loop, callers and responders alike, so the
comparison counts the SDK's work at both ends of a call.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.aio.msg import Msg

from agentmesh.agents import Agent, Context, MeshClient
from agentmesh.broker.settings import Settings
from agentmesh.schemas.envelope import Message
from tests.bench import report
from tests.bench.measure import Call, Result, measure, p50_range, progress, run, scaled

RAW = "raw nats-py"
SDK = "MeshClient.ask"
AGENT_ID = "bench-echo"
TEXT = "hello from the bench"  # 20 bytes
LEVELS = ((1, 5000), (64, 20000))  # (concurrency, requests per round) before BENCH_SCALE
WARMUP = 500
ROUNDS = 2
TIMEOUT = 10.0
TARGET_RATIO = 0.8  # SDK req/s over raw req/s at concurrency 64, at least
TARGET_ADDED_P50_MS = 0.3  # SDK p50 minus raw p50 at concurrency 1, at most


@asynccontextmanager
async def raw_path(settings: Settings) -> AsyncIterator[Call]:
    """A queue-group echo responder and a caller, each on its own nats-py connection."""
    responder = await nats.connect(settings.nats_url, name="bench-raw-responder")
    caller = await nats.connect(settings.nats_url, name="bench-raw-caller")
    subject = f"{settings.prefix}.bench.raw"
    payload = TEXT.encode()

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    async def call() -> bytes:
        return (await caller.request(subject, payload, timeout=TIMEOUT)).data

    try:
        await responder.subscribe(subject, queue="q", cb=echo)
        await responder.flush()
        yield call
    finally:
        await caller.close()
        await responder.close()


@asynccontextmanager
async def sdk_path(settings: Settings) -> AsyncIterator[Call]:
    """An `Agent` whose handler echoes the text, and a `MeshClient` that asks it."""
    agent = Agent(AGENT_ID)

    @agent.handler
    async def echo(msg: Message, ctx: Context) -> str:
        return msg.text

    await agent.start(settings)
    try:
        async with MeshClient.connect(settings) as mesh:

            async def call() -> str:
                return (await mesh.ask(AGENT_ID, TEXT, timeout=TIMEOUT)).text

            yield call
    finally:
        await agent.stop()


async def _check(raw: Call, sdk: Call) -> None:
    """Both paths really echo, before anything is timed."""
    if await raw() != TEXT.encode() or await sdk() != TEXT:
        raise RuntimeError("an echo path did not return the text it was sent")


async def compare(settings: Settings) -> list[Result]:
    """Raw then SDK at each concurrency: warm up, then interleaved rounds. Returns every round."""
    results: list[Result] = []
    async with raw_path(settings) as raw, sdk_path(settings) as sdk:
        await _check(raw, sdk)
        paths = ((RAW, raw), (SDK, sdk))
        for concurrency, count in LEVELS:
            requests = scaled(count)
            for _, call in paths:
                await run(call, requests=scaled(WARMUP), concurrency=concurrency)
            for round_no in range(1, ROUNDS + 1):
                for name, call in paths:
                    result = await measure(name, call, requests=requests, concurrency=concurrency)
                    progress(
                        f"c={concurrency} round {round_no} {name}: {result.rps:,.0f} req/s, "
                        f"p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms"
                    )
                    results.append(result)
    return results


def best(rounds: list[Result]) -> list[Result]:
    """Each (path, concurrency)'s round with the highest throughput, in first-seen order."""
    kept: dict[tuple[str, int], Result] = {}
    for r in rounds:
        key = (r.path, r.concurrency)
        if key not in kept or r.rps > kept[key].rps:
            kept[key] = r
    return list(kept.values())


async def profile(settings: Settings, *, concurrency: int = 64, top: int = 30) -> str:
    """Profile the SDK path at `concurrency`: pyinstrument if installed, else cProfile."""
    async with sdk_path(settings) as sdk:
        await run(sdk, requests=scaled(WARMUP), concurrency=concurrency)
        requests = scaled(LEVELS[-1][1])
        try:
            from pyinstrument import Profiler
        except ImportError:
            profiler = cProfile.Profile()
            profiler.enable()
            await run(sdk, requests=requests, concurrency=concurrency)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(top)
            title = f"cProfile (pyinstrument is not installed), top {top} by self time"
            return f"{title}:\n{out.getvalue()}"
        # The whole thread, not one task: the agent's work runs in tasks of its own.
        sampler = Profiler(async_mode="disabled")
        sampler.start()
        await run(sdk, requests=requests, concurrency=concurrency)
        sampler.stop()
        return sampler.output_text(unicode=True, color=False)


def section(rounds: list[Result]) -> str:
    """The "Bus" section of docs/BENCHMARKS.md, targets judged against this run."""
    results = best(rounds)
    by = {(r.path, r.concurrency): r for r in results}
    raw1, sdk1, raw64, sdk64 = by[RAW, 1], by[SDK, 1], by[RAW, 64], by[SDK, 64]
    ratio = sdk64.rps / raw64.rps
    added = sdk1.p50_ms - raw1.p50_ms
    ratio_ok, added_ok = ratio >= TARGET_RATIO, added <= TARGET_ADDED_P50_MS
    met = ("neither target is met", "one of the two targets is met", "both targets are met")
    ratio_cells = f"{ratio:.2f}× | {report.verdict(ratio_ok)}"
    added_cells = f"{added:+.3f} ms | {report.verdict(added_ok)}"
    n1, n64, warmup = scaled(LEVELS[0][1]), scaled(LEVELS[1][1]), scaled(WARMUP)
    return report.wrap(f"""\
## Bus: MeshClient.ask vs raw nats-py

Measured {report.today()} at {report.revision()}, one run. Machine: {report.machine()}.

Command: {report.command()}.

- **raw nats-py**: a caller connection does `await nc.request(subject, payload)`; a second
  connection serves it with `subscribe(subject, queue="q", cb=...)` and
  `await msg.respond(msg.data)`.
- **MeshClient.ask**: `MeshClient.ask("{AGENT_ID}", text)` to `Agent("{AGENT_ID}")`, whose
  handler returns `msg.text`; the reply is the decoded `Message`.
- The same {len(TEXT.encode())}-byte text either way. The benchmark starts its own nats-server
  and redis-server on localhost. Callers and responders share one Python process and one event
  loop, so the SDK's work at both ends of a call is counted. At concurrency 64, 64 caller tasks
  share one connection.
- Each path is warmed up with {warmup:,} calls per concurrency, then measured in {ROUNDS}
  interleaved rounds (raw, SDK, raw, SDK) of {n1:,} requests at concurrency 1 and {n64:,} at
  concurrency 64; each path's round with the higher throughput is shown. Latency is taken per
  request with `perf_counter_ns`; percentiles are nearest-rank.

{report.table(results, RAW)}

| target | measured | result |
|---|---:|---|
| SDK throughput >= {TARGET_RATIO}× raw at concurrency 64 | {ratio_cells} |
| added p50 <= {TARGET_ADDED_P50_MS} ms at concurrency 1 | {added_cells} |

**Where we stand.** In this run {met[ratio_ok + added_ok]}. At concurrency 1 the SDK adds
{added:.3f} ms to the median call ({sdk1.p50_ms:.3f} ms against {raw1.p50_ms:.3f} ms; across
rounds the p50 was {p50_range(rounds, RAW, 1)} raw and {p50_range(rounds, SDK, 1)} SDK, so
read the margin against the target with that noise in mind). At
concurrency 64, where the one Python process is the bottleneck, it reaches {ratio:.2f}× the
throughput of raw nats-py ({sdk64.rps:,.0f} against {raw64.rps:,.0f} req/s), so the gap is the
SDK's CPU cost per call: its envelope (a pydantic `Message` built, msgpack-encoded, decoded
and validated at both ends) and its call bookkeeping (reply routing, deadline, acknowledgement and
keep-alives, tracing when on). `python -m tests.bench --profile` shows the current split.
""")
