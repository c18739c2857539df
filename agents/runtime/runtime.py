"""`Runtime`: the seed's Python API over the mesh.

runtime = Runtime(model_registry=ModelRegistry(), tool_registry=tools)
result = runtime.infer(InferenceRequest(model_id="gpt-4.1-mini", text="What time is it?",
                                        tool_ids=["time_get_current_time"]))
for event in runtime.infer_stream(request): print(event.content or "", end="")

`infer` and `infer_stream` are blocking (run on a loop thread the runtime owns, as the seed's
stdlib API is); inside an event loop use `await runtime.ainfer(...)` and
`async for event in runtime.ainfer_stream(...)`. The mesh connection is opened on first use
(`Settings.from_env()` unless `mesh=` or `settings=` is given).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import httpx

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime import engine
from agentmesh.agents.runtime.builtins import Fences
from agentmesh.agents.runtime.context import fit_history
from agentmesh.agents.runtime.delegation import Delegation
from agentmesh.agents.runtime.lineage import Lineage
from agentmesh.agents.runtime.loop_thread import LoopThread
from agentmesh.agents.runtime.registry import ModelRegistry, ToolRegistry
from agentmesh.agents.runtime.skills import SkillManager
from agentmesh.agents.runtime.templates import (
    PromptTemplateManager,
    TemplateSource,
    render,
    render_messages,
)
from agentmesh.agents.runtime.toolset import Resolver
from agentmesh.broker.durable import DurableState
from agentmesh.broker.sessions import SessionStore
from agentmesh.broker.settings import Settings
from agentmesh.schemas.catalog import Catalog
from agentmesh.schemas.errors import InvalidMessage, MeshError, NotFound
from agentmesh.schemas.runtime import (
    AgentDefinition,
    InferenceRequest,
    InferenceResult,
    SessionStatus,
    StreamEvent,
)

CATALOG_TTL = 2.0  # seconds an MCP catalog read serves the inferences that follow


@dataclass(slots=True)
class _Connection:
    """What the runtime holds on one event loop."""

    mesh: MeshClient
    http: httpx.AsyncClient
    sessions: SessionStore
    owns_mesh: bool
    _catalog: tuple[float, Catalog] | None = None

    async def catalog(self) -> Catalog:
        """The MCP workers' catalog, read at most every CATALOG_TTL seconds (a registry read
        per inference was half of a worker's own time; a tool gone since is a tool error)."""
        now = time.monotonic()
        if self._catalog is None or now - self._catalog[0] > CATALOG_TTL:
            self._catalog = (now, await self.mesh.tools.catalog())
        return self._catalog[1]


class Runtime:
    """Runs inferences: models and MCP tools through the mesh, function tools in-process.

    Args:
        model_registry: model ids → mesh aliases (default: every alias as itself).
        tool_registry: function, skill, HTTP and hand-registered MCP tools.
        skill_manager: skills loaded from directories.
        prompt_template_manager: templates messages may name (or any `TemplateSource`).
        mesh: a connected `MeshClient` to use (else one is opened from `settings`).
        settings: where the mesh is (default `Settings.from_env()`).
        fences: the built-in tools' limits; `enable_bash` is a shortcut for `bash_enabled`.
        mcp_manager: accepted for the seed's examples and ignored: MCP tools come from the
            mesh's MCP workers.
    """

    def __init__(
        self,
        model_registry: ModelRegistry | None = None,
        tool_registry: ToolRegistry | None = None,
        skill_manager: SkillManager | None = None,
        prompt_template_manager: PromptTemplateManager | TemplateSource | None = None,
        *,
        mesh: MeshClient | None = None,
        settings: Settings | None = None,
        fences: Fences | None = None,
        enable_bash: bool = False,
        mcp_manager: Any = None,
    ) -> None:
        self.models = model_registry or ModelRegistry()
        self.tools = tool_registry or (skill_manager.tool_registry if skill_manager else None)
        self.tools = self.tools or ToolRegistry()
        self.skills = skill_manager
        self.templates = prompt_template_manager
        self.settings = settings
        self.fences = fences or Fences()
        if enable_bash:
            self.fences.bash_enabled = True
        self._given_mesh = mesh
        self._connections: dict[asyncio.AbstractEventLoop, _Connection] = {}
        self._thread: LoopThread | None = None

    # The seed's blocking API -----------------------------------------------------------------
    def infer(self, request: InferenceRequest) -> InferenceResult:
        return self._loop_thread().run(self.ainfer(request))

    def infer_stream(self, request: InferenceRequest) -> Iterator[StreamEvent]:
        return self._loop_thread().iterate(self.ainfer_stream(request))

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.run(self.aclose())
            thread.stop()

    def _loop_thread(self) -> LoopThread:
        if self._thread is None:
            self._thread = LoopThread()
        return self._thread

    # Async API -----------------------------------------------------------------------------
    async def ainfer(self, request: InferenceRequest) -> InferenceResult:
        """Raises `MeshError` (INVALID_MESSAGE, MODEL_NOT_FOUND, TOOL_NOT_FOUND, ...)."""
        events = [e async for e in self.ainfer_stream(request)]
        return InferenceResult.assemble(events)

    async def ainfer_stream(self, request: InferenceRequest) -> AsyncIterator[StreamEvent]:
        async with aclosing(self.events(request)) as events:
            async for event in events:
                yield event

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        conn = self._connections.pop(loop, None)
        if conn is not None:
            await conn.http.aclose()
            if conn.owns_mesh:
                await conn.mesh.close()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # The inference ---------------------------------------------------------------------------
    async def events(
        self,
        request: InferenceRequest,
        *,
        definition: AgentDefinition | None = None,
        lineage: Lineage | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The events of one inference; `definition` is a saved agent's (the worker's case)."""
        conn = await self._connection()
        plan = await self.plan(conn, request, definition, lineage or Lineage())
        sessions = conn.sessions
        if plan.session_id is not None:
            await sessions.change(plan.session_id, status=SessionStatus.STREAMING)
        try:
            llm = conn.mesh.llm(plan.alias)
            async with asyncio.timeout(_timeout(request, definition)):
                async with aclosing(engine.run(plan, llm)) as events:
                    async for event in events:
                        yield event
        except TimeoutError as exc:
            await self._failed(sessions, plan, exc)
            raise engine.MeshTimeout("the inference ran out of time") from None
        except (MeshError, asyncio.CancelledError, GeneratorExit) as exc:
            await self._failed(sessions, plan, exc)
            raise
        if plan.session_id is not None and plan.result_conversation is not None:
            new = plan.result_conversation[len(plan.history) :]
            await sessions.append_turn(plan.session_id, new)
            await sessions.change(plan.session_id, status=SessionStatus.SUCCESS, unread=True)

    async def _failed(self, sessions: SessionStore, plan: engine.Plan, exc: BaseException) -> None:
        if plan.session_id is None:
            return
        info = exc.to_info() if isinstance(exc, MeshError) else None
        status = SessionStatus.ERROR if info is not None else SessionStatus.IDLE
        with contextlib.suppress(MeshError, OSError, asyncio.CancelledError):
            await asyncio.shield(
                sessions.change(plan.session_id, status=status, error=info, unread=True)
            )

    async def plan(
        self,
        conn: _Connection,
        request: InferenceRequest,
        definition: AgentDefinition | None,
        lineage: Lineage,
    ) -> engine.Plan:
        """Everything resolved before the first model call, so a bad request fails at once."""
        model_id = request.model_id or (definition.model_id if definition else None)
        if not model_id:
            raise InvalidMessage("'model_id' is required", details={"field": "model_id"})
        messages = await render_messages(request.conversation(), self.templates)
        if not messages:
            raise InvalidMessage("an inference needs 'messages' or 'text'")
        tool_ids = list(request.tool_ids)
        system = request.system_prompt
        max_rounds = request.max_tool_rounds
        bash = self.fences.bash_enabled
        if definition is not None:
            # A caller may add tools to a saved agent's, but not bash: that stays the
            # definition's (an admin's) choice.
            added = [t for t in tool_ids if t != "bash" or "bash" in definition.tool_ids]
            tool_ids = [*definition.tool_ids, *definition.skills, *added]
            system = system or await self._system_prompt(definition)
            if "max_tool_rounds" not in request.model_fields_set:
                max_rounds = definition.limits.max_tool_rounds
            bash = bash or definition.enable_bash
            lineage = Lineage(
                path=lineage.path,
                depth=lineage.depth,
                agents=lineage.agents,
                max_depth=min(lineage.max_depth, definition.limits.max_delegation_depth),
            )
        resolver = Resolver(
            mesh=conn.mesh,
            registry=self.tools,
            skill_manager=self.skills,
            fences=self.fences,
            http=conn.http,
            delegation=Delegation(conn.mesh, self.subagent),
            catalog=conn.catalog,
        )
        toolset = await resolver.toolset(tool_ids, bash=bash)
        model = self.models.get(model_id)
        session_id, history = await self._session(conn, request, definition, model_id)
        if session_id is not None:
            history = await fit_history(
                conn.sessions, session_id, history, model, conn.mesh.llm(model.alias)
            )
        effort = request.reasoning_effort or (definition.reasoning_effort if definition else None)
        chosen = (
            ("temperature", request.temperature),
            ("max_tokens", request.max_tokens),
            ("reasoning_effort", effort),
        )
        params = {k: v for k, v in chosen if v is not None}
        return engine.Plan(
            request=request,
            alias=model.alias,
            system_prompt=system,
            history=history,
            messages=messages,
            toolset=toolset,
            max_tool_rounds=max_rounds,
            session_id=session_id,
            lineage=lineage,
            params=params,
        )

    async def _system_prompt(self, definition: AgentDefinition) -> str | None:
        if definition.prompt_template:
            templates = self.templates
            template = await templates.find(definition.prompt_template) if templates else None
            if template is None:
                raise NotFound(f"no prompt template {definition.prompt_template!r}")
            return render(template, definition.arguments)
        return definition.system_prompt

    async def _session(
        self,
        conn: _Connection,
        request: InferenceRequest,
        definition: AgentDefinition | None,
        model_id: str,
    ) -> tuple[str | None, list[Any]]:
        wanted = request.session_id
        if wanted is None:
            return None, []
        if wanted == "new":
            info = await conn.sessions.create(
                agent_id=definition.agent_id if definition else None,
                model_id=model_id,
                parent_id=request.parent_session_id,
            )
            return info.session_id, []
        info = await conn.sessions.get(wanted)
        if info is None:
            if definition is None:
                raise NotFound(f"no session {wanted!r}", details={"session_id": wanted})
            # A saved agent's conversation id names its session: the first message makes it.
            info = await conn.sessions.create(
                session_id=wanted, agent_id=definition.agent_id, model_id=model_id
            )
            return info.session_id, []
        if info.status is SessionStatus.REVOKED:
            raise InvalidMessage(f"session {wanted!r} was revoked", details={"session_id": wanted})
        return info.session_id, await conn.sessions.history(info.session_id)

    async def subagent(
        self, request: InferenceRequest, lineage: Lineage
    ) -> AsyncIterator[StreamEvent]:
        """An ad-hoc sub-agent, run in this process (a runtime worker overrides this to run it
        on any worker of the mesh)."""
        async with aclosing(self.events(request, lineage=lineage)) as events:
            async for event in events:
                yield event

    async def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = self._connections.get(loop)
        if conn is None:
            mesh = self._given_mesh
            owns = mesh is None
            if mesh is None:
                mesh = await MeshClient.connect(self.settings)
            sessions = SessionStore(DurableState(mesh.bus.nc), mesh.bus.subjects)
            conn = _Connection(mesh, httpx.AsyncClient(), sessions, owns)
            self._connections[loop] = conn
        return conn


def _timeout(request: InferenceRequest, definition: AgentDefinition | None) -> float | None:
    if request.timeout is not None:
        return request.timeout
    return definition.limits.timeout if definition is not None else None
