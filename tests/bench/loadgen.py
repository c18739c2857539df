"""An HTTP load-generator process: `python -m tests.bench.loadgen --port P --out FILE ...`.

Keeps `--concurrency` keep-alive connections busy with POST /gateway/send (wait), or with
`--path` and the JSON `--body` given, from the moment they are open until `--start-at +
--seconds` (Unix time, so that several processes measure the same window), and writes what
completed inside the window to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.bench.http1 import Connection, post

TEXT = "hello from the bench"  # 20 bytes, as in the bus benchmark
SEND_PATH = "/gateway/send"


def send_body(to_agent_id: str = "echo") -> dict[str, Any]:
    return {"to_agent_id": to_agent_id, "wait": True, "content": [{"type": "text", "text": TEXT}]}


@dataclass
class Window:
    """What one load generator saw between `start_at` and `stop_at`."""

    start_at: float
    stop_at: float
    latencies_ns: list[int]
    errors: int = 0
    late: bool = False  # the connections were not open before the window began


async def _check(conn: Connection, raw: bytes, path: str) -> None:
    status, body = await conn.request(raw)
    if status != 200 or (path == SEND_PATH and json.loads(body)["result"]["result"] != TEXT):
        raise RuntimeError(f"unexpected reply {status}: {body[:200]!r}")


async def generate(
    port: int,
    *,
    concurrency: int,
    start_at: float,
    seconds: float,
    path: str = SEND_PATH,
    body: dict[str, Any] | None = None,
) -> Window:
    raw = post(path, port, send_body() if body is None else body)
    conns = [await Connection.open(port) for _ in range(concurrency)]
    await asyncio.gather(*(_check(c, raw, path) for c in conns))
    window = Window(start_at, start_at + seconds, [], late=time.time() > start_at)
    clock, now = time.perf_counter_ns, time.time

    async def worker(conn: Connection) -> None:
        while now() < window.stop_at:
            start = clock()
            status, _ = await conn.request(raw)
            latency = clock() - start
            if window.start_at <= now() < window.stop_at:
                if status == 200:
                    window.latencies_ns.append(latency)
                else:
                    window.errors += 1

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for conn in conns:
            conn.close()
    return window


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.loadgen", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--start-at", type=float, required=True, help="Unix time")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--path", default=SEND_PATH, help=f"default {SEND_PATH}")
    parser.add_argument("--body", type=json.loads, help="a JSON object; default: a send body")
    args = parser.parse_args(argv)
    window = asyncio.run(
        generate(
            args.port,
            concurrency=args.concurrency,
            start_at=args.start_at,
            seconds=args.seconds,
            path=args.path,
            body=args.body,
        )
    )
    args.out.write_text(json.dumps(asdict(window)))


if __name__ == "__main__":
    main()
