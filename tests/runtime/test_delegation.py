"""The `delegate` tool: to an ad-hoc sub-agent (streamed into the parent's stream under the
call's id), to an online mesh agent, nested, and refused past the depth limit."""

from __future__ import annotations

from typing import Any

from agentmesh.agents.agent import Agent
from agentmesh.agents.runtime import (
    EventType,
    InferenceRequest,
    InferenceResult,
    ToolRegistry,
    function_tool,
)
from tests.conftest import StartAgent
from tests.runtime.conftest import MakeRuntime, StartModel
from tests.runtime.scripted_llm import Reply, last_message, tool_names


@function_tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


def is_subagent(body: dict[str, Any]) -> bool:
    system = body["messages"][0]
    return system["role"] == "system" and "Tools of the agent that delegated" in system["content"]


async def test_an_adhoc_subagent_runs_with_a_subset_of_tools_and_streams_into_the_parent(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if is_subagent(body):
            if last["role"] == "tool":
                return Reply(content=f"sub found {last['content']}")
            return Reply(tool_calls=[("lookup", {"key": "k1"})])
        if last["role"] == "tool":
            return Reply(content=f"parent got: {last['content']}")
        return Reply(
            tool_calls=[
                (
                    "delegate",
                    {"task": "find k1", "tool_names": ["lookup"], "context": "You look things up."},
                )
            ]
        )

    upstream = await start_model(brain)
    tools = ToolRegistry()
    tools.register(lookup)
    runtime = make_runtime(tool_registry=tools)
    request = InferenceRequest(model_id="m", tool_ids=["delegate", "lookup"], text="go")
    events = [e async for e in runtime.ainfer_stream(request)]
    sub = [e for e in events if e.path]
    assert sub and all(e.path == ["call_1"] for e in sub)
    assert any(e.type is EventType.TOOL_RESULT and e.result == "value-of-k1" for e in sub)
    assert (
        "".join(e.content or "" for e in sub if e.type is EventType.CONTENT)
        == "sub found value-of-k1"
    )
    final = [e for e in events if not e.path and e.type is EventType.CONTENT]
    assert "".join(e.content or "" for e in final) == "parent got: sub found value-of-k1"
    sub_request = next(r for r in upstream.requests if is_subagent(r))
    system = sub_request["messages"][0]["content"]
    assert system.startswith("You look things up.")
    assert "| lookup | Look a key up. |" in system and "| delegate |" in system  # the parent's
    assert tool_names(sub_request) == ["lookup", "delegate"]


async def test_delegation_to_a_mesh_agent_by_id(
    start_model: StartModel, make_runtime: MakeRuntime, start_agent: StartAgent
) -> None:
    seen: list[Any] = []
    helper = Agent("helper-agent")

    @helper.handler
    async def handle(msg, ctx):  # noqa: ANN001, ANN202
        seen.append(msg.metadata)
        yield "the helper "
        yield f"did: {msg.text}"

    await start_agent(helper)

    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=f"done: {last['content']}")
        return Reply(tool_calls=[("delegate", {"agent_id": "helper-agent", "task": "wash up"})])

    await start_model(brain)
    events = [
        e
        async for e in make_runtime().ainfer_stream(
            InferenceRequest(model_id="m", tool_ids=["delegate"], text="go")
        )
    ]
    assert (
        "".join(e.content or "" for e in events if e.path == ["call_1"])
        == "the helper did: wash up"
    )
    assert InferenceResult.assemble(events).content == "done: the helper did: wash up"
    assert seen[0]["runtime"]["depth"] == 1


async def test_nested_delegation_stops_at_the_depth_limit(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=f"[{last['content']}]")
        return Reply(tool_calls=[("delegate", {"task": "go deeper"})])  # every level delegates

    upstream = await start_model(brain)
    result = await make_runtime().ainfer(
        InferenceRequest(model_id="m", tool_ids=["delegate"], text="go")
    )
    # root → depth 1 → 2 → 3; the fourth delegation is refused and its error read by depth 3.
    assert "delegation depth limit reached (3)" in result.content
    assert result.content.count("[") == 4
    assert len([r for r in upstream.requests if is_subagent(r)]) == 6  # 3 levels × 2 calls


async def test_a_delegation_cycle_between_agents_is_refused() -> None:
    from agentmesh.agents.runtime.lineage import Lineage
    from agentmesh.schemas.errors import InvalidMessage

    lineage = Lineage.from_metadata({"depth": 1, "agents": ["a", "b"]}, agent_id="b", max_depth=5)
    try:
        lineage.child("call_1", "a")
    except InvalidMessage as exc:
        assert "cycle: a → b → a" in exc.message
    else:
        raise AssertionError("a cycle was allowed")
