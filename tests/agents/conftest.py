"""Fixtures for agent tests: a caller connected to this test's mesh, and agents that stop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agents.agent import Agent
from agents.client import MeshClient
from broker.settings import Settings

StartAgent = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[MeshClient]:
    async with MeshClient.connect(settings, sender_id="tester") as client:
        yield client


@pytest.fixture
async def start_agent(settings: Settings) -> AsyncIterator[StartAgent]:
    """`await start_agent(agent)` starts it on this test's mesh; it is stopped afterwards."""
    started: list[Agent] = []

    async def start(agent: Agent, *, settings_: Settings | None = None) -> Agent:
        await agent.start(settings_ or settings)
        started.append(agent)
        return agent

    yield start
    for agent in reversed(started):
        await agent.stop()
