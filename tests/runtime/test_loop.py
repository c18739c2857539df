"""The inference loop over the mesh: a scripted model behind a real LLM worker, function and
MCP tools, parallel calls, failures as results, the round limit, streaming = non-streaming."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentmesh.agents.runtime import (
    EventType,
    InferenceRequest,
    InferenceResult,
    Message,
    ToolConfig,
    ToolRegistry,
    function_tool,
)
from agentmesh.schemas.errors import ModelNotFound, ToolNotFound
from tests.mcp.fixtures import TIME, StartMCPWorker
from tests.runtime.conftest import MakeRuntime, StartModel
from tests.runtime.scripted_llm import Reply, last_message, plan, tool_names


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def answer_with_tool_result(tool: str, args: dict[str, Any]):  # noqa: ANN201 - a Brain
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=f"the tool said: {last['content']}")
        return Reply(tool_calls=[(tool, args)])

    return brain


async def test_a_function_tool_is_called_and_its_result_reaches_the_model(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(answer_with_tool_result("add", {"a": 2, "b": 3}))
    tools = ToolRegistry()
    tools.register(add)
    runtime = make_runtime(tool_registry=tools)
    result = await runtime.ainfer(InferenceRequest(model_id="m", tool_ids=["add"], text="2+3?"))
    assert result.content == "the tool said: 5"
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert result.messages[1].tool_calls[0].arguments == {"a": 2, "b": 3}
    first, second = upstream.requests
    schema = first["tools"][0]["function"]
    assert schema["name"] == "add" and schema["description"] == "Add two integers."
    assert schema["parameters"]["required"] == ["a", "b"]
    assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "5"}
    assert result.rounds == 2 and result.usage.total_tokens == 30


async def test_a_seed_style_tool_config_with_a_callable_works(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    await start_model(answer_with_tool_result("web_search", {"query": "python"}))
    tools = ToolRegistry()
    tools.register(
        ToolConfig(
            tool_id="web_search",
            tool_type="function",
            name="web_search",
            description="Search the internet for information.",
            parameters={
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        ),
        callable_fn=lambda query: {"hits": [f"{query} 3.14 released"]},
    )
    runtime = make_runtime(tool_registry=tools)
    result = await runtime.ainfer(
        InferenceRequest(
            model_id="m",
            tool_ids=["web_search"],
            messages=[Message(role="user", content="What is the latest Python version?")],
        )
    )
    assert result.messages[-1].content == 'the tool said: {"hits": ["python 3.14 released"]}'


async def test_the_stream_assembles_into_exactly_the_non_streaming_answer(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    await start_model(
        plan(
            Reply(
                thinking="I should add.",
                content="Let me add.",
                tool_calls=[("add", {"a": 1, "b": 2})],
            ),
            Reply(thinking="Got it.", content="It is 3."),
        )
    )
    tools = ToolRegistry()
    tools.register(add)
    runtime = make_runtime(tool_registry=tools)
    request = InferenceRequest(model_id="m", tool_ids=["add"], text="1+2?")
    events = [e async for e in runtime.ainfer_stream(request)]
    kinds = [e.type for e in events]
    assert kinds[0] is EventType.START and kinds[-1] is EventType.DONE
    for kind in (
        EventType.THINKING,
        EventType.CONTENT,
        EventType.TOOL_CALL_START,
        EventType.TOOL_CALL_DELTA,
        EventType.TOOL_CALL,
        EventType.TOOL_RESULT,
        EventType.USAGE,
    ):
        assert kind in kinds
    assert "".join(e.thinking or "" for e in events if e.round == 0) == "I should add."
    deltas = "".join(e.arguments or "" for e in events if e.type is EventType.TOOL_CALL_DELTA)
    assert json.loads(deltas) == {"a": 1, "b": 2}
    assembled = InferenceResult.assemble(events)
    # The same script again, not streamed: the same result.
    await start_model(
        plan(
            Reply(
                thinking="I should add.",
                content="Let me add.",
                tool_calls=[("add", {"a": 1, "b": 2})],
            ),
            Reply(thinking="Got it.", content="It is 3."),
        ),
        alias="m2",
    )
    direct = await runtime.ainfer(request.model_copy(update={"model_id": "m2"}))
    assert direct.model_dump() == assembled.model_dump()
    assert assembled.messages[1].thinking == "I should add."
    assert assembled.content == "It is 3."
    # And what the stream's events say over JSON (an SSE client) assembles the same.
    from agentmesh.schemas.runtime import StreamEvent

    over_json = [StreamEvent.model_validate_json(e.model_dump_json()) for e in events]
    assert InferenceResult.assemble(over_json).model_dump() == assembled.model_dump()


async def test_parallel_tool_calls_run_concurrently_and_results_keep_call_order(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    barrier = asyncio.Barrier(2)  # passes only when both tools run at the same time

    @function_tool
    async def slow(name: str) -> str:
        """Wait for the other tool."""
        async with asyncio.timeout(10):
            await barrier.wait()
        return f"done {name}"

    upstream = await start_model(
        plan(
            Reply(tool_calls=[("slow", {"name": "first"}), ("slow", {"name": "second"})]),
            Reply(content="both done"),
        )
    )
    tools = ToolRegistry()
    tools.register(slow)
    runtime = make_runtime(tool_registry=tools)
    result = await runtime.ainfer(InferenceRequest(model_id="m", tool_ids=["slow"], text="go"))
    assert result.content == "both done"
    sent = upstream.requests[1]["messages"][-2:]
    assert [m["content"] for m in sent] == ["done first", "done second"]
    assert [m["tool_call_id"] for m in sent] == ["call_1", "call_2"]


async def test_failing_slow_and_unknown_tools_become_results_the_model_reads(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    @function_tool
    def broken() -> str:
        """Always fails."""
        raise ValueError("the disk is full")

    async def sleepy() -> str:
        await asyncio.Event().wait()  # never returns: only the tool's timeout ends it
        return "never"

    tools = ToolRegistry()
    tools.register(broken)
    tools.register(
        ToolConfig(tool_id="sleepy", name="sleepy", description="Hangs.", timeout=0.3),
        callable_fn=sleepy,
    )
    upstream = await start_model(
        plan(
            Reply(tool_calls=[("broken", {}), ("sleepy", {}), ("nosuch", {})]),
            Reply(content="I could not do it"),
        )
    )
    runtime = make_runtime(tool_registry=tools)
    request = InferenceRequest(model_id="m", tool_ids=["broken", "sleepy"], text="try")
    events = [e async for e in runtime.ainfer_stream(request)]
    results = {e.tool_name: e for e in events if e.type is EventType.TOOL_RESULT}
    assert all(r.is_error for r in results.values())
    assert results["broken"].result == "Error: ValueError: the disk is full"
    assert "TIMEOUT" in results["sleepy"].result and "0.3 s" in results["sleepy"].result
    assert "no tool 'nosuch'" in results["nosuch"].result
    assert events[-1].type is EventType.DONE
    assert len(upstream.requests) == 2  # the model read the three errors and answered


async def test_max_tool_rounds_bounds_the_loop_and_the_model_answers_without_tools(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        if body.get("tools"):
            return Reply(tool_calls=[("add", {"a": 1, "b": 1})])
        return Reply(content="stopping here")

    upstream = await start_model(brain)
    tools = ToolRegistry()
    tools.register(add)
    runtime = make_runtime(tool_registry=tools)
    result = await runtime.ainfer(
        InferenceRequest(model_id="m", tool_ids=["add"], text="loop", max_tool_rounds=2)
    )
    assert len(upstream.requests) == 3
    assert [bool(r.get("tools")) for r in upstream.requests] == [True, True, False]
    assert result.finish_reason == "max_tool_rounds" and result.content == "stopping here"


async def test_mcp_tools_are_called_through_the_mesh_workers(
    start_model: StartModel, make_runtime: MakeRuntime, start_mcp_worker: StartMCPWorker
) -> None:
    await start_mcp_worker({"time": TIME})
    upstream = await start_model(
        answer_with_tool_result("time_get_current_time", {"timezone": "UTC"})
    )
    runtime = make_runtime()
    result = await runtime.ainfer(
        InferenceRequest(model_id="m", tool_ids=["mcp:time"], text="What time is it now?")
    )
    assert "time_get_current_time" in tool_names(upstream.requests[0])
    assert "time_convert_time" in tool_names(upstream.requests[0])
    assert '"timezone": "UTC"' in result.content
    one = await runtime.ainfer(
        InferenceRequest(model_id="m", tool_ids=["time_get_current_time"], text="now?")
    )
    assert '"timezone": "UTC"' in one.content


async def test_an_unknown_tool_id_or_model_is_a_clear_error_before_any_model_call(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(plan(Reply(content="hi")))
    runtime = make_runtime()
    with pytest.raises(ToolNotFound, match="nosuch"):
        await runtime.ainfer(InferenceRequest(model_id="m", tool_ids=["nosuch"], text="x"))
    assert upstream.requests == []
    with pytest.raises(ModelNotFound, match="nomodel"):
        await runtime.ainfer(InferenceRequest(model_id="nomodel", text="x"))


async def test_images_and_audio_reach_the_model_as_content_parts(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(plan(Reply(content="a cat")))
    runtime = make_runtime()
    await runtime.ainfer(
        InferenceRequest(
            model_id="m",
            messages=[
                Message(
                    role="user",
                    content="What is this?",
                    images=["iVBORw0KGgo="],
                    audio=["data:audio/mp3;base64,SUQz"],
                )
            ],
        )
    )
    parts = upstream.requests[0]["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "What is this?"}
    assert parts[1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    assert parts[2] == {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}}
