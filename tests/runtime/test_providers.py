"""The runtime through each provider translation of the LLM worker: a scripted model speaking
OpenAI's, Anthropic's or Ollama's own API behind a real worker, the runtime on the bus. Tool
rounds (and the call after the last round, and a session's next turn, without tools), parallel
calls, thinking, images; what reaches each upstream in its own format; the worker's streamed
and JSON answers agreeing. Then the scripted upstreams themselves: read by the official SDKs as
the real APIs are, refusing what the real APIs refuse."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime import (
    EventType,
    InferenceRequest,
    InferenceResult,
    Message,
    ToolRegistry,
    function_tool,
)
from agentmesh.agents.runtime.messages import ModelTurn
from agentmesh.schemas.runtime import ToolCall
from tests.runtime.conftest import SCRIPTED, MakeRuntime, StartModel
from tests.runtime.scripted_llm import (
    Body,
    Reply,
    ScriptedOpenAI,
    last_role,
    last_text,
    plan,
    tool_names,
    tool_results,
)
from tests.runtime.scripted_providers import ScriptedAnthropic

PROVIDERS = ["openai", "anthropic", "ollama"]
per_provider = pytest.mark.parametrize("provider", PROVIDERS)
PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def adding() -> ToolRegistry:
    tools = ToolRegistry()
    tools.register(add)
    return tools


def sent_calls(provider: str, message: Body) -> list[tuple[str | None, str, dict[str, Any]]]:
    """(id, name, arguments) of the tool calls of an assistant message as an upstream got it."""
    if provider == "anthropic":
        blocks = [b for b in message["content"] if b["type"] == "tool_use"]
        return [(b["id"], b["name"], b["input"]) for b in blocks]
    calls = [c["function"] | {"id": c.get("id")} for c in message["tool_calls"]]
    return [
        (c["id"], c["name"], c["arguments"] if provider == "ollama" else json.loads(c["arguments"]))
        for c in calls
    ]


def sent_results(provider: str, body: Body) -> list[tuple[str, str]]:
    """(what names the call, result) of each tool result an upstream got at the end of `body`:
    the call id for OpenAI and Anthropic, the tool's name for Ollama (which has no ids)."""
    messages = body["messages"]
    if provider == "anthropic":
        last = messages[-1]
        assert last["role"] == "user"
        return [(b["tool_use_id"], b["content"]) for b in last["content"]]
    results = []
    for message in reversed(messages):
        if message["role"] != "tool":
            break
        name = message["tool_name"] if provider == "ollama" else message["tool_call_id"]
        results.insert(0, (name, message["content"]))
    return results


# (a) A two-round tool plan ----------------------------------------------------------------------
@per_provider
async def test_a_tool_round_reaches_the_upstream_in_its_format_and_the_model_answers(
    provider: str, start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    def brain(body: Body) -> Reply:
        if last_role(body) == "tool":
            return Reply(content=f"the tool said: {last_text(body)}")
        return Reply(tool_calls=[("add", {"a": 2, "b": 3})])

    upstream = await start_model(brain, provider=provider)
    runtime = make_runtime(tool_registry=adding())
    result = await runtime.ainfer(InferenceRequest(model_id="m", tool_ids=["add"], text="2+3?"))

    assert result.content == "the tool said: 5"
    assert [m.role for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    call = result.messages[1].tool_calls[0]
    assert (call.name, call.arguments) == ("add", {"a": 2, "b": 3})
    assert result.rounds == 2 and result.usage.total_tokens == 30
    assert result.finish_reason == "stop"
    first, second = upstream.requests
    assert tool_names(first) == ["add"]
    schema = first["tools"][0] if provider == "anthropic" else first["tools"][0]["function"]
    parameters = schema["input_schema" if provider == "anthropic" else "parameters"]
    assert schema["description"] == "Add two integers." and parameters["required"] == ["a", "b"]
    # The call goes back as the model made it, then its result, in the upstream's format.
    assistant = second["messages"][-2]
    assert sent_calls(provider, assistant) == [
        (None if provider == "ollama" else call.id, "add", {"a": 2, "b": 3})
    ]
    if provider == "openai":
        assert call.id == "call_1"
        assert second["messages"][-1] == {"role": "tool", "tool_call_id": "call_1", "content": "5"}
    elif provider == "anthropic":
        assert call.id == "toolu_1"
        assert second["messages"][-1] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "5"}],
        }
    else:
        assert call.id.startswith("call_")  # Ollama has no ids: the worker makes one up
        assert second["messages"][-1] == {"role": "tool", "content": "5", "tool_name": "add"}


@per_provider
async def test_after_max_tool_rounds_the_model_answers_without_tools_over_its_tool_history(
    provider: str, start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    """The last call offers no tools but carries the rounds' calls and results: Anthropic takes
    that only with tools defined, so they are, with tool_choice none (it may not call them)."""

    def brain(body: Body) -> Reply:
        if provider == "anthropic" and body.get("tool_choice") == {"type": "none"}:
            return Reply(content="stopping here")
        if body.get("tools"):
            return Reply(tool_calls=[("add", {"a": 1, "b": 1})])
        return Reply(content="stopping here")

    upstream = await start_model(brain, provider=provider)
    runtime = make_runtime(tool_registry=adding())
    result = await runtime.ainfer(
        InferenceRequest(model_id="m", tool_ids=["add"], text="loop", max_tool_rounds=2)
    )
    assert result.finish_reason == "max_tool_rounds" and result.content == "stopping here"
    assert len(upstream.requests) == 3
    last = upstream.requests[-1]
    assert tool_results(last) == ["2"]
    if provider == "anthropic":
        assert last["tool_choice"] == {"type": "none"} and tool_names(last) == ["add"]
    else:
        assert "tools" not in last


@per_provider
async def test_a_session_with_tool_calls_continues_in_a_turn_without_tools(
    provider: str, start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    def brain(body: Body) -> Reply:
        if last_role(body) == "tool":
            return Reply(content=f"it is {last_text(body)}")
        if body.get("tools") and body.get("tool_choice") != {"type": "none"}:
            return Reply(tool_calls=[("add", {"a": 2, "b": 2})])
        return Reply(content=f"I said so after {len(body['messages'])} messages")

    upstream = await start_model(brain, provider=provider)
    runtime = make_runtime(tool_registry=adding())
    first = await runtime.ainfer(
        InferenceRequest(model_id="m", tool_ids=["add"], text="2+2?", session_id="new")
    )
    assert first.content == "it is 4"
    second = await runtime.ainfer(
        InferenceRequest(model_id="m", text="sure?", session_id=first.session_id)
    )
    assert second.content == "I said so after 5 messages"  # user, call, result, answer, user
    assert tool_names(upstream.requests[-1]) == (["add"] if provider == "anthropic" else [])


# (b) Thinking, and the stream assembling into the answer ------------------------------------
def thinking_script() -> Any:
    return plan(
        Reply(
            thinking="I should add.", content="Let me add.", tool_calls=[("add", {"a": 1, "b": 2})]
        ),
        Reply(thinking="Got it.", content="It is 3."),
    )


def without_ids(result: InferenceResult) -> Body:
    """The result with tool-call ids numbered in order (Ollama's are made up per call)."""
    dumped = result.model_dump_json()
    for n, message in enumerate(m for m in result.messages if m.tool_calls):
        for i, c in enumerate(message.tool_calls):
            dumped = dumped.replace(c.id, f"id-{n}-{i}")
    return json.loads(dumped)


@per_provider
async def test_thinking_streams_as_thinking_events_and_the_stream_assembles_into_the_answer(
    provider: str, start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    await start_model(thinking_script(), provider=provider)
    runtime = make_runtime(tool_registry=adding())
    request = InferenceRequest(model_id="m", tool_ids=["add"], text="1+2?")
    events = [e async for e in runtime.ainfer_stream(request)]

    kinds = [e.type for e in events]
    assert kinds[0] is EventType.START and kinds[-1] is EventType.DONE
    thinking = [e for e in events if e.type is EventType.THINKING]
    assert len(thinking) > 2  # in pieces, as they came
    for round_, text in enumerate(["I should add.", "Got it."]):
        assert "".join(e.thinking or "" for e in thinking if e.round == round_) == text
    first_content = kinds.index(EventType.CONTENT)
    assert kinds.index(EventType.THINKING) < first_content  # thinking comes first
    fragments = [e.arguments for e in events if e.type is EventType.TOOL_CALL_DELTA]
    assert json.loads("".join(fragments)) == {"a": 1, "b": 2}
    assembled = InferenceResult.assemble(events)
    assert assembled.messages[1].thinking == "I should add."
    assert assembled.messages[1].content == "Let me add."
    assert assembled.content == "It is 3." and assembled.messages[-1].thinking == "Got it."
    assert assembled.usage.total_tokens == 30

    await start_model(thinking_script(), alias="m2", provider=provider)
    direct = await runtime.ainfer(request.model_copy(update={"model_id": "m2"}))
    assert without_ids(direct) == without_ids(assembled)


@per_provider
async def test_the_workers_streamed_and_json_answers_agree(
    provider: str, start_model: StartModel, mesh: MeshClient
) -> None:
    """What the runtime reads from a stream is what the provider's JSON answer says."""
    reply = Reply(
        thinking="Two calls.",
        content="Adding twice.",
        tool_calls=[("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4})],
    )
    await start_model(plan(reply), provider=provider)
    llm = mesh.llm("m")
    messages = [{"role": "user", "content": "1+2 and 3+4?"}]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    turn = ModelTurn(0, [])
    async for chunk in await llm.chat(messages, stream=True, tools=tools):
        turn.feed(chunk)
    streamed = turn.message()
    answer = await llm.chat(messages, tools=tools)
    choice = answer["choices"][0]
    message = choice["message"]
    assert choice["finish_reason"] == turn.finish_reason == "tool_calls"
    assert streamed.content == message["content"] == "Adding twice."
    assert streamed.thinking == message["reasoning_content"] == "Two calls."
    calls = [
        ToolCall(
            id=c["id"], name=c["function"]["name"], arguments=json.loads(c["function"]["arguments"])
        )
        for c in message["tool_calls"]
    ]
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [
        (c.name, c.arguments) for c in calls
    ]
    assert [c.arguments for c in calls] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert answer["usage"]["total_tokens"] == 15


# (c) Parallel calls ---------------------------------------------------------------------------
@per_provider
async def test_two_parallel_calls_both_run_and_both_results_go_back(
    provider: str, start_model: StartModel, make_runtime: MakeRuntime
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
        ),
        provider=provider,
    )
    tools = ToolRegistry()
    tools.register(slow)
    runtime = make_runtime(tool_registry=tools)
    result = await runtime.ainfer(InferenceRequest(model_id="m", tool_ids=["slow"], text="go"))

    assert result.content == "both done"
    ids = [c.id for c in result.messages[1].tool_calls]
    assert len(set(ids)) == 2
    second = upstream.requests[1]
    assert tool_results(second) == ["done first", "done second"]
    named = ["slow", "slow"] if provider == "ollama" else ids
    assert sent_results(provider, second) == list(
        zip(named, ["done first", "done second"], strict=True)
    )
    assistant = second["messages"][-2 if provider == "anthropic" else -3]
    assert [args for _, _, args in sent_calls(provider, assistant)] == [
        {"name": "first"},
        {"name": "second"},
    ]


# (d) Images -----------------------------------------------------------------------------------
@per_provider
async def test_an_image_reaches_each_upstream_in_its_own_format(
    provider: str, start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(plan(Reply(content="a red pixel")), provider=provider)
    runtime = make_runtime()
    result = await runtime.ainfer(
        InferenceRequest(
            model_id="m",
            messages=[Message(role="user", content="What is this?", images=[PIXEL])],
        )
    )
    assert result.content == "a red pixel"
    sent = upstream.requests[0]["messages"][-1]
    assert last_text(upstream.requests[0]) == "What is this?"
    if provider == "openai":
        assert sent["content"] == [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        ]
    elif provider == "anthropic":
        assert sent == {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
                },
            ],
        }
    else:
        assert sent == {"role": "user", "content": "What is this?", "images": [PIXEL]}


# The scripted upstreams speak what the official SDKs read -----------------------------------
async def test_the_official_sdks_read_the_scripted_upstreams_json_and_streams() -> None:
    reply = Reply(thinking="Hmm.", content="Adding.", tool_calls=[("add", {"a": 1, "b": 2})])
    claude = await ScriptedAnthropic(plan(reply)).start()
    gpt = await ScriptedOpenAI(plan(reply)).start()
    try:
        client = anthropic.AsyncAnthropic(base_url=claude.base_url, api_key="sk", max_retries=0)
        ask: Any = {
            "model": "claude",
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": "1+2?"}],
        }
        message = await client.messages.create(**ask)
        async with client.messages.stream(**ask) as stream:
            streamed = await stream.get_final_message()
        for m in (message, streamed):
            assert [b.type for b in m.content] == ["thinking", "text", "tool_use"]
            thought, text, use = m.content
            assert thought.thinking == "Hmm." and thought.signature  # type: ignore[union-attr]
            assert text.text == "Adding."  # type: ignore[union-attr]
            assert use.input == {"a": 1, "b": 2}  # type: ignore[union-attr]
            assert m.stop_reason == "tool_use"
            assert (m.usage.input_tokens, m.usage.output_tokens) == (10, 5)
        # A tool_result that answers no tool_use is refused, as Anthropic refuses it.
        orphan = {"type": "tool_result", "tool_use_id": "toolu_9", "content": "3"}
        with pytest.raises(anthropic.BadRequestError, match="unexpected `tool_use_id`"):
            await client.messages.create(
                **{**ask, "messages": [{"role": "user", "content": [orphan]}]},
                tools=[{"name": "add", "input_schema": {"type": "object"}}],
            )

        oa = openai.AsyncOpenAI(base_url=gpt.base_url, api_key="sk", max_retries=0)
        chat: Any = {"model": "m", "messages": [{"role": "user", "content": "1+2?"}]}
        completion = await oa.chat.completions.create(**chat)
        assert completion.choices[0].message.tool_calls[0].function.arguments == '{"a": 1, "b": 2}'
        chunks = [c async for c in await oa.chat.completions.create(**chat, stream=True)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Adding." and chunks[-1].usage.total_tokens == 15
    finally:
        await claude.stop()
        await gpt.stop()


REFUSED = [  # (provider, request body, what the upstream says)
    (
        "openai",
        {"model": "m", "messages": [{"role": "tool", "tool_call_id": "call_9", "content": "3"}]},
        "must be a response to a preceeding message with 'tool_calls'",
    ),
    (
        "openai",
        {
            "model": "m",
            "messages": [
                {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]},
                {"role": "user", "content": "and?"},
            ],
        },
        "must be followed by tool messages",
    ),
    (
        "anthropic",
        {"model": "m", "max_tokens": 9, "messages": [{"role": "tool", "content": "3"}]},
        "unexpected role 'tool'",
    ),
    (
        "anthropic",
        {
            "model": "m",
            "max_tokens": 9,
            "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}],
        },
        "text content blocks must be non-empty",
    ),
    (
        "anthropic",
        {
            "model": "m",
            "max_tokens": 9,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/jpg", "data": PIXEL},
                        }
                    ],
                }
            ],
        },
        "media_type must be one of",
    ),
    (
        "anthropic",
        {
            "model": "m",
            "max_tokens": 9,
            "tools": [{"name": "add", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "1+2?"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "add", "input": {}}],
                },
                {"role": "user", "content": "and?"},
            ],
        },
        "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
    ),
    (
        "anthropic",
        {
            "model": "m",
            "max_tokens": 9,
            "messages": [
                {"role": "user", "content": "1+2?"},
                {
                    "role": "assistant",
                    "content": [{"type": "thinking", "thinking": "made up", "signature": "x"}],
                },
            ],
        },
        "Invalid `signature`",
    ),
    (
        "ollama",
        {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        "cannot unmarshal list into string",
    ),
    (
        "ollama",
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "?", "images": [f"data:image/png;base64,{PIXEL}"]}
            ],
        },
        "illegal base64 data",
    ),
    (
        "ollama",
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "add", "arguments": '{"a": 1}'}}],
                }
            ],
        },
        "object arguments",
    ),
]


@pytest.mark.parametrize(("provider", "body", "reason"), REFUSED)
async def test_the_scripted_upstreams_refuse_what_their_apis_refuse(
    provider: str, body: Body, reason: str
) -> None:
    upstream = await SCRIPTED[provider](plan(Reply(content="never"))).start()
    path = {"openai": "/chat/completions", "anthropic": "/v1/messages", "ollama": "/api/chat"}
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "sk"}
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                upstream.base_url + path[provider], json=body, headers=headers
            )
    finally:
        await upstream.stop()
    assert answer.status_code == 400
    assert reason in answer.text


async def test_reasoning_on_a_thinking_model_sends_its_signed_thinking_back_after_a_tool_call(
    start_model: StartModel, make_runtime: MakeRuntime
) -> None:
    upstream = await start_model(thinking_script(), provider="anthropic")
    runtime = make_runtime(tool_registry=adding())
    request = InferenceRequest(
        model_id="m", tool_ids=["add"], text="1+2?", reasoning_effort="low", max_tokens=4096
    )
    events = [e async for e in runtime.ainfer_stream(request)]
    first, second = upstream.requests
    assert first["thinking"]["type"] == "enabled"  # reasoning_effort reached the model
    # The assistant turn goes back starting with its signed thinking block (Anthropic refuses
    # a tool round of a thinking model otherwise; the scripted upstream checks the signature).
    assistant = second["messages"][1]
    assert assistant["content"][0]["type"] == "thinking"
    assert assistant["content"][0]["thinking"] == "I should add."
    result = InferenceResult.assemble(events)
    assert result.content == "It is 3."
    assert result.messages[1].thinking_blocks[0]["signature"]
