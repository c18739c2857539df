"""Drive one async call at a fixed concurrency and summarise it: throughput and latency."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Call = Callable[[], Awaitable[object]]


def scale() -> float:
    """`BENCH_SCALE` (default 1.0) multiplies every request count, for quick runs."""
    raw = os.environ.get("BENCH_SCALE", "") or "1.0"
    value = float(raw)
    if not value > 0:
        raise ValueError(f"BENCH_SCALE must be a positive number, not {raw!r}")
    return value


def scaled(count: int, *, minimum: int = 50) -> int:
    return max(minimum, round(count * scale()))


def percentile(ordered: list[int], p: float) -> int:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100), at least 1
    return ordered[int(rank) - 1]


@dataclass(frozen=True, slots=True)
class Result:
    path: str
    concurrency: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


async def run(call: Call, *, requests: int, concurrency: int) -> list[int]:
    """Make `requests` calls from `concurrency` tasks; return each call's latency in ns."""
    latencies: list[int] = []
    remaining = requests
    clock = time.perf_counter_ns

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = clock()
            await call()
            latencies.append(clock() - start)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def measure(path: str, call: Call, *, requests: int, concurrency: int) -> Result:
    gc.collect()  # don't bill one path for the garbage the previous one left
    start = time.perf_counter_ns()
    latencies = await run(call, requests=requests, concurrency=concurrency)
    seconds = (time.perf_counter_ns() - start) / 1e9
    latencies.sort()
    return Result(
        path=path,
        concurrency=concurrency,
        requests=len(latencies),
        seconds=seconds,
        p50_ms=percentile(latencies, 50) / 1e6,
        p99_ms=percentile(latencies, 99) / 1e6,
    )


def progress(text: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(text, file=sys.stderr, flush=True)


def p50_range(
    rounds: list[Result], path: str, concurrency: int | None = None, *, digits: int = 3
) -> str:
    """`min-max ms` of the p50s one path had across rounds."""
    p50s = [
        r.p50_ms
        for r in rounds
        if r.path == path and (concurrency is None or r.concurrency == concurrency)
    ]
    return f"{min(p50s):.{digits}f}-{max(p50s):.{digits}f} ms"
