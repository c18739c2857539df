"""A tiny agent for `agentmesh agent run tests.agentmesh.sample_agent:agent` in the CLI tests."""

from __future__ import annotations

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message

agent = Agent("sample", name="Sample Agent", capabilities=["sample"])


@agent.handler
async def handle(msg: Message, ctx: Context) -> str:
    return f"sample: {msg.text}"
