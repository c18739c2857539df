"""A tiny agent for `agentmesh agent run tests.agentmesh.sample_agent:agent` in the CLI tests."""

from __future__ import annotations

from agents.agent import Agent
from agents.context import Context
from schemas.envelope import Message

agent = Agent("sample", name="Sample Agent", capabilities=["sample"])


@agent.handler
async def handle(msg: Message, ctx: Context) -> str:
    return f"sample: {msg.text}"
