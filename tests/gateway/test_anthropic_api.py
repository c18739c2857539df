"""The Anthropic-compatible API (`POST /v1/messages`), driven by the official `anthropic` SDK
through a real gateway, over echo, OpenAI-compatible and Anthropic deployments."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anthropic
import httpx
import openai
import pytest

from agentmesh.broker.durable import DurableState
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.state import GatewayConfig
from tests.gateway.conftest import Replica, StartGateway
from tests.workers.fake_anthropic import FakeAnthropic
from tests.workers.fake_upstreams import FakeOpenAI
from tests.workers.fixtures import StartWorker

HELLO = [{"role": "user", "content": "hello mesh"}]
ALIASES = {
    "echo": "hello mesh",
    "gpt-4.1-mini": "hello from upstream",
    "claude": "hello from claude",
}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    fake = await FakeAnthropic().start()
    yield fake
    await fake.stop()


@pytest.fixture
async def models(start_worker: StartWorker, upstream: FakeOpenAI, claude: FakeAnthropic) -> None:
    def model(name: str, provider: str, url: str) -> dict:
        deployment = {"provider": provider, "base_url": url, "model": f"{name}-upstream"}
        return {"name": name, "deployments": [deployment]}

    await start_worker(
        {
            "models": [
                {"name": "echo", "deployments": [{"provider": "echo", "model": "echo"}]},
                model("gpt-4.1-mini", "openai", upstream.base_url),
                model("claude", "anthropic", claude.base_url),
            ]
        }
    )


@pytest.fixture
async def client(gateway: Replica) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="unused", max_retries=0
    ) as sdk:
        yield sdk


async def test_messages_create_answers_from_every_kind_of_deployment(
    client: anthropic.AsyncAnthropic, models: None
) -> None:
    for alias, expected in ALIASES.items():
        reply = await client.messages.create(model=alias, max_tokens=100, messages=HELLO)
        assert reply.type == "message" and reply.role == "assistant" and reply.model == alias
        assert [b.type for b in reply.content] == ["text"]
        assert reply.content[0].text == expected, alias
        assert reply.stop_reason == "end_turn"
        assert reply.usage.output_tokens > 0
    assert reply.usage.input_tokens == 5 and reply.usage.output_tokens == 3


async def test_streaming_through_the_sdk_gives_the_text_and_the_final_message(
    client: anthropic.AsyncAnthropic, models: None
) -> None:
    for alias, expected in ALIASES.items():
        async with client.messages.stream(model=alias, max_tokens=100, messages=HELLO) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        assert text == expected, alias
        assert final.content[0].text == expected and final.stop_reason == "end_turn"
        assert final.usage.output_tokens > 0, alias


async def test_tool_use_round_trips_through_the_sdk(
    client: anthropic.AsyncAnthropic, models: None, claude: FakeAnthropic, upstream: FakeOpenAI
) -> None:
    for alias in ("claude", "gpt-4.1-mini"):
        reply = await client.messages.create(
            model=alias, max_tokens=100, messages=HELLO, tools=[WEATHER]
        )
        assert reply.stop_reason == "tool_use", alias
        use = reply.content[-1]
        assert use.type == "tool_use" and use.name == "get_weather"
        assert use.input == {"city": "Paris"}
        result = {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}
        messages = [
            *HELLO,
            {"role": "assistant", "content": reply.content},
            {"role": "user", "content": [result]},
        ]
        if alias == "claude":
            final = await client.messages.create(
                model=alias, max_tokens=100, messages=messages, tools=[WEATHER]
            )
            assert final.content[0].text == "the tool said: sunny"
        else:
            await client.messages.create(model=alias, max_tokens=100, messages=messages)
    # Anthropic tools in, OpenAI function tools at the OpenAI upstream, the tool result a
    # `tool` message; and back to Anthropic's own shapes at the Anthropic upstream.
    sent = upstream.requests[0]["body"]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["input_schema"],
                "description": WEATHER["description"],
            },
        }
    ]
    assert upstream.requests[-1]["body"]["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    assert claude.requests[0]["body"]["tools"] == [WEATHER]
    assert claude.last["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}],
    }


async def test_a_streamed_tool_use_arrives_as_a_tool_use_block(
    client: anthropic.AsyncAnthropic, models: None
) -> None:
    for alias in ("claude", "gpt-4.1-mini"):
        async with client.messages.stream(
            model=alias,
            max_tokens=100,
            messages=HELLO,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
        ) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use", alias
        assert [(b.type, b.name, b.input) for b in final.content] == [
            ("tool_use", "get_weather", {"city": "Paris"})
        ]


async def test_thinking_reaches_an_anthropic_deployment_and_streams_back_signed(
    client: anthropic.AsyncAnthropic, models: None, claude: FakeAnthropic
) -> None:
    thinking = {"type": "enabled", "budget_tokens": 1024}
    reply = await client.messages.create(
        model="claude", max_tokens=2000, messages=HELLO, thinking=thinking
    )
    assert claude.last["thinking"] == thinking and claude.last["max_tokens"] == 2000
    assert [b.type for b in reply.content] == ["thinking", "text"]
    assert reply.content[0].thinking == "Let me think it over."
    assert reply.content[0].signature == "sig-1"
    async with client.messages.stream(
        model="claude", max_tokens=2000, messages=HELLO, thinking=thinking
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert "thinking" in kinds and "signature" in kinds and "text" in kinds
    assert final.content[0] == reply.content[0]
    # The signed block goes back to Anthropic as it came.
    turn = [
        *HELLO,
        {"role": "assistant", "content": final.content},
        {"role": "user", "content": "and?"},
    ]
    await client.messages.create(model="claude", max_tokens=2000, messages=turn, thinking=thinking)
    assert claude.last["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "Let me think it over.",
        "signature": "sig-1",
    }


async def test_a_system_prompt_and_an_image_reach_each_upstream_in_its_own_format(
    client: anthropic.AsyncAnthropic, models: None, claude: FakeAnthropic, upstream: FakeOpenAI
) -> None:
    image = {"type": "base64", "media_type": "image/png", "data": PIXEL}
    content = [{"type": "text", "text": "What is this?"}, {"type": "image", "source": image}]
    for alias in ("claude", "gpt-4.1-mini"):
        await client.messages.create(
            model=alias,
            max_tokens=100,
            system=[{"type": "text", "text": "You are terse."}],
            messages=[{"role": "user", "content": content}],
            stop_sequences=["END"],
            metadata={"user_id": "u-1"},
            output_config={"effort": "low"},  # Anthropic's own field: passed on
            extra_body={"temperature": 0.5},  # no longer a parameter of the SDK
        )
    assert claude.last == {
        "model": "claude-upstream",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 100,
        "temperature": 0.5,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        "output_config": {"effort": "low"},
    }
    sent = upstream.requests[-1]["body"]
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
            ],
        },
    ]
    assert sent["stop"] == ["END"] and sent["user"] == "u-1" and sent["max_tokens"] == 100


async def test_errors_come_in_anthropics_format(
    client: anthropic.AsyncAnthropic, models: None, gateway: Replica, claude: FakeAnthropic
) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await client.messages.create(model="no-such-model", max_tokens=10, messages=HELLO)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model="echo", max_tokens=10, messages=[])
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    claude.fail(429, retry_after=30)
    with pytest.raises(anthropic.RateLimitError):
        await client.messages.create(model="claude", max_tokens=10, messages=HELLO)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for raw in (
            b"{nope",
            b"[]",
            b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]}',  # no max_tokens
            b'{"model": "echo", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}',
            b'{"model": "echo", "max_tokens": 5, "messages": [{"role": "user", "content": '
            b'[{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}',
        ):
            r = await http.post("/v1/messages", content=raw)
            assert r.status_code == 400, raw
            assert r.json()["type"] == "error", raw
            assert r.json()["error"]["type"] == "invalid_request_error"
            assert r.json()["error"]["message"]
    # Still serving.
    reply = await client.messages.create(model="echo", max_tokens=10, messages=HELLO)
    assert reply.content[0].text == "hello mesh"


async def test_a_stream_that_breaks_after_its_first_token_ends_with_an_error_event(
    client: anthropic.AsyncAnthropic, models: None, claude: FakeAnthropic
) -> None:
    claude.break_stream("overloaded_error", after_text=True)
    text = ""
    with pytest.raises(anthropic.APIStatusError) as broken:
        async with client.messages.stream(model="claude", max_tokens=10, messages=HELLO) as stream:
            async for piece in stream.text_stream:
                text += piece
    assert text == "hello"  # what came before the break
    assert broken.value.body["type"] == "error"
    assert broken.value.body["error"]["type"] == "overloaded_error"
    assert "broke" in broken.value.body["error"]["message"]


async def test_the_openai_sdk_reaches_an_anthropic_deployment(
    gateway: Replica, models: None, claude: FakeAnthropic
) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0
    ) as sdk:
        messages = [{"role": "system", "content": "Be brief."}, *HELLO]
        reply = await sdk.chat.completions.create(model="claude", messages=messages)
        assert reply.choices[0].message.content == "hello from claude"
        assert reply.usage is not None and reply.usage.total_tokens == 8
        assert claude.last["system"] == "Be brief."
        stream = await sdk.chat.completions.create(model="claude", messages=HELLO, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "hello from claude"
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
        called = await sdk.chat.completions.create(model="claude", messages=HELLO, tools=tools)
        call = called.choices[0].message.tool_calls[0]
        assert called.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_the_sdks_x_api_key_authenticates_and_a_key_without_send_is_refused(
    start_gateway: StartGateway, models: None, durable: DurableState, settings: Settings
) -> None:
    gateway = await start_gateway(config=GatewayConfig(auth=True))
    keys = KeyStore(durable, Subjects(settings.prefix))
    sender, _ = await keys.create("sdk", scopes=frozenset({Scope.SEND}))
    reader, _ = await keys.create("reader", scopes=frozenset({Scope.AGENTS_READ}))

    def sdk(key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=gateway.url, api_key=key, max_retries=0)

    async with sdk(sender) as allowed, sdk(reader) as refused, sdk("amk_nope") as unknown:
        reply = await allowed.messages.create(model="echo", max_tokens=10, messages=HELLO)
        assert reply.content[0].text == "hello mesh"
        with pytest.raises(anthropic.PermissionDeniedError) as forbidden:
            await refused.messages.create(model="echo", max_tokens=10, messages=HELLO)
        assert forbidden.value.body["error"]["type"] == "permission_error"
        with pytest.raises(anthropic.AuthenticationError):
            await unknown.messages.create(model="echo", max_tokens=10, messages=HELLO)
