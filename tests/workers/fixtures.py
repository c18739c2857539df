"""Fixtures (a plugin of the root conftest): LLM workers on this test's mesh, fake upstreams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from agentmesh.broker.settings import Settings
from agentmesh.workers.llm.config import LLMConfig
from agentmesh.workers.llm.worker import LLMWorker
from tests.workers.fake_upstreams import FakeOpenAI

StartWorker = Callable[[dict[str, Any]], Awaitable[LLMWorker]]


@pytest.fixture
async def start_worker(settings: Settings) -> AsyncIterator[StartWorker]:
    """`await start_worker({"models": [...]})` runs an LLM worker; stopped afterwards."""
    running: list[LLMWorker] = []

    async def start(raw: dict[str, Any]) -> LLMWorker:
        worker = LLMWorker(LLMConfig.parse(raw))
        await worker.start(settings)
        running.append(worker)
        return worker

    yield start
    for worker in reversed(running):
        await worker.stop()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    fake = await FakeOpenAI().start()
    yield fake
    await fake.stop()
