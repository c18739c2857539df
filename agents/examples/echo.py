"""The demo `echo` agent: replies with what it was sent; streams it word by word if asked."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message

agent = Agent(
    "echo",
    name="Echo Agent",
    capabilities=["echo"],
    agent_type="demo",
    description="Replies with the message it receives.",
    version="1.0.0",
)


@agent.handler
async def handle(msg: Message, ctx: Context) -> AsyncIterator[str]:
    if not ctx.streaming:
        yield msg.text if msg.text else (msg.data if msg.data is not None else "")
        return
    words = msg.text.split(" ")
    for i, word in enumerate(words):
        yield word if i == len(words) - 1 else word + " "


if __name__ == "__main__":
    agent.run()
