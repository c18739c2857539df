"""A WebSocket load-generator process: `python -m tests.bench.ws_clients --url ws://... ...`.

Connects `--count` agents (`<prefix>NNNN`) to the gateway, then each heartbeats at the interval
its `connected` frame names and answers every `message` frame with a `result` echoing its text.
It reports on stdout, one JSON line per step: `connected` (per-connection connect times) once all
are connected, then, after reading `close` on stdin, `closed` (frame counts) once all are closed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

CONNECT_PARALLEL = 32  # handshakes in flight per process
CONNECT_TIMEOUT = 60.0
RETRIES = 5  # after an UNAVAILABLE refusal ("try again")
RETRY_DELAY = 0.5  # seconds, times the attempt number


@dataclass
class Stats:
    connect_ns: list[int] = field(default_factory=list)
    started: float = 0.0  # Unix time of the first connect
    finished: float = 0.0  # Unix time the last `connected` frame arrived
    heartbeats: int = 0
    acks: int = 0
    refused: int = 0  # connect attempts refused with UNAVAILABLE, then retried
    messages: int = 0
    errors: list[str] = field(default_factory=list)


def _emit(event: str, **body: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **body}) + "\n")
    sys.stdout.flush()


def _echo(frame: dict[str, Any]) -> dict[str, Any]:
    text = "".join(p.get("text", "") for p in frame.get("content", []) if p.get("type") == "text")
    return {"type": "result", "message_id": frame["message_id"], "success": True, "result": text}


class WsAgent:
    """One connected agent: a reader that answers messages, and a heartbeat loop."""

    def __init__(self, ws: ClientConnection, interval: float, stats: Stats) -> None:
        self.ws = ws
        self.interval = interval
        self.stats = stats
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._read()), loop.create_task(self._beat())]

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            if kind == "message":
                self.stats.messages += 1
                await self.ws.send(json.dumps(_echo(frame)))
            elif kind == "heartbeat_ack":
                self.stats.acks += 1
            elif kind == "error":
                self.stats.errors.append(f"{frame.get('code')}: {frame.get('message')}")

    async def _beat(self) -> None:
        await asyncio.sleep(random.uniform(0, self.interval))  # spread the beats over a second
        while True:
            await self.ws.send(json.dumps({"type": "heartbeat", "timestamp": time.time()}))
            self.stats.heartbeats += 1
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        self.tasks[1].cancel()
        await self.ws.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def _attempt(url: str, agent_id: str) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(
        f"{url}/gateway/connect?agent_id={agent_id}",
        open_timeout=CONNECT_TIMEOUT,
        ping_interval=None,  # the heartbeat frames are the keep-alive under test
    )
    return ws, json.loads(await ws.recv())


async def _open(url: str, agent_id: str, stats: Stats, gate: asyncio.Semaphore) -> WsAgent:
    """Connect until `connected`; an UNAVAILABLE refusal is retried, as a real agent would."""
    start = time.perf_counter_ns()
    for attempt in range(1, RETRIES + 2):
        async with gate:
            ws, first = await _attempt(url, agent_id)
        if first.get("type") == "connected":
            break
        await ws.close()
        if first.get("code") != "UNAVAILABLE" or attempt > RETRIES:
            raise RuntimeError(f"{agent_id}: expected a connected frame, got {first}")
        stats.refused += 1
        await asyncio.sleep(RETRY_DELAY * attempt)
    stats.connect_ns.append(time.perf_counter_ns() - start)
    agent = WsAgent(ws, float(first["heartbeat_interval"]), stats)
    agent.start()
    return agent


async def hold(url: str, ids: list[str]) -> None:
    stats = Stats(started=time.time())
    gate = asyncio.Semaphore(CONNECT_PARALLEL)
    agents = await asyncio.gather(*(_open(url, i, stats, gate) for i in ids))
    stats.finished = time.time()
    _emit(
        "connected",
        connect_ns=stats.connect_ns,
        started=stats.started,
        ended=stats.finished,
        refused=stats.refused,
    )
    await asyncio.to_thread(sys.stdin.readline)  # "close", or EOF if the bench went away
    await asyncio.gather(*(a.close() for a in agents))
    body = asdict(stats)
    del body["connect_ns"]
    _emit("closed", **body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.ws_clients", description=__doc__)
    parser.add_argument("--url", required=True, help="ws://host:port of the gateway")
    parser.add_argument("--prefix", required=True, help="agent ids are PREFIX0001, PREFIX0002, ...")
    parser.add_argument("--first", type=int, required=True, help="number of the first agent")
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    ids = [f"{args.prefix}{n:04d}" for n in range(args.first, args.first + args.count)]
    asyncio.run(hold(args.url, ids))


if __name__ == "__main__":
    main()
