"""The Ollama provider against a real server speaking Ollama's `/api/chat`: requests and replies
mapped both ways, streams, tool calls, images, thinking and errors; then the same deployment
behind an LLM worker, called over the bus and with the official `openai` SDK via the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.broker.servers import free_port
from agentmesh.workers.llm.config import Deployment
from agentmesh.workers.llm.providers.base import ProviderError
from agentmesh.workers.llm.providers.ollama import OllamaProvider
from tests.gateway.conftest import StartGateway, start_gateway  # noqa: F401 - a fixture
from tests.workers.fake_ollama import FakeOllama
from tests.workers.fixtures import StartWorker

MODEL = "llama3.2:latest"
HELLO = [{"role": "user", "content": "hello ollama"}]
PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
async def ollama() -> AsyncIterator[FakeOllama]:
    fake = await FakeOllama().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def provider(ollama: FakeOllama) -> AsyncIterator[OllamaProvider]:
    deployment = Deployment(provider="ollama", model=MODEL, base_url=ollama.base_url)
    async with httpx.AsyncClient() as client:
        yield OllamaProvider(deployment, client)


def text_of(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_a_request_becomes_an_ollama_chat_with_options_system_prompt_and_images(
    provider: OllamaProvider, ollama: FakeOllama
) -> None:
    await provider.complete(
        {
            "model": "local",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in "},
                        {"type": "text", "text": "this picture?"},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PIXEL}"},
                        },
                    ],
                },
            ],
            "temperature": 0.3,
            "top_p": 0.9,
            "seed": 42,
            "stop": "END",
            "max_tokens": 64,
            "response_format": {"type": "json_object"},
        }
    )
    sent = ollama.requests[0]
    assert sent["model"] == MODEL and sent["stream"] is False
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is in this picture?", "images": [PIXEL]},
    ]
    assert sent["options"] == {
        "temperature": 0.3,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["END"],
        "num_predict": 64,
    }
    assert sent["format"] == "json"
    assert "think" not in sent and "tools" not in sent


async def test_a_reply_becomes_a_chat_completion_with_usage(provider: OllamaProvider) -> None:
    reply = await provider.complete({"model": "local", "messages": HELLO})
    assert reply["object"] == "chat.completion"
    assert reply["model"] == MODEL
    assert reply["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello from ollama"},
            "finish_reason": "stop",
        }
    ]
    assert reply["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


async def test_a_stream_yields_chunks_then_the_finish_reason_then_usage(
    provider: OllamaProvider, ollama: FakeOllama
) -> None:
    chunks = [c async for c in provider.stream({"model": "local", "messages": HELLO})]
    assert ollama.requests[0]["stream"] is True
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert text_of(chunks) == "hello from ollama"
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}


async def test_tool_calls_map_both_ways_with_json_string_arguments_and_ids(
    provider: OllamaProvider, ollama: FakeOllama
) -> None:
    history = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
    ]
    reply = await provider.complete({"model": "local", "messages": history, "tools": [WEATHER]})
    sent = ollama.requests[0]
    assert sent["tools"] == [WEATHER]
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}],
    }
    assert sent["messages"][2] == {"role": "tool", "content": "sunny", "tool_name": "get_weather"}

    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}

    chunks = [
        c async for c in provider.stream({"model": "local", "messages": HELLO, "tools": [WEATHER]})
    ]
    calls = [
        tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert [(tc["index"], tc["function"]["name"]) for tc in calls] == [(0, "get_weather")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_reasoning_effort_turns_thinking_on_and_it_comes_back_as_reasoning_content(
    provider: OllamaProvider, ollama: FakeOllama
) -> None:
    reply = await provider.complete(
        {"model": "local", "messages": HELLO, "reasoning_effort": "high"}
    )
    assert ollama.requests[-1]["think"] is True
    assert reply["choices"][0]["message"]["reasoning_content"] == "let me think"
    assert reply["choices"][0]["message"]["content"] == "hello from ollama"

    chunks = [
        c
        async for c in provider.stream(
            {"model": "local", "messages": HELLO, "reasoning_effort": "low"}
        )
    ]
    thoughts = "".join(
        c["choices"][0]["delta"].get("reasoning_content") or "" for c in chunks if c["choices"]
    )
    assert thoughts == "let me think"
    assert text_of(chunks) == "hello from ollama"

    await provider.complete({"model": "local", "messages": HELLO, "reasoning_effort": "none"})
    assert ollama.requests[-1]["think"] is False


async def test_gpt_oss_gets_the_thinking_level_itself(ollama: FakeOllama) -> None:
    ollama.models = ("gpt-oss:20b",)
    deployment = Deployment(provider="ollama", model="gpt-oss:20b", base_url=ollama.base_url)
    async with httpx.AsyncClient() as client:
        await OllamaProvider(deployment, client).complete(
            {"model": "local", "messages": HELLO, "reasoning_effort": "medium"}
        )
    assert ollama.requests[-1]["think"] == "medium"


async def test_upstream_failures_are_retryable_only_when_another_deployment_could_help(
    provider: OllamaProvider, ollama: FakeOllama
) -> None:
    ollama.fail(503)
    with pytest.raises(ProviderError) as busy:
        await provider.complete({"model": "local", "messages": HELLO})
    assert (busy.value.status, busy.value.retryable) == (503, True)

    ollama.models = ("another-model",)  # the deployment's model is not pulled
    with pytest.raises(ProviderError) as missing:
        await provider.complete({"model": "local", "messages": HELLO})
    assert (missing.value.status, missing.value.retryable) == (404, False)
    assert "not found" in missing.value.message
    with pytest.raises(ProviderError):
        [c async for c in provider.stream({"model": "local", "messages": HELLO})]

    link = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(ProviderError) as image:
        await provider.complete(
            {"model": "local", "messages": [{"role": "user", "content": [link]}]}
        )
    assert (image.value.status, image.value.retryable) == (400, False)


async def test_an_error_line_mid_stream_and_a_server_that_is_down_raise_provider_errors(
    provider: OllamaProvider, ollama: FakeOllama
) -> None:
    ollama.break_stream = "model runner crashed"
    chunks = []
    with pytest.raises(ProviderError) as broken:
        async for chunk in provider.stream({"model": "local", "messages": HELLO}):
            chunks.append(chunk)
    assert text_of(chunks) == "hello"
    assert "model runner crashed" in broken.value.message

    down = Deployment(provider="ollama", model=MODEL, base_url=f"http://127.0.0.1:{free_port()}")
    async with httpx.AsyncClient() as client:
        with pytest.raises(ProviderError) as refused:
            await OllamaProvider(down, client).complete({"model": "local", "messages": HELLO})
    assert refused.value.retryable and refused.value.status is None


# Through a worker ----------------------------------------------------------------------------
@pytest.fixture
async def served(start_worker: StartWorker, ollama: FakeOllama) -> None:
    deployment = {"provider": "ollama", "model": MODEL, "base_url": ollama.base_url}
    await start_worker({"models": [{"name": "llama3.2", "deployments": [deployment]}]})


async def test_an_ollama_deployment_serves_an_alias_on_the_bus(
    mesh: MeshClient, served: None
) -> None:
    reply = await mesh.llm("llama3.2").chat(HELLO)
    assert reply["choices"][0]["message"]["content"] == "hello from ollama"
    assert reply["agentmesh"]["deployment"] == f"ollama:{MODEL}"
    chunks = [c async for c in await mesh.llm("llama3.2").chat(HELLO, stream=True)]
    assert text_of(chunks) == "hello from ollama"
    assert chunks[-1]["usage"]["total_tokens"] == 11


async def test_the_openai_sdk_talks_to_ollama_through_the_gateway(
    start_gateway: StartGateway,  # noqa: F811 - the fixture imported above
    served: None,
) -> None:
    gateway = await start_gateway()
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0
    ) as sdk:
        reply = await sdk.chat.completions.create(model="llama3.2", messages=HELLO)
        assert reply.choices[0].message.content == "hello from ollama"
        assert reply.usage is not None and reply.usage.total_tokens == 11

        stream = await sdk.chat.completions.create(
            model="llama3.2", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text == "hello from ollama"
        assert usage is not None and usage.total_tokens == 11

        called = await sdk.chat.completions.create(
            model="llama3.2", messages=HELLO, tools=[WEATHER]
        )
        (call,) = called.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
