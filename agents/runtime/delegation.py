"""The built-in `delegate` tool: hand a subtask to an online mesh agent (by id: any language,
any machine) or to an ad-hoc sub-agent (a model, a subset of the parent's tools, a task and a
context), whose events stream into the parent's stream under the delegate call's id.

A sub-agent's system prompt lists the parent's tools as a Markdown table (as the seed does).
Depth is limited and a cycle of agents is refused (`Lineage.child`); both come back to the
model as the tool's error, so it can carry on without the delegation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from agentmesh.agents.runtime.lineage import METADATA_KEY, Lineage
from agentmesh.schemas.errors import InvalidMessage
from agentmesh.schemas.runtime import (
    EventType,
    InferenceRequest,
    Message,
    StreamEvent,
    ToolConfig,
    ToolType,
)

if TYPE_CHECKING:
    from agentmesh.agents.client import MeshClient
    from agentmesh.agents.runtime.toolset import CallContext

# Runs a sub-agent's inference (in this process, or on any runtime worker over the bus).
SubagentRunner = Callable[[InferenceRequest, Lineage], AsyncIterator[StreamEvent]]

EVENT_KEY = "runtime_event"  # mesh Chunk metadata: a runtime agent's StreamEvent, as a dict

DELEGATE = ToolConfig(
    tool_id="delegate",
    tool_type=ToolType.BUILTIN,
    name="delegate",
    description=(
        "Hand a subtask to another agent and get its answer. Give `agent_id` to ask an online "
        "agent of the mesh; otherwise a new sub-agent does it, with `model_id` (default: "
        "yours), `tool_names` (a subset of your tools) and `context` (its instructions)."
    ),
    parameters={
        "type": "object",
        "properties": {
            "task": {"type": "string", "description": "What the sub-agent must do."},
            "agent_id": {"type": "string", "description": "An online mesh agent's id."},
            "model_id": {"type": "string", "description": "The sub-agent's model."},
            "tool_names": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Which of your tools the sub-agent may use.",
            },
            "context": {"type": "string", "description": "The sub-agent's system prompt."},
        },
        "required": ["task"],
    },
    timeout=900.0,
)


class Delegation:
    def __init__(self, mesh: MeshClient, subagents: SubagentRunner) -> None:
        self.mesh = mesh
        self.subagents = subagents

    def config(self) -> ToolConfig:
        return DELEGATE

    async def run(self, arguments: dict[str, Any], ctx: CallContext) -> str:
        task = arguments.get("task")
        if not isinstance(task, str) or not task.strip():
            raise InvalidMessage("delegate needs a 'task'")
        agent_id = arguments.get("agent_id") or None
        if agent_id is not None and not isinstance(agent_id, str):
            raise InvalidMessage("'agent_id' must be a string")
        child = ctx.lineage.child(ctx.call_id, agent_id)
        if agent_id is not None:
            return await self._to_agent(agent_id, task, child, ctx)
        return await self._to_subagent(arguments, task, child, ctx)

    async def _to_agent(self, agent_id: str, task: str, child: Lineage, ctx: CallContext) -> str:
        text = []
        metadata = {METADATA_KEY: child.to_metadata()}
        stream = self.mesh.stream(agent_id, task, metadata=metadata, conversation_id=None)
        async with aclosing(stream) as chunks:
            async for chunk in chunks:
                raw = chunk.metadata.get(EVENT_KEY)
                if isinstance(raw, dict):  # a runtime agent: its own events, re-tagged
                    event = StreamEvent.model_validate(raw)
                    ctx.emit(event.model_copy(update={"path": [*child.path, *event.path]}))
                    if not event.path and event.type is EventType.CONTENT:
                        text.append(event.content or "")
                    continue
                if chunk.text:
                    text.append(chunk.text)
                    ctx.emit(
                        StreamEvent(
                            type=EventType.CONTENT,
                            round=0,
                            path=child.path,
                            content=chunk.text,
                        )
                    )
        return "".join(text)

    async def _to_subagent(
        self, arguments: dict[str, Any], task: str, child: Lineage, ctx: CallContext
    ) -> str:
        names = arguments.get("tool_names")
        wanted = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
        tool_ids = ctx.toolset.subset(wanted)
        if "delegate" in ctx.toolset.names() and "delegate" not in tool_ids:
            tool_ids.append("delegate")  # nested delegation, bounded by the depth limit
        context = arguments.get("context")
        system = "\n\n".join(
            part
            for part in (
                context if isinstance(context, str) else None,
                "Tools of the agent that delegated this task to you:\n" + ctx.toolset.markdown(),
            )
            if part
        )
        model_id = arguments.get("model_id")
        request = InferenceRequest(
            model_id=model_id if isinstance(model_id, str) and model_id else ctx.alias,
            tool_ids=tool_ids,
            messages=[Message(role="user", content=task)],
            system_prompt=system,
            session_id="new" if ctx.session_id else None,
            parent_session_id=ctx.session_id,
            delegation=child.to_metadata() | {"path": child.path},
        )
        by_round: dict[int, list[str]] = {}  # the answer is the last round's text
        async with aclosing(self.subagents(request, child)) as events:
            async for event in events:
                ctx.emit(event)
                if event.path != child.path:
                    continue
                if event.type is EventType.CONTENT:
                    by_round.setdefault(event.round, []).append(event.content or "")
                elif event.type is EventType.ERROR and event.error is not None:
                    raise InvalidMessage(f"the sub-agent failed: {event.error.message}")
        return "".join(by_round[max(by_round)]) if by_round else ""
