"""A replica run as its own process by the fault tests (`agentmesh agent run ...:agent`).

Asked "block", it tells the test's `probe` agent it has started, then works forever.
"""

from __future__ import annotations

import asyncio

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message

agent = Agent("replica", name="Replica")


@agent.handler
async def handle(msg: Message, ctx: Context) -> str:
    if msg.text == "block":
        await ctx.ask("probe", ctx.instance_id)
        await asyncio.Event().wait()
    return f"{ctx.instance_id}:{msg.text}"
