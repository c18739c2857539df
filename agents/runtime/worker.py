"""`RuntimeWorker` (`agentmesh worker runtime`): serves every saved agent as a mesh agent, and
ad-hoc inferences (`/v1/infer`, sub-agents) on `<p>.runtime.infer`. Start N of them: each
saved agent's subject is a queue group, so they share the load, and any of them continues any
session (sessions are in JetStream).

One connection per worker, whatever the number of agents: each saved agent is a served subject
of the worker's bus with a registry record of its own (kind `agent`, `via: "runtime"`), so it
has presence and a card like any agent. Definitions are re-read when `<p>.runtime.changed`
says so and every `poll` seconds; an update applies to the next call, a delete deregisters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime.builtins import Fences
from agentmesh.agents.runtime.config import RuntimeSection, load_functions
from agentmesh.agents.runtime.delegation import EVENT_KEY
from agentmesh.agents.runtime.lineage import METADATA_KEY, Lineage
from agentmesh.agents.runtime.registry import ToolRegistry
from agentmesh.agents.runtime.runtime import Runtime
from agentmesh.agents.runtime.skills import SkillManager, parse_skill, tool_name
from agentmesh.broker.announcer import Announcer
from agentmesh.broker.definitions import Definitions, SkillRecord, unzip_into
from agentmesh.broker.durable import DurableState
from agentmesh.broker.lifecycle import MeshService, agent_record
from agentmesh.broker.registry import Registry
from agentmesh.broker.service import Service
from agentmesh.broker.types import Request
from agentmesh.schemas.agent import AgentCard
from agentmesh.schemas.codec import decode, encode, encode_message, pack, unpack
from agentmesh.schemas.envelope import Chunk, ImagePart, Message, TextPart
from agentmesh.schemas.errors import InvalidMessage, MeshError, NotFound
from agentmesh.schemas.runtime import (
    AgentDefinition,
    EventType,
    InferenceRequest,
    InferenceResult,
    PromptTemplate,
    StreamEvent,
)
from agentmesh.schemas.runtime import Message as ChatMessage
from agentmesh.schemas.service import Serves, ServiceKind, ServiceRecord

logger = logging.getLogger(__name__)

DEFAULT_POLL = 2.0


@dataclass(slots=True)
class _Hosted:
    definition: AgentDefinition
    instance_id: str
    service: Service | None = None
    announcer: Announcer | None = None
    started_at: float = field(default_factory=time.time)


def session_for(agent_id: str, conversation_id: str | None) -> str | None:
    """The session a saved agent keeps for a mesh conversation (the same on every worker)."""
    if not conversation_id:
        return None
    digest = hashlib.sha256(f"{agent_id}\0{conversation_id}".encode()).hexdigest()[:32]
    return f"conv-{digest}"


def event_dict(event: StreamEvent) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {
        "type": event.type.value
    }


class _WorkerRuntime(Runtime):
    """The worker's runtime: ad-hoc sub-agents run on any worker of the mesh, over the bus."""

    def __init__(self, worker: RuntimeWorker, **kw: Any) -> None:
        super().__init__(**kw)
        self.worker = worker

    async def subagent(
        self, request: InferenceRequest, lineage: Lineage
    ) -> AsyncIterator[StreamEvent]:
        bus = self.worker.bus
        body = pack(request.model_dump(mode="json", exclude_none=True))
        async with aclosing(bus.stream(bus.subjects.runtime_infer(), body)) as frames:
            async for frame in frames:
                if frame.data:
                    yield StreamEvent.model_validate(unpack(frame.data))


class RuntimeWorker(MeshService):
    """Args:
    name: the worker's service name in the registry.
    fences: limits of the built-in tools (bash is enabled per agent definition).
    poll: seconds between looks at the stored definitions (a change notice is immediate).
    cache_dir: where skills stored in the mesh are unpacked.
    section: a mesh file's `runtime:` section (its limits; its agents and templates are saved
        into the mesh at start).
    """

    kind = ServiceKind.RUNTIME_WORKER

    def __init__(
        self,
        name: str = "runtime",
        *,
        fences: Fences | None = None,
        poll: float = DEFAULT_POLL,
        cache_dir: Path | None = None,
        section: RuntimeSection | None = None,
    ) -> None:
        super().__init__(name)
        self.fences = fences or (section.fences() if section else Fences())
        self.section = section
        self.poll = poll
        self.cache_dir = cache_dir or Path(".agentmesh") / "runtime" / "skills"
        self.hosted: dict[str, _Hosted] = {}
        self.runtime: _WorkerRuntime | None = None
        self.definitions: Definitions | None = None
        self._tools = ToolRegistry()
        for fn in load_functions(section.function_tools) if section else []:
            self._tools.register(fn)  # the worker's own function tools, by their names
        self._skills = SkillManager(self._tools)
        self._skill_digests: dict[str, str] = {}
        self._running: dict[str, set[asyncio.Task[Any]]] = {}  # session id → inference tasks
        self._wake = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._subs: list[Any] = []
        self._version: tuple[int, ...] | None = None
        self._registry: Registry | None = None
        self.synced = asyncio.Event()  # set after each reconciliation (tests wait on it)

    # Lifecycle -------------------------------------------------------------------------------
    def serves(self) -> Serves:
        return Serves(hosts=sorted(self.hosted))  # type: ignore[call-arg]

    def detail(self) -> dict[str, Any]:
        return {"agents": len(self.hosted), "skills": len(self._skills.list())}

    async def on_start(self) -> None:
        bus = self.bus
        assert self.settings is not None
        self.definitions = Definitions(DurableState(bus.nc), bus.subjects)
        self.runtime = _WorkerRuntime(
            self,
            tool_registry=self._tools,
            skill_manager=self._skills,
            prompt_template_manager=self.definitions,
            mesh=MeshClient(bus),
            fences=self.fences,
        )
        self._registry = Registry(self.redis, bus.subjects, timeout=self.settings.heartbeat_timeout)
        subject = bus.subjects.runtime_infer()
        await bus.serve(subject, self._infer, queue=subject)
        self._subs.append(await bus.nc.subscribe(bus.subjects.runtime_abort(), cb=self._on_abort))
        self._subs.append(
            await bus.nc.subscribe(bus.subjects.runtime_changed(), cb=self._on_changed)
        )
        if self.section is not None:
            await self.apply(self.section)  # syncs
        else:
            await self.sync()
        self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def apply(self, section: RuntimeSection) -> None:
        """Take a mesh file's `runtime:` section: its limits now, and its agents and templates
        saved into the mesh (every worker serves them; removing one from the file does not
        delete it from the mesh: use the API or `agentmesh runtime`)."""
        if self.section is not None and section.function_tools != self.section.function_tools:
            logger.warning("runtime.function_tools changed: restart the worker to load them")
        fences = section.fences()
        for name in Fences.__slots__:  # in place: the runtime holds this object
            if name not in ("bash_enabled", "env"):
                setattr(self.fences, name, getattr(fences, name))
        assert self.definitions is not None
        for definition in section.agents:
            stored = await self.definitions.agent(definition.agent_id)
            if stored is None or _content(stored) != _content(definition):
                await self.definitions.put_agent(definition)
        for entry in section.templates:
            template = PromptTemplate(**entry.model_dump())
            stored = await self.definitions.template(entry.id)
            if stored is None or (stored.name, stored.content) != (entry.name, entry.content):
                await self.definitions.put_template(template)
        await self.sync()

    async def on_stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        for agent_id in list(self.hosted):
            await self._unhost(agent_id, drain=False)
        await self.bus.close()  # the calls in flight finish first
        if self.runtime is not None:
            await self.runtime.aclose()

    # Definitions -----------------------------------------------------------------------------
    async def _on_changed(self, _msg: Any) -> None:
        self._wake.set()

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.sync()
            except MeshError as exc:  # JetStream away: keep serving what is known
                logger.warning("runtime definitions not re-read: %s", exc.message)

    async def sync(self, *, force: bool = False) -> None:
        """Serve what the store holds now: host new agents, update changed ones, drop removed."""
        assert self.definitions is not None
        version = await self.definitions.version()
        if version == self._version and not force:
            self.synced.set()
            return
        await self._sync_tools()
        await self._sync_skills(await self.definitions.skills())
        self.fences.env = await self.definitions.env()
        wanted = {d.agent_id: d for d in await self.definitions.agents()}
        for agent_id in [a for a in self.hosted if a not in wanted]:
            await self._unhost(agent_id)
        for agent_id, definition in wanted.items():
            hosted = self.hosted.get(agent_id)
            if hosted is None:
                await self._host(definition)
            elif hosted.definition != definition:
                hosted.definition = definition  # the next call uses it
                if hosted.announcer is not None:
                    await hosted.announcer.beat_now()  # the new card
        self._version = version
        self.announce_now()
        self.synced.set()

    async def _sync_tools(self) -> None:
        assert self.definitions is not None
        stored = {t.tool_id: t for t in await self.definitions.tools()}
        for config in self._tools.list():
            if config.tool_type.value == "http" and config.tool_id not in stored:
                self._tools.unregister(config.tool_id)
        for config in stored.values():
            self._tools.register(config)

    async def _sync_skills(self, records: list[SkillRecord]) -> None:
        assert self.definitions is not None
        wanted = {r.skill_id: r for r in records}
        for skill_id in [s for s in self._skill_digests if s not in wanted]:
            # Loaded under its tool name: the id itself when the gateway stored it (skill_<name>).
            self._skills.remove(skill_id if self._skills.get(skill_id) else tool_name(skill_id))
            del self._skill_digests[skill_id]
        for skill_id, record in wanted.items():
            if self._skill_digests.get(skill_id) == record.digest:
                continue
            target = self.cache_dir / f"{skill_id}-{record.digest[:16]}"
            try:
                if not (target / "SKILL.md").exists():
                    archive = await self.definitions.skill_archive(skill_id)
                    shutil.rmtree(target, ignore_errors=True)
                    unzip_into(archive, target)
                skill = parse_skill(target)
            except (MeshError, OSError) as exc:
                logger.warning("skill %s not loaded: %s", skill_id, exc)
                continue
            skill.name = record.name
            self._skills.add(skill)
            self._skill_digests[skill_id] = record.digest

    async def _host(self, definition: AgentDefinition) -> None:
        bus = self.bus
        assert self.settings is not None and self._registry is not None
        hosted = _Hosted(definition, instance_id=uuid.uuid4().hex[:16])
        agent_id = definition.agent_id
        hosted.service = await bus.serve(
            bus.subjects.agent(agent_id),
            self._agent_handler(hosted),
            queue=bus.subjects.agent_queue(agent_id),
            max_concurrency=definition.limits.max_concurrency,
        )
        hosted.announcer = Announcer(
            self._registry,
            bus,
            lambda: self._record(hosted),
            interval=self.settings.heartbeat_interval,
        )
        await hosted.announcer.start()
        self.hosted[agent_id] = hosted
        logger.info("serving saved agent %s (model %s)", agent_id, definition.model_id)

    async def _unhost(self, agent_id: str, *, drain: bool = True) -> None:
        hosted = self.hosted.pop(agent_id, None)
        if hosted is None:
            return
        if hosted.announcer is not None:
            await hosted.announcer.stop()  # offline now
        if hosted.service is not None:
            if drain:
                await hosted.service.stop()
            else:
                await hosted.service.unsubscribe()
        logger.info("stopped serving saved agent %s", agent_id)

    def _record(self, hosted: _Hosted) -> ServiceRecord:
        d = hosted.definition
        return agent_record(
            AgentCard(
                agent_id=d.agent_id,
                agent_name=d.name or d.agent_id,
                agent_type=d.agent_type,
                capabilities=d.capabilities,
                description=d.description,
                metadata={"runtime": {"model_id": d.model_id, "tools": d.tool_ids}},
            ),
            instance_id=hosted.instance_id,
            started_at=hosted.started_at,
            via="runtime",
            service=hosted.service,
            detail={"runtime_worker": self.instance_id},
        )

    # Calls -----------------------------------------------------------------------------------
    def _agent_handler(self, hosted: _Hosted):  # noqa: ANN202 - a broker Handler
        async def handle(request: Request) -> bytes | AsyncIterator[bytes]:
            msg = decode(request.data, Message)
            definition = hosted.definition  # taken once: an update applies to the next call
            lineage = Lineage.from_metadata(
                msg.metadata.get(METADATA_KEY),
                agent_id=definition.agent_id,
                max_depth=definition.limits.max_delegation_depth,
            )
            inference = InferenceRequest(
                agent_id=definition.agent_id,
                messages=[_chat_message(msg)],
                session_id=session_for(definition.agent_id, msg.conversation_id),
            )
            events = self._events(inference, definition, lineage)
            if request.stream:
                return (encode(_chunk(e)) async for e in events)
            result = InferenceResult.assemble([e async for e in events])
            return encode_message(
                result.content,
                from_agent_id=definition.agent_id,
                to_agent_id=msg.from_agent_id,
                conversation_id=msg.conversation_id,
                metadata={
                    "session_id": result.session_id,
                    "usage": result.usage.model_dump(),
                    "finish_reason": result.finish_reason,
                },
            )

        return handle

    async def _infer(self, request: Request) -> bytes | AsyncIterator[bytes]:
        body = unpack(request.data)
        if not isinstance(body, dict):
            raise InvalidMessage("an inference request must be a map")
        inference = InferenceRequest.model_validate(body)
        definition = None
        if inference.agent_id:
            assert self.definitions is not None
            definition = await self.definitions.agent(inference.agent_id)
            if definition is None:
                raise NotFound(
                    f"no saved agent {inference.agent_id!r}",
                    details={"agent_id": inference.agent_id},
                )
        lineage = _lineage(inference.delegation)
        events = self._events(inference, definition, lineage)
        if request.stream:
            return (pack(event_dict(e)) async for e in events)
        result = InferenceResult.assemble([e async for e in events])
        return pack(result.model_dump(mode="json", exclude_none=True))

    async def _events(
        self, request: InferenceRequest, definition: AgentDefinition | None, lineage: Lineage
    ) -> AsyncIterator[StreamEvent]:
        """The inference, registered under its session so an abort finds it."""
        assert self.runtime is not None
        task = asyncio.current_task()
        session: str | None = None
        if request.session_id not in (None, "new") and task is not None:
            # Known at once: an abort that comes while the inference is still being planned
            # (the history read, a summary call) finds it too.
            session = request.session_id
            self._running.setdefault(session, set()).add(task)
        try:
            async with aclosing(
                self.runtime.events(request, definition=definition, lineage=lineage)
            ) as events:
                async for event in events:
                    if event.type is EventType.START and event.session_id and session is None:
                        if task is not None:
                            session = event.session_id
                            self._running.setdefault(session, set()).add(task)
                    yield event
        finally:
            if session is not None and task is not None:
                tasks = self._running.get(session, set())
                tasks.discard(task)
                if not tasks:
                    self._running.pop(session, None)

    async def _on_abort(self, msg: Any) -> None:
        try:
            session_id = json.loads(msg.data).get("session_id")
        except (ValueError, AttributeError):
            return
        for task in list(self._running.get(session_id, ())):
            task.cancel()
        if self._running.get(session_id):
            logger.info("aborted the inference of session %s", session_id)


def _content(definition: AgentDefinition) -> dict[str, Any]:
    return definition.model_dump(exclude={"created_at", "updated_at"})


def _lineage(delegation: dict[str, Any] | None) -> Lineage:
    """A sub-agent's lineage, as its parent's runtime put it in the request."""
    if not delegation:
        return Lineage()
    return Lineage.from_request(delegation)


def _chat_message(msg: Message) -> ChatMessage:
    images = []
    for part in msg.content:
        if isinstance(part, ImagePart):
            if part.uri:
                images.append(part.uri)
            elif part.bytes:
                mime = part.mime_type or "image/png"
                images.append(f"data:{mime};base64,{base64.b64encode(part.bytes).decode()}")
    text = msg.text
    if not text and msg.data is not None:
        text = json.dumps(msg.data, ensure_ascii=False)
    return ChatMessage(role="user", content=text, images=images)


def _chunk(event: StreamEvent) -> Chunk:
    content = (
        [TextPart(text=event.content)]
        if (event.type is EventType.CONTENT and not event.path and event.content)
        else []
    )
    return Chunk(content=content, metadata={EVENT_KEY: event_dict(event)})
