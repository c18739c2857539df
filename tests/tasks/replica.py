"""A task-taking agent run as its own process by the fault tests
(`agentmesh agent run tests.tasks.replica:agent`).

Its first attempt at "block" tells the test's `probe` agent (with its instance id) and then
works forever, so the test can kill it mid-task; any later attempt, or other text, answers
`<instance id>:<text>:<attempt>` at once.
"""

from __future__ import annotations

import asyncio

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message

agent = Agent("replica", name="Replica")


@agent.handler
async def handle(msg: Message, ctx: Context) -> str:
    attempt = ctx.task.attempt if ctx.task else 0
    if msg.text == "block" and attempt == 1:
        await ctx.ask("probe", ctx.instance_id)
        await asyncio.Event().wait()
    return f"{ctx.instance_id}:{msg.text}:{attempt}"
