"""`A2ABridge` (`agentmesh worker a2a`): outside A2A agents served as mesh agents.

Each outside agent of the section is a served subject of the bridge's one connection, with a
registry record of its own (kind `agent`, `via: "a2a"`, its card from the agent's A2A card), so
mesh agents, the runtime's `delegate`, tasks, the gateway's APIs and A2A clients all reach it.
Start N bridges with the same section: each agent's subject is a queue group, so they share the
load.

A mesh call becomes `SendMessage` (a plain call, or a durable task's: its reply may ask for
input) or `SendStreamingMessage` (a stream). The mesh `conversation_id` is the A2A `contextId`:
a durable task without one is its own context, any other call without one gets a new context,
which the reply names as its conversation. A cancelled call cancels the remote task. An agent
whose card cannot be read is not served (callers get AGENT_NOT_FOUND) and is tried again,
backing off to `retry_max`; the bridge itself keeps running.

`input-required`: the reply is the agent's question (`metadata.task_state`, `a2a_task_id`), and
the context's next message continues that task (`PendingTasks`, in this process; a message that
names `metadata.a2a_task_id` continues it on any bridge). A named task the agent no longer has,
or has finished, gives way to a new task in the same context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from agentmesh.broker.announcer import Announcer
from agentmesh.broker.lifecycle import MeshService, agent_record
from agentmesh.broker.registry import Registry
from agentmesh.broker.service import Service
from agentmesh.broker.types import H_TASK_ID, Request
from agentmesh.schemas.agent import AgentCard
from agentmesh.schemas.codec import decode, encode
from agentmesh.schemas.envelope import Message, new_id
from agentmesh.schemas.errors import MeshError, NotFound, RemoteError
from agentmesh.schemas.service import Serves, ServiceKind, ServiceRecord
from agentmesh.schemas.task import TASK_STATE
from agentmesh.workers.a2a.cards import VIA, mesh_card
from agentmesh.workers.a2a.config import A2ASection, OutsideAgent
from agentmesh.workers.a2a.pending import PendingTasks
from agentmesh.workers.a2a.remote import CANCEL_TIMEOUT, Remote
from agentmesh.workers.a2a.replies import INPUT_REQUIRED, TASK_ID, Answer

logger = logging.getLogger(__name__)

RETRY_FIRST = 1.0  # seconds before the second try to read a card; doubles up to retry_max
START_WAIT = 10.0  # seconds start() waits for the first try of every agent
# A continued task the outside agent no longer has (or has finished): a new task instead.
_STALE = frozenset({"TaskNotFoundError", "UnsupportedOperationError"})


@dataclass(slots=True)
class _Hosted:
    config: OutsideAgent
    remote: Remote
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started_at: float = field(default_factory=time.time)
    card: AgentCard | None = None  # the mesh card, once the agent's card was read
    service: Service | None = None
    announcer: Announcer | None = None
    opener: asyncio.Task[None] | None = None
    tried: asyncio.Event = field(default_factory=asyncio.Event)
    error: str | None = None  # why it is not served (yet)
    pending: PendingTasks = field(default_factory=PendingTasks)


class A2ABridge(MeshService):
    """Args:
    section: the outside agents (a mesh file's `a2a:` section, or one from the command line).
    name: the bridge's service name in the registry.
    retry_first: seconds before the second try to read an unreachable agent's card.
    """

    kind = ServiceKind.A2A_BRIDGE

    def __init__(
        self, section: A2ASection, name: str = "a2a", *, retry_first: float = RETRY_FIRST
    ) -> None:
        super().__init__(name)
        self.section = section
        self.retry_first = retry_first
        self.hosted: dict[str, _Hosted] = {}
        self._registry: Registry | None = None

    # Lifecycle -------------------------------------------------------------------------------
    def serves(self) -> Serves:
        served = sorted(a for a, h in self.hosted.items() if h.service is not None)
        return Serves(hosts=served)  # type: ignore[call-arg]

    def detail(self) -> dict[str, Any]:
        return {
            "agents": {
                agent_id: {"url": h.config.url, "served": h.service is not None, "error": h.error}
                for agent_id, h in self.hosted.items()
            }
        }

    async def on_start(self) -> None:
        assert self.settings is not None
        self._registry = Registry(
            self.redis, self.bus.subjects, timeout=self.settings.heartbeat_timeout
        )
        for config in self.section.agents:
            self._add(config)
        tried = [asyncio.ensure_future(h.tried.wait()) for h in self.hosted.values()]
        if tried:  # most agents are up when start() returns; the others keep being tried
            _, waiting = await asyncio.wait(tried, timeout=START_WAIT)
            for future in waiting:
                future.cancel()

    async def apply(self, section: A2ASection) -> None:
        """Serve a new version of the section: added agents, removed ones, changed ones anew."""
        wanted = {a.agent_id: a for a in section.agents}
        for agent_id, hosted in list(self.hosted.items()):
            if wanted.get(agent_id) != hosted.config:
                await self._remove(agent_id)
        for agent_id, config in wanted.items():
            if agent_id not in self.hosted:
                self._add(config)
        self.section = section
        self.announce_now()

    async def on_stop(self) -> None:
        for agent_id in list(self.hosted):
            hosted = self.hosted[agent_id]
            await self._withdraw(hosted)
            if hosted.service is not None:
                await hosted.service.unsubscribe()  # the calls in flight go on
        await self.bus.close()  # they finish (or are cancelled: their remote tasks too)
        cancels = [t for h in self.hosted.values() for t in h.remote.pending_cancels]
        if cancels:
            await asyncio.wait(cancels, timeout=CANCEL_TIMEOUT)
        for hosted in self.hosted.values():
            await hosted.remote.close()
        self.hosted.clear()

    # Agents ----------------------------------------------------------------------------------
    def _add(self, config: OutsideAgent) -> None:
        hosted = _Hosted(config, Remote(config))
        self.hosted[config.agent_id] = hosted
        hosted.opener = asyncio.get_running_loop().create_task(self._open(hosted))

    async def _open(self, hosted: _Hosted) -> None:
        """Read the agent's card and serve the agent; until that works, try again (backing off).
        The top loop of the agent's start: any failure is logged and tried again."""
        config, wait = hosted.config, self.retry_first
        while True:
            try:
                card = await hosted.remote.open()
                hosted.card = mesh_card(config.agent_id, card, url=config.url)
                await self._serve(hosted)
                hosted.error = None
                return
            except MeshError as exc:
                hosted.error = exc.message
            except (RedisError, OSError) as exc:
                hosted.error = f"the registry cannot be reached ({exc})"
            except Exception as exc:  # noqa: BLE001 - logged with its traceback; tried again
                logger.exception("outside agent %s: serving it failed", config.agent_id)
                hosted.error = f"{type(exc).__name__}: {exc}"
            finally:
                hosted.tried.set()
            logger.warning(
                "outside agent %s (%s) is not served: %s; trying again in %gs",
                config.agent_id,
                config.url,
                hosted.error,
                wait,
            )
            await asyncio.sleep(wait)
            wait = min(wait * 2, self.section.retry_max)

    async def _serve(self, hosted: _Hosted) -> None:
        bus = self.bus
        assert self.settings is not None and self._registry is not None
        agent_id = hosted.config.agent_id
        hosted.service = await bus.serve(
            bus.subjects.agent(agent_id),
            self._handler(hosted),
            queue=bus.subjects.agent_queue(agent_id),
        )
        announcer = Announcer(
            self._registry,
            bus,
            lambda: self._record(hosted),
            interval=self.settings.heartbeat_interval,
        )
        try:
            await announcer.start()
        except BaseException:
            service, hosted.service = hosted.service, None
            await service.stop()
            raise
        hosted.announcer = announcer
        self.announce_now()
        logger.info("serving outside agent %s (%s)", agent_id, hosted.config.url)

    async def _withdraw(self, hosted: _Hosted) -> None:
        if hosted.opener is not None and not hosted.opener.done():
            hosted.opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hosted.opener
        if hosted.announcer is not None:
            await hosted.announcer.stop()  # offline now

    async def _remove(self, agent_id: str) -> None:
        hosted = self.hosted.pop(agent_id)
        await self._withdraw(hosted)
        if hosted.service is not None:
            await hosted.service.stop()
        if hosted.remote.pending_cancels:
            await asyncio.wait(hosted.remote.pending_cancels, timeout=CANCEL_TIMEOUT)
        await hosted.remote.close()
        logger.info("stopped serving outside agent %s", agent_id)

    def _record(self, hosted: _Hosted) -> ServiceRecord:
        assert hosted.card is not None
        return agent_record(
            hosted.card,
            instance_id=hosted.instance_id,
            started_at=hosted.started_at,
            via=VIA,
            service=hosted.service,
            detail={"a2a_bridge": self.instance_id, "url": hosted.config.url},
        )

    # Calls -----------------------------------------------------------------------------------
    def _handler(self, hosted: _Hosted):  # noqa: ANN202 - a broker Handler
        async def handle(request: Request) -> bytes | AsyncIterator[bytes]:
            msg = decode(request.data, Message)
            # The A2A context: the conversation; a durable task without one is its own (its
            # turns share it); else a new one, which the reply names as its conversation.
            context_id = msg.conversation_id or request.headers.get(H_TASK_ID) or new_id("ctx")
            given = msg.metadata.get(TASK_ID)
            task_id = given if isinstance(given, str) and given else hosted.pending.get(context_id)
            # A stream's closing chunk carries the reply's metadata (`input-required`): the
            # executor, which always streams, merges it into the task's result.
            if request.stream:
                return self._streamed(hosted, msg, context_id, task_id)
            answer = await self._send(hosted, msg, context_id, task_id)
            _note(hosted, context_id, answer.metadata)
            return encode(_reply(hosted, msg, answer, msg.conversation_id or context_id))

        return handle

    async def _send(
        self, hosted: _Hosted, msg: Message, context_id: str, task_id: str | None
    ) -> Answer:
        try:
            return await hosted.remote.send(msg, context_id=context_id, task_id=task_id)
        except (NotFound, RemoteError) as exc:
            if not task_id or not _stale(exc):
                raise
            _forget(hosted, context_id, task_id, exc)
        return await hosted.remote.send(msg, context_id=context_id, task_id=None)

    async def _streamed(
        self, hosted: _Hosted, msg: Message, context_id: str, task_id: str | None
    ) -> AsyncIterator[bytes]:
        for attempt in (task_id, None) if task_id else (None,):
            started = False
            try:
                async for chunk in hosted.remote.stream(
                    msg, context_id=context_id, task_id=attempt
                ):
                    started = True
                    if chunk.metadata:
                        _note(hosted, context_id, chunk.metadata)
                    yield encode(chunk)
                return
            except (NotFound, RemoteError) as exc:
                if started or attempt is None or not _stale(exc):
                    raise
                _forget(hosted, context_id, attempt, exc)


def _stale(exc: MeshError) -> bool:
    return exc.details.get("a2a_error") in _STALE


def _forget(hosted: _Hosted, key: str, task_id: str, exc: MeshError) -> None:
    logger.info(
        "outside agent %s: task %s cannot be continued (%s); a new task instead",
        hosted.config.agent_id,
        task_id,
        exc.message,
    )
    hosted.pending.pop(key)


def _note(hosted: _Hosted, conversation: str, metadata: dict[str, Any]) -> None:
    """Remember a question's task for the conversation's next message (forget an answered one)."""
    task_id = metadata.get(TASK_ID)
    if metadata.get(TASK_STATE) == INPUT_REQUIRED and isinstance(task_id, str):
        hosted.pending.put(conversation, task_id)
    elif task_id is not None:
        hosted.pending.pop(conversation)


def _reply(hosted: _Hosted, msg: Message, answer: Answer, conversation: str) -> Message:
    return Message(
        content=answer.content,
        from_agent_id=hosted.config.agent_id,
        to_agent_id=msg.from_agent_id,
        conversation_id=conversation,
        metadata=answer.metadata,
    )
