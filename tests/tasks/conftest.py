"""Fixtures for durable tasks: the test's mesh with short task timings, agents and workers run as
processes of their own (`spawn`); `start_executor` is in tests/conftest.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.broker.settings import Settings
from tests.conftest import StartExecutor, start_executor  # noqa: F401 - re-exported
from tests.gateway.conftest import start_gateway  # noqa: F401 - a fixture, for WebSocket agents
from tests.waiting import until


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease of 1 s: a SIGKILLed executor's task is taken over within about a second.
    return settings.with_(task_lease=1.0, task_retry_backoff=0.05, request_timeout=10.0)


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[MeshClient]:
    async with MeshClient.connect(settings, sender_id="tester") as client:
        yield client


AGENTMESH = str(Path(sys.executable).parent / "agentmesh")

Spawn = Callable[..., "asyncio.Future[asyncio.subprocess.Process]"]


@pytest.fixture
async def spawn(task_env: dict[str, str]) -> AsyncIterator[Callable[..., object]]:
    """`await spawn("worker", "executor")` runs `agentmesh <args>` on this test's mesh."""
    procs: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            AGENTMESH,
            *args,
            env=task_env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def online(mesh: MeshClient, kind: str, count: int) -> list[object]:
    """Wait until `count` instances of `kind` are in the registry (each announces at start)."""

    async def enough() -> list[object] | None:
        found = await mesh.services(kind)
        return found if len(found) >= count else None

    # Another process's start-up: nothing to wait on here.
    return await until(enough, timeout=20, what=f"{count} {kind} instance(s) in the registry")
