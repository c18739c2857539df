"""The handler context: who is calling, and a client to ask other agents (delegation)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from agentmesh.agents.client import MeshClient
from agentmesh.agents.llm import LLM
from agentmesh.agents.tools import Tools
from agentmesh.broker.types import Request
from agentmesh.schemas.envelope import Chunk, Message


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
