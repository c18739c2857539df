"""The agent of the tasks benchmark, run as a process (`agentmesh agent run
tests.bench.task_agent:agent`): it echoes the text and says when its handler started.

`started_ns` is `time.monotonic_ns()`, CLOCK_MONOTONIC, which every process of the machine
shares, so the bench can subtract its own submit time from it.
"""

from __future__ import annotations

import time

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message

AGENT_ID = "bench-task-echo"

agent = Agent(AGENT_ID, description="Echoes the text of a task and stamps its start.")


@agent.handler
async def handle(msg: Message, ctx: Context) -> dict[str, object]:
    started = time.monotonic_ns()  # first: the handler starts here
    return {"text": msg.text, "started_ns": started}
