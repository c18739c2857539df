"""Fixtures for the channel tests: gateway replicas (the channels are theirs) and an agent that
answers."""

from __future__ import annotations

import pytest

from agentmesh.agents.agent import Agent
from agentmesh.schemas.envelope import Message
from tests.conftest import StartAgent, StartExecutor
from tests.gateway.conftest import start_gateway  # noqa: F401 - a fixture


@pytest.fixture
async def helper(start_agent: StartAgent, start_executor: StartExecutor) -> list[Message]:
    """Agent `helper` (and an executor): it answers `helper: <text>`; the messages it got."""
    got: list[Message] = []
    agent = Agent("helper")

    @agent.handler
    def handle(msg: Message, ctx: object) -> str:
        got.append(msg)
        return f"helper: {msg.text}"

    await start_agent(agent)
    await start_executor()
    return got
