"""The `anthropic` provider through a worker on the bus: OpenAI-shaped calls in and out, Anthropic
Messages on the wire (text, tools, system, images, thinking, streaming, failures)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.schemas.errors import InvalidMessage, RateLimited
from tests.workers.fake_anthropic import FakeAnthropic
from tests.workers.fixtures import StartWorker

HELLO = [{"role": "user", "content": "hello mesh"}]
WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    fake = await FakeAnthropic(api_key="sk-ant-test").start()
    yield fake
    await fake.stop()


def anthropic_model(name: str, *upstreams: FakeAnthropic) -> dict[str, Any]:
    return {
        "name": name,
        "deployments": [
            {
                "provider": "anthropic",
                "base_url": u.base_url,
                "model": f"claude-{i}",
                "api_key": "sk-ant-test",
                "priority": i,
            }
            for i, u in enumerate(upstreams)
        ],
    }


@pytest.fixture
async def sonnet(start_worker: StartWorker, claude: FakeAnthropic) -> str:
    await start_worker({"models": [anthropic_model("claude-sonnet", claude)]})
    return "claude-sonnet"


def deltas(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(c["choices"][0]["delta"].get(field) or "" for c in chunks if c["choices"])


async def test_a_text_reply_comes_back_in_openai_shape_with_usage(
    mesh: MeshClient, sonnet: str, claude: FakeAnthropic
) -> None:
    reply = await mesh.llm(sonnet).chat(HELLO)
    choice = reply["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "hello from claude"}
    assert choice["finish_reason"] == "stop" and reply["object"] == "chat.completion"
    assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert reply["agentmesh"]["deployment"] == "anthropic:claude-0"
    sent = claude.requests[0]
    assert sent["headers"]["x-api-key"] == "sk-ant-test"
    assert sent["headers"]["anthropic-version"] == "2023-06-01"
    assert sent["body"] == {
        "model": "claude-0",
        "messages": [{"role": "user", "content": "hello mesh"}],
        "max_tokens": 4096,  # Anthropic requires it; OpenAI callers rarely send it
    }


async def test_streamed_text_arrives_as_openai_chunks_ending_with_usage(
    mesh: MeshClient, sonnet: str, claude: FakeAnthropic
) -> None:
    chunks = [c async for c in await mesh.llm(sonnet).chat(HELLO, stream=True)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert deltas(chunks, "content") == "hello from claude"
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert claude.last["stream"] is True


async def test_system_messages_and_sampling_fields_map_and_openai_only_fields_are_dropped(
    mesh: MeshClient, sonnet: str, claude: FakeAnthropic
) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        *HELLO,
    ]
    # The fake rejects unknown fields as Anthropic does: seed, n and logprobs must not reach it.
    await mesh.llm(sonnet).chat(
        messages,
        max_completion_tokens=100,
        temperature=0.3,
        top_p=0.9,
        stop="END",
        user="u-1",
        seed=7,
        n=1,
        logprobs=False,
    )
    assert claude.last == {
        "model": "claude-0",
        "system": "You are terse.\n\nAnswer in French.",
        "messages": [{"role": "user", "content": "hello mesh"}],
        "max_tokens": 100,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }


async def test_openai_tools_become_anthropic_tools_and_tool_use_comes_back_as_tool_calls(
    mesh: MeshClient, sonnet: str, claude: FakeAnthropic
) -> None:
    reply = await mesh.llm(sonnet).chat(HELLO, tools=WEATHER, tool_choice="required")
    assert claude.last["tools"] == [
        {
            "name": "get_weather",
            "description": "The weather in a city.",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    assert claude.last["tool_choice"] == {"type": "any"}
    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call == {
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    chunks = [c async for c in await mesh.llm(sonnet).chat(HELLO, tools=WEATHER, stream=True)]
    calls = [
        t for c in chunks if c["choices"] for t in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    arguments = "".join(t["function"]["arguments"] for t in calls)
    assert json.loads(arguments) == {"city": "Paris"} and len(calls) == 3  # start + 2 fragments
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"


async def test_tool_results_go_back_as_tool_result_blocks_in_one_user_turn(
    mesh: MeshClient, sonnet: str, claude: FakeAnthropic
) -> None:
    calls = [
        {
            "id": f"toolu_{i}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": args},
        }
        for i, args in enumerate(['{"city": "Paris"}', '{"city": "Oslo"}'])
    ]
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "toolu_0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_1", "content": [{"type": "text", "text": "snow"}]},
    ]
    reply = await mesh.llm(sonnet).chat(messages, tools=WEATHER, parallel_tool_calls=False)
    assert reply["choices"][0]["message"]["content"] == "the tool said: sunny"
    assert claude.last["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_0",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_0", "content": "sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "snow"}],
                },
            ],
        },
    ]
    assert claude.last["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


async def test_a_tool_history_without_tools_defines_the_tools_called_but_lets_none_be_called(
    mesh: MeshClient, sonnet: str, claude: FakeAnthropic
) -> None:
    """Anthropic refuses tool_use/tool_result blocks in a request without tools (an agent's
    last call after its tool rounds sends none): the tools called are defined, not callable."""
    call = {
        "id": "toolu_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        *HELLO,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "toolu_0", "content": "sunny"},
    ]
    reply = await mesh.llm(sonnet).chat(messages)
    assert reply["choices"][0]["message"]["content"] == "the tool said: sunny"
    assert claude.last["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert claude.last["tool_choice"] == {"type": "none"}
    await mesh.llm(sonnet).chat(HELLO)  # no tool blocks: no tools
    assert "tools" not in claude.last and "tool_choice" not in claude.last


async def test_a_base64_image_becomes_an_image_block(
    mesh: MeshClient, sonnet: str, claude: FakeAnthropic
) -> None:
    content = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
    ]
    await mesh.llm(sonnet).chat([{"role": "user", "content": content}])
    assert claude.last["messages"][0]["content"] == [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]


async def test_reasoning_effort_turns_thinking_on_and_thinking_comes_back_as_reasoning_content(
    mesh: MeshClient, sonnet: str, claude: FakeAnthropic
) -> None:
    reply = await mesh.llm(sonnet).chat(HELLO, reasoning_effort="medium")
    assert claude.last["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert claude.last["max_tokens"] > 4096  # the budget counts against max_tokens
    message = reply["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think it over."
    assert message["content"] == "hello from claude"
    assert message["thinking_blocks"] == [
        {"type": "thinking", "thinking": "Let me think it over.", "signature": "sig-1"}
    ]
    # Streamed: reasoning_content deltas, then the signed block whole.
    thinking = {"type": "enabled", "budget_tokens": 2000}
    chunks = [
        c
        async for c in await mesh.llm(sonnet).chat(
            HELLO, thinking=thinking, max_tokens=3000, stream=True
        )
    ]
    assert claude.last["thinking"] == thinking and claude.last["max_tokens"] == 3000
    assert deltas(chunks, "reasoning_content") == "Let me think it over."
    assert deltas(chunks, "content") == "hello from claude"
    signed = [
        b
        for c in chunks
        if c["choices"]
        for b in c["choices"][0]["delta"].get("thinking_blocks") or []
    ]
    assert signed == message["thinking_blocks"]
    # Sent back with the assistant's turn, the signed block is what Anthropic needs.
    turn = [*HELLO, message, {"role": "user", "content": "and?"}]
    await mesh.llm(sonnet).chat(turn, reasoning_effort="low", max_tokens=2048)
    assert claude.last["messages"][1]["content"][0] == message["thinking_blocks"][0]
    assert claude.last["thinking"]["budget_tokens"] < 2048


async def test_an_overloaded_deployment_fails_over_to_the_next_and_cools_down(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    primary = await FakeAnthropic(reply="primary").start()
    backup = await FakeAnthropic(reply="backup").start()
    try:
        await start_worker({"models": [anthropic_model("m", primary, backup)]})
        primary.fail(529)
        reply = await mesh.llm("m").chat(HELLO)
        assert reply["choices"][0]["message"]["content"] == "backup"
        assert reply["agentmesh"]["attempts"][0]["status"] == 529
        chunks = [c async for c in await mesh.llm("m").chat(HELLO, stream=True)]
        assert deltas(chunks, "content") == "backup"  # the primary is cooling down
        assert len(primary.requests) == 1
    finally:
        await primary.stop()
        await backup.stop()


async def test_an_error_event_before_any_token_fails_over_while_streaming(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    primary = await FakeAnthropic(reply="primary").start()
    backup = await FakeAnthropic(reply="backup").start()
    try:
        await start_worker({"models": [anthropic_model("m", primary, backup)]})
        primary.break_stream("overloaded_error", after_text=False)
        chunks = [c async for c in await mesh.llm("m").chat(HELLO, stream=True)]
        assert deltas(chunks, "content") == "backup"
        assert chunks[0]["agentmesh"]["attempts"][0]["status"] == 529
    finally:
        await primary.stop()
        await backup.stop()


async def test_a_rate_limited_deployment_reports_its_retry_after(
    mesh: MeshClient, start_worker: StartWorker, claude: FakeAnthropic
) -> None:
    await start_worker({"models": [anthropic_model("m", claude)]})
    claude.fail(429, retry_after=30)
    with pytest.raises(RateLimited) as limited:
        await mesh.llm("m").chat(HELLO)
    assert limited.value.details["attempts"][0]["status"] == 429
    with pytest.raises(RateLimited) as cooling:  # not called again while cooling down
        await mesh.llm("m").chat(HELLO)
    assert 25 < cooling.value.retry_after <= 30
    assert len(claude.requests) == 1


async def test_a_rejected_request_reads_as_invalid_and_is_not_retried(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    first, second = await FakeAnthropic().start(), await FakeAnthropic().start()
    try:
        await start_worker({"models": [anthropic_model("m", first, second)]})
        first.fail(400)
        with pytest.raises(InvalidMessage):
            await mesh.llm("m").chat(HELLO)
        # A request with no Anthropic equivalent is refused before any upstream call.
        with pytest.raises(InvalidMessage, match="no Anthropic equivalent"):
            await mesh.llm("m").chat([{"role": "user", "content": [{"type": "input_audio"}]}])
        assert second.requests == [] and len(first.requests) == 1
    finally:
        await first.stop()
        await second.stop()


async def test_a_deployment_slower_than_its_timeout_fails_over_to_the_next(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    slow = await FakeAnthropic(reply="slow", latency=1.0).start()
    fast = await FakeAnthropic(reply="fast").start()
    try:
        config = anthropic_model("m", slow, fast)
        config["deployments"][0]["timeout"] = 0.1
        await start_worker({"models": [config]})
        reply = await mesh.llm("m").chat(HELLO)
        assert reply["choices"][0]["message"]["content"] == "fast"
        assert "timed out" in reply["agentmesh"]["attempts"][0]["error"]
    finally:
        await slow.stop()
        await fast.stop()
