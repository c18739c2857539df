"""`Agent`: serve a handler under an agent id, with presence, replicas and graceful drain.

agent = Agent("researcher", name="Research Agent", capabilities=["search"])

@agent.handler
async def handle(msg, ctx):          # return a value, or be an async generator to stream
    return f"got: {msg.text}"

agent.run()                          # or `await agent.serve()`, or `async with agent:`
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.lifecycle import MeshService
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import validate_id
from agentmesh.broker.types import Request
from agentmesh.schemas.agent import AgentCard, Owner
from agentmesh.schemas.codec import decode, encode, encode_message
from agentmesh.schemas.envelope import Chunk, Message, merge_text, to_parts
from agentmesh.schemas.service import Serves, ServiceKind

logger = logging.getLogger(__name__)

HandlerFn = Callable[[Message, Context], Any]


class Agent(MeshService):
    """An agent of the mesh. Every process that serves the same id is a replica of it.

    Args:
        agent_id: the agent's id; 1-128 letters, digits, `_` or `-`.
        name, capabilities, description, agent_type, version, owner, metadata: the Agent Card.
        max_concurrency: handler calls at once in this process (default from settings).
    """

    kind = ServiceKind.AGENT

    def __init__(
        self,
        agent_id: str,
        *,
        name: str | None = None,
        capabilities: list[str] | None = None,
        description: str | None = None,
        agent_type: str | None = None,
        version: str | None = None,
        owner: Owner | dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        max_concurrency: int | None = None,
    ) -> None:
        super().__init__(validate_id(agent_id))
        self._card = AgentCard(
            agent_id=agent_id,
            agent_name=name or agent_id,
            capabilities=list(capabilities or []),
            description=description,
            agent_type=agent_type,
            version=version,
            owner=Owner.model_validate(owner) if isinstance(owner, dict) else owner,
            metadata=dict(metadata or {}),
        )
        self.max_concurrency = max_concurrency
        self._handler: HandlerFn | None = None
        self._mesh: MeshClient | None = None

    @property
    def agent_id(self) -> str:
        return self.service_id

    @property
    def mesh(self) -> MeshClient:
        """A client that speaks as this agent (available while it runs)."""
        if self._mesh is None:
            raise RuntimeError("the agent is not running")
        return self._mesh

    def handler(self, fn: HandlerFn) -> HandlerFn:
        """Register the message handler: `async def fn(msg, ctx)` returning a value, or an
        async generator yielding chunks. Plain functions work too."""
        self._handler = fn
        return fn

    # Lifecycle (MeshService) ---------------------------------------------------------------
    def card(self) -> AgentCard:
        return self._card

    def serves(self) -> Serves:
        kind = self._card.agent_type
        return Serves(agents=[self.agent_id], agent_types=[kind] if kind else [])

    async def start(self, settings: Settings | None = None) -> None:
        """Connect, serve the agent's subject and announce presence; returns when online."""
        if self._handler is None:
            raise RuntimeError(
                f"agent {self.agent_id!r} has no handler: decorate one with @agent.handler"
            )
        await super().start(settings)
        logger.info("agent %s online (instance %s)", self.agent_id, self.instance_id)

    async def on_start(self) -> None:
        bus = self.bus
        self._mesh = MeshClient(bus, sender_id=self.agent_id)
        await bus.serve(
            bus.subjects.agent(self.agent_id),
            self._handle,
            queue=bus.subjects.agent_queue(self.agent_id),
            max_concurrency=self.max_concurrency,
        )

    async def stop(self) -> None:
        """Leave presence, finish the calls in flight, close connections."""
        if not self.running:
            return
        await super().stop()
        logger.info("agent %s stopped", self.agent_id)

    async def on_stop(self) -> None:
        await self.bus.close()  # drain first: handlers in flight may still use self.mesh
        if self._mesh is not None:
            await self._mesh.close()
            self._mesh = None

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    # Handling ------------------------------------------------------------------------------
    async def _handle(self, request: Request) -> bytes | AsyncIterator[bytes]:
        msg = decode(request.data, Message)
        assert self._handler is not None and self._mesh is not None
        ctx = Context(
            agent_id=self.agent_id,
            instance_id=request.instance_id,
            message=msg,
            request=request,
            mesh=self._mesh,
        )
        fn = self._handler
        if inspect.isasyncgenfunction(fn):
            chunks = fn(msg, ctx)
            if request.stream:
                return _encode_chunks(chunks)
            parts: list[Any] = []
            async for item in chunks:
                parts.extend(to_parts(item))
            return self._reply(msg, merge_text(parts))
        value = fn(msg, ctx)
        if inspect.isawaitable(value):
            value = await value
        return self._reply(msg, value)

    def _reply(self, msg: Message, value: Any) -> bytes:
        if isinstance(value, Message):
            return encode(
                value.model_copy(
                    update={
                        "from_agent_id": value.from_agent_id or self.agent_id,
                        "to_agent_id": value.to_agent_id or msg.from_agent_id,
                        "conversation_id": value.conversation_id or msg.conversation_id,
                    }
                )
            )
        return encode_message(
            value,
            from_agent_id=self.agent_id,
            to_agent_id=msg.from_agent_id,
            conversation_id=msg.conversation_id,
        )


async def _encode_chunks(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for item in chunks:
        yield encode(item if isinstance(item, Chunk) else Chunk(content=to_parts(item)))
