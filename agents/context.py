"""The handler context: who is calling, and a client to ask other agents (delegation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agentmesh.agents.client import MeshClient
from agentmesh.agents.llm import LLM
from agentmesh.agents.tools import Tools
from agentmesh.broker.types import H_TASK_ATTEMPT, H_TASK_ID, H_TRACE_ID, Request
from agentmesh.schemas.envelope import Chunk, Message
from agentmesh.schemas.task import TaskEvent, TaskEventKind, TaskInfo


class Context:
    """Passed to a handler with each message.

    `ask` and `stream` delegate to other agents: the message goes out from this agent and stays
    in the caller's conversation. A cancelled call cancels the handler's task (a
    `CancelledError` is raised at its next `await`); `cancelled` tells whether that happened.
    """

    def __init__(
        self,
        *,
        agent_id: str,
        instance_id: str,
        message: Message,
        request: Request,
        mesh: MeshClient,
    ) -> None:
        self.agent_id = agent_id
        self.instance_id = instance_id
        self.message = message
        self.request = request
        self.mesh = mesh

    @property
    def conversation_id(self) -> str | None:
        return self.message.conversation_id

    @property
    def sender(self) -> str | None:
        return self.message.from_agent_id

    @property
    def streaming(self) -> bool:
        """Whether the caller asked for a stream (an async-generator handler streams then)."""
        return self.request.stream

    @property
    def cancelled(self) -> bool:
        """Whether this call was cancelled (read it from within the handler)."""
        task = asyncio.current_task()
        return task is not None and task.cancelling() > 0

    @property
    def task(self) -> TaskInfo | None:
        """The durable task this call runs (id, attempt, trace), or None for a plain call."""
        hdrs = self.request.headers
        task_id = hdrs.get(H_TASK_ID)
        if not task_id:
            return None
        try:
            attempt = int(hdrs.get(H_TASK_ATTEMPT, "1"))
        except ValueError:
            attempt = 1
        return TaskInfo(task_id=task_id, attempt=attempt, trace_id=hdrs.get(H_TRACE_ID))

    async def progress(self, note: str | None = None, data: Any = None) -> None:
        """Add a progress event to the task this call runs (nothing outside a task).

        Raises:
            Unavailable: JetStream cannot be reached.
        """
        task = self.task
        if task is None:
            return
        event = TaskEvent(
            task_id=task.task_id,
            kind=TaskEventKind.PROGRESS,
            attempt=task.attempt,
            note=note,
            data=data,
        )
        await self.mesh.tasks.store.append_event(event)

    @property
    def tools(self) -> Tools:
        """MCP tools: `await ctx.tools.call("time", "get_current_time", {"timezone": "UTC"})`."""
        return self.mesh.tools

    def llm(self, alias: str) -> LLM:
        """A model alias: `await ctx.llm("gpt-4.1-mini").chat(messages, stream=...)`."""
        return self.mesh.llm(alias)

    async def ask(self, agent_id: str, content: Any, **kw: Any) -> Message:
        kw.setdefault("conversation_id", self.conversation_id)
        return await self.mesh.ask(agent_id, content, **kw)

    async def stream(self, agent_id: str, content: Any, **kw: Any) -> AsyncIterator[Chunk]:
        kw.setdefault("conversation_id", self.conversation_id)
        async for chunk in self.mesh.stream(agent_id, content, **kw):
            yield chunk
