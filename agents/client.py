"""`MeshClient`: how a program outside any agent calls agents and reads presence."""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import redis.asyncio as aioredis

from agentmesh.agents.llm import LLM
from agentmesh.agents.tasks import Tasks, Traces
from agentmesh.agents.tools import Tools
from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.registry import Registry
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import validate_id
from agentmesh.broker.types import Kind
from agentmesh.schemas.agent import Presence
from agentmesh.schemas.codec import decode, encode, encode_message
from agentmesh.schemas.envelope import Chunk, Message
from agentmesh.schemas.errors import AgentNotFound, NoResponders
from agentmesh.schemas.service import InvalidRecord, ServiceRecord


def encode_request(
    content: Any,
    *,
    sender: str | None,
    target: str,
    conversation_id: str | None,
    metadata: dict[str, Any] | None,
) -> bytes:
    """The request body for `content`: text, data, parts, or a whole `Message`."""
    if isinstance(content, Message):
        updates: dict[str, Any] = {"to_agent_id": target}
        if content.from_agent_id is None:
            updates["from_agent_id"] = sender
        if conversation_id is not None:
            updates["conversation_id"] = conversation_id
        return encode(content.model_copy(update=updates))
    return encode_message(
        content,
        from_agent_id=sender,
        to_agent_id=target,
        conversation_id=conversation_id,
        metadata=metadata,
    )


class MeshClient:
    """Calls agents over the bus. Open with `async with MeshClient.connect() as mesh:`.

    Args:
        bus: a connected `Bus`.
        sender_id: the `from_agent_id` put on messages (an agent's own id when it delegates).
    """

    def __init__(self, bus: Bus, *, sender_id: str | None = None, owns_bus: bool = False) -> None:
        self.bus = bus
        self.settings = bus.settings
        self.sender_id = sender_id
        self._owns_bus = owns_bus
        self._redis: aioredis.Redis | None = None
        self._registry: Registry | None = None
        self._tasks: Tasks | None = None
        self._traces: Traces | None = None

    @classmethod
    def connect(cls, settings: Settings | None = None, *, sender_id: str | None = None) -> _Connect:
        """Connect to the mesh; use as `async with` or `await`. Raises `ConnectionFailed`."""
        return _Connect(settings, sender_id)

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self._owns_bus:
            await self.bus.close()

    async def __aenter__(self) -> MeshClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Calls ---------------------------------------------------------------------------------
    async def ask(
        self,
        agent_id: str,
        content: Any,
        *,
        conversation_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Message:
        """Send `content` (text, data, parts or a `Message`) to an agent; return its reply.

        Raises:
            InvalidId: `agent_id` cannot be a subject token.
            AgentNotFound: no instance of the agent is online.
            MeshTimeout: no reply within `timeout` (default `Settings.request_timeout`).
            MeshError: whatever error the agent replied with.
        """
        subject, body = self._outgoing(agent_id, content, conversation_id, metadata)
        with calling_agent(agent_id):
            frame = await self.bus.request(subject, body, timeout=timeout)
        return decode(frame.data, Message)

    async def stream(
        self,
        agent_id: str,
        content: Any,
        *,
        conversation_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Chunk]:
        """Send `content` and yield the reply's chunks as they arrive.

        An agent that answers with one value (not a stream) yields it as a single chunk.
        Stopping the iteration early cancels the call at the agent.
        """
        subject, body = self._outgoing(agent_id, content, conversation_id, metadata)
        with calling_agent(agent_id):
            async with aclosing(self.bus.stream(subject, body, timeout=timeout)) as frames:
                async for frame in frames:
                    if frame.kind is Kind.CHUNK:
                        yield decode(frame.data, Chunk)
                    elif frame.data:  # a plain reply to a streaming caller
                        reply = decode(frame.data, Message)
                        yield Chunk(content=reply.content, metadata=reply.metadata)

    def _outgoing(
        self,
        agent_id: str,
        content: Any,
        conversation_id: str | None,
        metadata: dict[str, Any] | None,
    ) -> tuple[str, bytes]:
        subject = self.bus.subjects.agent(agent_id)  # validates the id before anything is sent
        body = encode_request(
            content,
            sender=self.sender_id,
            target=agent_id,
            conversation_id=conversation_id,
            metadata=metadata,
        )
        return subject, body

    @property
    def tools(self) -> Tools:
        """MCP tools served by tool workers: `await mesh.tools.call("time", "get_current_time")`."""
        return Tools(self.bus, self.registry)

    @property
    def tasks(self) -> Tasks:
        """Durable tasks: `ref = await mesh.tasks.submit("analyst", "Analyse the sales")`."""
        if self._tasks is None:
            self._tasks = Tasks(self.bus, self.sender_id)
        return self._tasks

    @property
    def traces(self) -> Traces:
        """Traces (groups of tasks): `trace = await mesh.traces.create("user_001")`."""
        if self._traces is None:
            self._traces = Traces(self.bus)
        return self._traces

    def llm(self, alias: str) -> LLM:
        """A model alias served by LLM workers: `await mesh.llm("gpt-4.1-mini").chat(msgs)`."""
        return LLM(self.bus, alias)

    # Presence ------------------------------------------------------------------------------
    async def redis(self) -> aioredis.Redis:
        """The mesh's Redis (presence, catalogs), connected on first use."""
        if self._redis is None:
            self._redis = await connect_redis(self.settings)
        return self._redis

    async def registry(self) -> Registry:
        """The mesh's service registry (every instance of every kind)."""
        if self._registry is None:
            self._registry = Registry(
                await self.redis(), self.bus.subjects, timeout=self.settings.heartbeat_timeout
            )
        return self._registry

    async def agents(self) -> list[Presence]:
        """The agents online now, with their cards and instances."""
        return await (await self.registry()).agents()

    async def services(self, kind: str | None = None) -> list[ServiceRecord | InvalidRecord]:
        """Every live service instance of the mesh (or of one kind), invalid records included."""
        return await (await self.registry()).instances(kind)

    async def agent(self, agent_id: str) -> Presence | None:
        return await (await self.registry()).agent(validate_id(agent_id))


def not_online(agent_id: str) -> AgentNotFound:
    """The error for an agent that no instance serves now."""
    return AgentNotFound(f"agent '{agent_id}' is not online", details={"agent_id": agent_id})


@contextmanager
def calling_agent(agent_id: str) -> Iterator[None]:
    """Around a bus call to an agent: the bus's `NoResponders` means the agent is not online."""
    try:
        yield
    except NoResponders:
        raise not_online(agent_id) from None


class _Connect:
    """`MeshClient.connect(...)`: awaitable, and an async context manager that closes."""

    def __init__(self, settings: Settings | None, sender_id: str | None) -> None:
        self.settings = settings
        self.sender_id = sender_id
        self.client: MeshClient | None = None

    async def _open(self) -> MeshClient:
        bus = await Bus.connect(self.settings or Settings.from_env(), name="agentmesh-client")
        self.client = MeshClient(bus, sender_id=self.sender_id, owns_bus=True)
        return self.client

    def __await__(self) -> Generator[Any, None, MeshClient]:
        return self._open().__await__()

    async def __aenter__(self) -> MeshClient:
        return await self._open()

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.close()
