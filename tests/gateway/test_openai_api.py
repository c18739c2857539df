"""The OpenAI-compatible API, driven by the official `openai` SDK through a real gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from tests.gateway.conftest import Replica
from tests.workers.fake_upstreams import FakeOpenAI
from tests.workers.fixtures import StartWorker

HELLO = [{"role": "user", "content": "hello mesh"}]


@pytest.fixture
async def client(gateway: Replica) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0
    ) as sdk:
        yield sdk


@pytest.fixture
async def models(start_worker: StartWorker, upstream: FakeOpenAI) -> None:
    await start_worker(
        {
            "models": [
                {"name": "echo", "deployments": [{"provider": "echo", "model": "echo"}]},
                {
                    "name": "gpt-4.1-mini",
                    "deployments": [
                        {
                            "provider": "openai",
                            "base_url": upstream.base_url,
                            "model": "gpt-4.1-mini",
                        }
                    ],
                },
            ]
        }
    )


async def test_chat_completions_through_the_sdk(client: openai.AsyncOpenAI, models: None) -> None:
    reply = await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO)
    assert reply.choices[0].message.content == "hello from upstream"
    assert reply.usage is not None and reply.usage.total_tokens == 8
    echoed = await client.chat.completions.create(model="echo", messages=HELLO)
    assert echoed.choices[0].message.content == "hello mesh"


async def test_streaming_through_the_sdk_ends_with_usage(
    client: openai.AsyncOpenAI, models: None
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4.1-mini",
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == "hello from upstream"
    assert usage is not None and usage.total_tokens == 8


async def test_tool_calls_come_back_through_the_sdk(
    client: openai.AsyncOpenAI, models: None, upstream: FakeOpenAI
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    reply = await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO, tools=tools)
    call = reply.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == '{"city": "Paris"}'
    assert upstream.requests[-1]["body"]["tools"] == tools  # passed through unchanged


async def test_models_lists_what_live_workers_serve(
    client: openai.AsyncOpenAI, models: None
) -> None:
    listed = sorted([m.id async for m in client.models.list()])
    assert listed == ["echo", "gpt-4.1-mini"]


async def test_errors_come_in_openais_format(
    client: openai.AsyncOpenAI, models: None, gateway: Replica, upstream: FakeOpenAI
) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.code == "model_not_found"
    upstream.fail(429, retry_after=30)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4.1-mini", messages=HELLO)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for raw in (b"{nope", b"[]", b'{"model": "echo"}', b'{"messages": [{"role": "user"}]}'):
            r = await http.post("/v1/chat/completions", content=raw)
            assert r.status_code == 400, raw
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert r.json()["error"]["message"]
    # Still serving.
    reply = await client.chat.completions.create(model="echo", messages=HELLO)
    assert reply.choices[0].message.content == "hello mesh"
