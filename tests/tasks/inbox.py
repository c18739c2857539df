"""Two builds of the agent `inbox`, run as processes of their own by tests/tasks/test_accepted.py
(`agentmesh agent run tests.tasks.inbox:holder`, `...:taker`).

`holder` takes every message and never answers, so the test can SIGKILL it holding them all;
`taker` answers `<instance id>:<conversation id>` at once.
"""

from __future__ import annotations

import asyncio

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message

holder = Agent("inbox", name="Inbox")
taker = Agent("inbox", name="Inbox")


@holder.handler
async def hold(msg: Message, ctx: Context) -> str:
    await asyncio.Event().wait()
    return "never"


@taker.handler
async def take(msg: Message, ctx: Context) -> str:
    return f"{ctx.instance_id}:{msg.conversation_id}"
