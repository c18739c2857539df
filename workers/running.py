"""Running a worker as a process: start it, stop it on SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from typing import Protocol

from agentmesh.broker.settings import Settings


class Worker(Protocol):
    async def start(self, settings: Settings | None = None) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signal(worker: Worker, settings: Settings | None = None) -> None:
    """Start `worker`, then return once a signal has stopped it."""
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    async def stop() -> None:
        try:
            await worker.stop()
        finally:
            stopped.set()

    await worker.start(settings)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: loop.create_task(stop()))
    try:
        await stopped.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
