"""The tools one inference may call, resolved from its `tool_ids` (see registry.py for the
order), each with the coroutine that runs it.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import ValidationError

from agentmesh.agents.runtime import builtins, skills
from agentmesh.agents.runtime.lineage import Lineage
from agentmesh.agents.runtime.registry import MCP_ALL, RegisteredTool, ToolRegistry
from agentmesh.schemas.errors import InvalidMessage, ToolNotFound
from agentmesh.schemas.runtime import EventType, StreamEvent, ToolConfig, ToolType

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from agentmesh.agents.client import MeshClient
    from agentmesh.agents.runtime.delegation import Delegation
    from agentmesh.agents.runtime.skills import SkillManager
    from agentmesh.schemas.catalog import Catalog


@dataclass(slots=True)
class CallContext:
    """What a running tool knows of the call and the inference that made it."""

    call_id: str
    round: int
    lineage: Lineage  # the calling inference's
    emit: Callable[[StreamEvent], None]  # events into the inference's stream
    session_id: str | None
    toolset: Toolset
    alias: str  # the calling inference's model alias


Run = Callable[[dict[str, Any], CallContext], Awaitable[str]]


@dataclass(slots=True)
class ActiveTool:
    config: ToolConfig
    run: Run


class Toolset:
    def __init__(self, tools: list[ActiveTool] | None = None) -> None:
        self._tools: dict[str, ActiveTool] = {}
        for tool in tools or []:
            self.add(tool)

    def add(self, tool: ActiveTool) -> None:
        self._tools.setdefault(tool.config.name, tool)

    def get(self, name: str) -> ActiveTool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def configs(self) -> list[ToolConfig]:
        return [t.config for t in self._tools.values()]

    def schemas(self) -> list[dict[str, Any]]:
        return [t.config.schema_for_model() for t in self._tools.values()]

    def subset(self, names: list[str]) -> list[str]:
        """The tool ids of `names` that this set has (what a sub-agent may be given)."""
        return [self._tools[n].config.tool_id for n in names if n in self._tools]

    def markdown(self) -> str:
        """The tools as a Markdown table (what a sub-agent's system prompt lists)."""
        rows = [
            f"| {t.config.name} | {t.config.description.replace('|', '/').splitlines()[0] if t.config.description else ''} |"  # noqa: E501
            for t in self._tools.values()
        ]
        return "| tool | description |\n|---|---|\n" + "\n".join(rows)


@dataclass(slots=True)
class Resolver:
    """Turns tool ids into active tools for one inference."""

    mesh: MeshClient
    registry: ToolRegistry
    skill_manager: SkillManager | None
    fences: builtins.Fences
    http: httpx.AsyncClient
    delegation: Delegation | None = None
    catalog: Callable[[], Awaitable[Catalog]] | None = None  # default: read it now

    async def _catalog(self) -> Catalog:
        if self.catalog is not None:
            return await self.catalog()
        return await self.mesh.tools.catalog()

    async def toolset(self, tool_ids: list[str], *, bash: bool = False) -> Toolset:
        """Raises `ToolNotFound` naming the first id that is nowhere."""
        out = Toolset()
        catalog: Catalog | None = None
        for tool_id in dict.fromkeys(tool_ids):
            found = self._local(tool_id, bash=bash)
            if found is not None:
                out.add(found)
                continue
            if catalog is None:
                catalog = await self._catalog()
            mcp = _from_catalog(catalog, tool_id)
            if not mcp and self.catalog is not None:  # not in a cached copy: look again, once
                catalog = await self.mesh.tools.catalog()
                mcp = _from_catalog(catalog, tool_id)
            registered = self.registry.get(tool_id)
            if not mcp and registered is not None:  # an HTTP tool
                out.add(self._registered(registered))
                continue
            if not mcp:
                raise ToolNotFound(f"no tool {tool_id!r}", details={"tool_id": tool_id})
            for config in mcp:
                out.add(self._mcp(config))
        return out

    def _local(self, tool_id: str, *, bash: bool) -> ActiveTool | None:
        registered = self.registry.get(tool_id)
        # HTTP tools (registered over the API) come after the MCP catalog: they never stand in
        # for an MCP tool of the same name.
        if registered is not None and registered.config.tool_type is not ToolType.HTTP:
            return self._registered(registered)
        if self.skill_manager is not None:
            skill = self.skill_manager.get(tool_id)
            if skill is not None:
                return self._skill(skill)
        if tool_id == "bash":
            return ActiveTool(builtins.BASH, self._bash(bash))
        if tool_id == "fetch":
            return ActiveTool(builtins.FETCH, self._fetch)
        if tool_id == "delegate" and self.delegation is not None:
            return ActiveTool(self.delegation.config(), self.delegation.run)
        return None

    def _registered(self, tool: RegisteredTool) -> ActiveTool:
        config = tool.config
        if config.tool_type is ToolType.MCP:
            return self._mcp(config)
        if config.tool_type is ToolType.SKILL and self.skill_manager is not None:
            skill = self.skill_manager.get(config.tool_id)
            if skill is not None:
                return self._skill(skill)
        if config.tool_type is ToolType.HTTP:
            return ActiveTool(config, self._http_tool(config))
        fn = tool.fn
        if fn is None:
            raise ToolNotFound(f"tool {config.tool_id!r} has nothing to run")

        async def run(arguments: dict[str, Any], ctx: CallContext) -> str:
            if inspect.iscoroutinefunction(fn):
                return dumps(await fn(**arguments))
            value = await asyncio.to_thread(fn, **arguments)
            if inspect.isawaitable(value):
                value = await value
            return dumps(value)

        return ActiveTool(config, run)

    def _mcp(self, config: ToolConfig) -> ActiveTool:
        server = config.server or ""
        name = config.mcp_tool or config.name

        async def run(arguments: dict[str, Any], ctx: CallContext) -> str:
            result = await self.mesh.tools.call(server, name, arguments, timeout=config.timeout)
            text = result.text
            if not text and result.structured is not None:
                text = dumps(result.structured)
            return f"Error: {text}" if result.is_error else text

        return ActiveTool(config, run)

    def _skill(self, skill: skills.Skill) -> ActiveTool:
        async def run(arguments: dict[str, Any], ctx: CallContext) -> str:
            ctx.emit(
                StreamEvent(
                    type=EventType.SKILL,
                    round=ctx.round,
                    path=ctx.lineage.path,
                    tool_name=skill.tool_id,
                )
            )
            # From now on the skill's files are readable (the next rounds list the tool).
            ctx.toolset.add(ActiveTool(skills.read_file_tool(), self._read_skill_file))
            return skill.disclosure()

        return ActiveTool(skill.tool_config(), run)

    async def _read_skill_file(self, arguments: dict[str, Any], ctx: CallContext) -> str:
        if self.skill_manager is None:
            raise InvalidMessage("no skills are loaded")
        wanted = str(arguments.get("skill", ""))
        skill = self.skill_manager.get(wanted) or self.skill_manager.get(skills.tool_name(wanted))
        if skill is None:
            raise InvalidMessage(f"no skill {wanted!r}")
        return skill.read(str(arguments.get("path", "")))

    def _bash(self, enabled: bool) -> Run:
        fences = self.fences if not enabled else _with_bash(self.fences)

        async def run(arguments: dict[str, Any], ctx: CallContext) -> str:
            cwd = builtins.workdir(fences, ctx.session_id)
            return await builtins.run_bash(arguments.get("command", ""), cwd=cwd, fences=fences)

        return run

    async def _fetch(self, arguments: dict[str, Any], ctx: CallContext) -> str:
        return await builtins.run_fetch(arguments.get("url"), fences=self.fences, client=self.http)

    def _http_tool(self, config: ToolConfig) -> Run:
        async def run(arguments: dict[str, Any], ctx: CallContext) -> str:
            url = config.url or ""
            await builtins.check_public(url, allow_private=self.fences.fetch_allow_private)
            response = await self.http.post(url, json=arguments, timeout=config.timeout)
            text = response.text[: self.fences.fetch_max_bytes]
            if response.is_error:
                return f"Error: HTTP {response.status_code}: {text}"
            return text

        return run


def _with_bash(fences: builtins.Fences) -> builtins.Fences:
    return replace(fences, bash_enabled=True)


def dumps(value: Any) -> str:
    """A tool's return value as the text the model reads."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _from_catalog(catalog: Catalog, tool_id: str) -> list[ToolConfig]:
    """The MCP tools `tool_id` names: `mcp:<server>` (all of them) or `<server>_<tool>`."""
    everything = MCP_ALL.match(tool_id)
    out = []
    for tool in catalog.tools():
        if (everything and tool.server == everything.group(1)) or tool.federated_name == tool_id:
            try:
                out.append(mcp_config(tool.server, tool.tool))
            except ValidationError:  # a name no model API accepts: not offered
                logger.warning("MCP tool %s of %s has an unusable name", tool.name, tool.server)
    return out


def mcp_config(server: str, tool: dict[str, Any]) -> ToolConfig:
    """The runtime's config of one MCP tool (the seed's `mcp.get_tools(server)` items)."""
    name = f"{server}_{tool['name']}"
    return ToolConfig(
        tool_id=name,
        tool_type=ToolType.MCP,
        name=name[:64],
        description=tool.get("description") or "",
        parameters=tool.get("inputSchema") or {"type": "object", "properties": {}},
        server=server,
        mcp_tool=tool["name"],
    )
