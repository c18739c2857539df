"""Fixtures for durable tasks: the test's mesh with short task timings, executors to start."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.broker.settings import Settings
from agentmesh.workers.executor import Executor
from tests.gateway.conftest import start_gateway  # noqa: F401 - a fixture, for WebSocket agents

StartExecutor = Callable[..., Awaitable[Executor]]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # A lease of 1 s: a SIGKILLed executor's task is taken over within about a second.
    return settings.with_(task_lease=1.0, task_retry_backoff=0.05, request_timeout=10.0)


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[MeshClient]:
    async with MeshClient.connect(settings, sender_id="tester") as client:
        yield client


@pytest.fixture
async def start_executor(settings: Settings) -> AsyncIterator[StartExecutor]:
    """`await start_executor()` runs an executor on this test's mesh; stopped afterwards."""
    started: list[Executor] = []

    async def start(**kw: object) -> Executor:
        executor = Executor(**kw)  # type: ignore[arg-type]
        await executor.start(settings)
        started.append(executor)
        return executor

    yield start
    for executor in reversed(started):
        await executor.stop()
