"""Per-key token budgets and usage counting on the LLM API: real gateway replicas, real LLM
workers (echo and a fake OpenAI upstream), the official openai SDK as the client.

The fake upstream reports usage prompt 5 / completion 3 / total 8 for every call. Budgets are
per hour, so the refill during a test (a hundredth of a token a second) changes no outcome. The
replicas run in the test's event loop, so `settled()` waits for their corrections and counts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import redis.asyncio as aioredis

from agentmesh.broker.connections import connect_redis
from agentmesh.broker.durable import DurableState
from agentmesh.broker.ratelimit import Limit
from agentmesh.broker.servers import NatsServer, RedisServer, free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.llm_limits import COMPLETION_RESERVE, estimate_tokens, settled
from agentmesh.gateway.state import GatewayConfig
from agentmesh.gateway.usage import UsageStore
from agentmesh.workers.llm.config import LLMConfig
from agentmesh.workers.llm.worker import LLMWorker
from tests.conftest import Logged
from tests.gateway.conftest import NatsWithoutJetStream, Replica, StartGateway
from tests.workers.fake_upstreams import FakeOpenAI
from tests.workers.fixtures import StartWorker

ECHO_DEPLOYMENT = {"provider": "echo", "model": "echo"}

AUTH = GatewayConfig(auth=True)
MODEL = "gpt-4.1-mini"  # served through the fake upstream; a dotted alias on purpose
HI = [{"role": "user", "content": "hi"}]
HI_PROMPT = 8  # ceil(len('[{"role":"user","content":"hi"}]') / 4) = ceil(32 / 4)
UPSTREAM_TOTAL = 8  # what the fake upstream reports for every call


@pytest.fixture
def keys(durable: DurableState, settings: Settings) -> KeyStore:
    return KeyStore(durable, Subjects(settings.prefix))


@pytest.fixture
async def models(start_worker: StartWorker, upstream: FakeOpenAI) -> None:
    await start_worker(
        {
            "models": [
                {"name": "echo", "deployments": [{"provider": "echo", "model": "echo"}]},
                {
                    "name": MODEL,
                    "deployments": [
                        {"provider": "openai", "base_url": upstream.base_url, "model": MODEL}
                    ],
                },
            ]
        }
    )


@pytest.fixture
async def replicas(start_gateway: StartGateway) -> list[Replica]:
    return [await start_gateway(config=AUTH) for _ in range(2)]


async def make_key(
    keys: KeyStore,
    *,
    tokens: str | None = None,
    requests: str | None = None,
    scopes: frozenset[Scope] = frozenset({Scope.SEND}),
) -> tuple[str, str]:
    key, record = await keys.create(
        "llm",
        scopes=scopes,
        rate_limit=Limit.parse(requests) if requests else None,
        token_limit=Limit.parse(tokens) if tokens else None,
    )
    return key, record.key_id


@pytest.fixture
async def sdk() -> AsyncIterator[dict[tuple[str, str], openai.AsyncOpenAI]]:
    """One SDK client per (replica url, key); `max_retries=0` so a 429 is seen, not retried."""
    clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}
    yield clients
    for client in clients.values():
        await client.close()


def client_of(
    clients: dict[tuple[str, str], openai.AsyncOpenAI], replica: Replica, key: str
) -> openai.AsyncOpenAI:
    if (replica.url, key) not in clients:
        clients[replica.url, key] = openai.AsyncOpenAI(
            base_url=f"{replica.url}/v1", api_key=key, max_retries=0
        )
    return clients[replica.url, key]


async def chat(client: openai.AsyncOpenAI, *, max_tokens: int, model: str = MODEL) -> Any:
    return await client.chat.completions.create(model=model, messages=HI, max_tokens=max_tokens)


async def budget_left(redis: aioredis.Redis, settings: Settings, key_id: str) -> float | None:
    """The tokens in a key's bucket once settled; `None` for a full one (no key at all)."""
    await settled()
    raw = await redis.hget(f"{settings.prefix}:rl:tokens:{key_id}", "tokens")
    return None if raw is None else float(raw)


# the estimate --------------------------------------------------------------------------------
def test_the_estimate_is_a_quarter_of_the_prompt_json_plus_the_completion_allowance() -> None:
    assert estimate_tokens({"messages": HI}) == HI_PROMPT + COMPLETION_RESERVE
    assert estimate_tokens({"messages": HI, "max_tokens": 2}) == HI_PROMPT + 2
    assert estimate_tokens({"messages": HI, "max_tokens": 2, "max_completion_tokens": 5}) == 13
    assert estimate_tokens({"messages": HI, "max_tokens": 2, "n": 3}) == HI_PROMPT + 6
    tools = [{"type": "function", "function": {"name": "f"}}]  # 46 characters of JSON
    assert estimate_tokens({"messages": HI, "tools": tools, "max_tokens": 1}) == 20 + 1
    # Values that are not positive integers fall back to the default allowance.
    for bad in (0, -5, "9", True, None, 2.5):
        assert estimate_tokens({"messages": HI, "max_tokens": bad}) == HI_PROMPT + 256


# token budgets -------------------------------------------------------------------------------
async def test_a_token_budget_is_shared_by_two_replicas_and_refuses_once_spent(
    replicas: list[Replica],
    keys: KeyStore,
    models: None,
    sdk: dict[Any, openai.AsyncOpenAI],
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    # Each call reserves 8 + 2 = 10 tokens and is corrected to the 8 it used: 40 pays for 4
    # calls with 8 left, too few for a fifth; per replica, each would still have 24.
    key, key_id = await make_key(keys, tokens="40/3600")
    for i in range(4):
        reply = await chat(client_of(sdk, replicas[i % 2], key), max_tokens=2)
        assert reply.usage is not None and reply.usage.total_tokens == UPSTREAM_TOTAL
    await settled()
    for replica in replicas:
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(client_of(sdk, replica, key), max_tokens=2)
        assert refused.value.code == "rate_limit_exceeded"
        assert "token limit of 40/3600s exceeded" in refused.value.message
        assert "estimated 10 tokens" in refused.value.message
        retry_after = float(refused.value.response.headers["retry-after"])
        assert 1 <= retry_after <= 3600 / 40 * 2 + 1  # 2 tokens at 40 an hour: 180 s
    # The refusals took nothing.
    assert await budget_left(redis, settings, key_id) == pytest.approx(8, abs=0.1)


async def test_a_call_is_charged_its_actual_usage_not_its_estimate(
    replicas: list[Replica],
    keys: KeyStore,
    models: None,
    sdk: dict[Any, openai.AsyncOpenAI],
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    key, key_id = await make_key(keys, tokens="30/3600")
    first, second = client_of(sdk, replicas[0], key), client_of(sdk, replicas[1], key)
    await chat(first, max_tokens=12)  # reserves 20, uses 8
    assert await budget_left(redis, settings, key_id) == pytest.approx(22, abs=0.1)
    # 20 more fit only because the first call was corrected (30 - 20 = 10 would not).
    await chat(second, max_tokens=12)
    assert await budget_left(redis, settings, key_id) == pytest.approx(14, abs=0.1)
    with pytest.raises(openai.RateLimitError):
        await chat(first, max_tokens=12)


async def test_a_call_that_used_more_than_its_estimate_is_charged_the_difference(
    replicas: list[Replica],
    keys: KeyStore,
    models: None,
    sdk: dict[Any, openai.AsyncOpenAI],
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    # The echo model counts words: 100 one-letter words cost 100 + 100 tokens, while their 199
    # characters are estimated at ceil((199 + 30) / 4) = 58 + 1 (max_tokens).
    words = [{"role": "user", "content": " ".join(["a"] * 100)}]
    assert estimate_tokens({"messages": words, "max_tokens": 1}) == 59
    key, key_id = await make_key(keys, tokens="300/3600")
    client = client_of(sdk, replicas[0], key)
    reply = await client.chat.completions.create(model="echo", messages=words, max_tokens=1)
    assert reply.usage is not None and reply.usage.total_tokens == 200
    assert await budget_left(redis, settings, key_id) == pytest.approx(100, abs=0.1)
    await client_of(sdk, replicas[1], key).chat.completions.create(
        model="echo", messages=words, max_tokens=1
    )
    # 100 - 200: in debt, so even the smallest call waits until it is paid back.
    assert await budget_left(redis, settings, key_id) == pytest.approx(-100, abs=0.1)
    with pytest.raises(openai.RateLimitError):
        await chat(client, max_tokens=1, model="echo")


async def test_a_failed_call_refunds_its_reservation(
    replicas: list[Replica],
    keys: KeyStore,
    models: None,
    upstream: FakeOpenAI,
    sdk: dict[Any, openai.AsyncOpenAI],
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    key, key_id = await make_key(keys, tokens="30/3600")
    client = client_of(sdk, replicas[0], key)
    upstream.fail(400)  # not retryable: the worker reports it at once, with no cooldown
    with pytest.raises(openai.BadRequestError):
        await chat(client, max_tokens=12)
    await settled()
    with pytest.raises(openai.NotFoundError):
        await chat(client, max_tokens=12, model="nobody-serves-this")
    # Both reservations of 20 came back; without the refunds the second call would have been
    # refused by the budget (429) instead of reaching the mesh (404).
    assert await budget_left(redis, settings, key_id) is None  # full
    await chat(client_of(sdk, replicas[1], key), max_tokens=12)
    assert await budget_left(redis, settings, key_id) == pytest.approx(22, abs=0.1)


async def test_a_stream_is_charged_from_its_usage_chunk_when_it_ends(
    replicas: list[Replica],
    keys: KeyStore,
    models: None,
    sdk: dict[Any, openai.AsyncOpenAI],
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    key, key_id = await make_key(keys, tokens="30/3600")
    for i, left in enumerate((22, 14)):
        stream = await client_of(sdk, replicas[i], key).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=12, stream=True
        )
        text = ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if i == 0 and not chunk.choices and chunk.usage is None:
                pytest.fail("a chunk with neither choices nor usage")
        assert text == "hello from upstream"
        # Reserved 20, used 8: corrected before the stream's last event.
        assert await budget_left(redis, settings, key_id) == pytest.approx(left, abs=0.1)
    with pytest.raises(openai.RateLimitError):
        await client_of(sdk, replicas[0], key).chat.completions.create(
            model=MODEL, messages=HI, max_tokens=12, stream=True
        )


async def test_an_estimate_above_the_whole_budget_can_never_pass_and_says_so(
    replicas: list[Replica], keys: KeyStore, models: None, sdk: dict[Any, openai.AsyncOpenAI]
) -> None:
    key, _ = await make_key(keys, tokens="40/3600")
    async with httpx.AsyncClient(base_url=replicas[0].url) as http:
        r = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": HI, "max_tokens": 1000},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 429, r.text
    assert "retry-after" not in r.headers
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "estimated 1008 tokens" in error["message"] and "never pass" in error["message"]
    # The budget is untouched: a call that fits still passes.
    await chat(client_of(sdk, replicas[1], key), max_tokens=2)


async def test_a_key_without_a_token_limit_is_not_limited_by_tokens(
    replicas: list[Replica], keys: KeyStore, models: None, sdk: dict[Any, openai.AsyncOpenAI]
) -> None:
    key, _ = await make_key(keys)
    for i in range(3):
        await chat(client_of(sdk, replicas[i % 2], key), max_tokens=100_000)


async def test_the_request_limit_of_a_key_applies_to_chat_completions(
    replicas: list[Replica], keys: KeyStore, models: None, sdk: dict[Any, openai.AsyncOpenAI]
) -> None:
    key, _ = await make_key(keys, requests="2/3600")
    await chat(client_of(sdk, replicas[0], key), max_tokens=2)
    await chat(client_of(sdk, replicas[1], key), max_tokens=2)
    for replica in replicas:
        with pytest.raises(openai.RateLimitError) as refused:
            await chat(client_of(sdk, replica, key), max_tokens=2)
        assert int(refused.value.response.headers["retry-after"]) >= 1


# usage ---------------------------------------------------------------------------------------
async def test_usage_is_counted_per_key_and_model_and_shown_to_admins(
    replicas: list[Replica],
    keys: KeyStore,
    models: None,
    upstream: FakeOpenAI,
    sdk: dict[Any, openai.AsyncOpenAI],
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    key, key_id = await make_key(keys, tokens="1000/3600")
    other, other_id = await make_key(keys)
    admin, _ = await make_key(keys, scopes=frozenset({Scope.ADMIN}))
    a, b = client_of(sdk, replicas[0], key), client_of(sdk, replicas[1], key)
    await chat(a, max_tokens=5)
    await chat(b, max_tokens=5)
    stream = await a.chat.completions.create(model=MODEL, messages=HI, stream=True)
    async for _ in stream:
        pass
    upstream.fail(400)
    with pytest.raises(openai.BadRequestError):
        await chat(b, max_tokens=5)
    echoed = await a.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello mesh"}]
    )
    assert echoed.usage is not None and echoed.usage.total_tokens == 4  # 2 words in, 2 out
    await chat(client_of(sdk, replicas[1], other), max_tokens=5)

    mine = {
        MODEL: {
            "requests": 4,
            "prompt_tokens": 15,
            "completion_tokens": 9,
            "total_tokens": 24,
            "errors": 1,
        },
        "echo": {
            "requests": 1,
            "prompt_tokens": 2,
            "completion_tokens": 2,
            "total_tokens": 4,
            "errors": 0,
        },
    }
    async with httpx.AsyncClient(base_url=replicas[1].url) as http:
        everyone = await http.get("/gateway/usage", headers={"Authorization": f"Bearer {admin}"})
        only_mine = await http.get(
            "/gateway/usage",
            params={"key_id": key_id},
            headers={"Authorization": f"Bearer {admin}"},
        )
        not_admin = await http.get("/gateway/usage", headers={"Authorization": f"Bearer {key}"})
    assert everyone.status_code == 200, everyone.text
    rows = {(r.pop("key_id"), r.pop("model")): r for r in everyone.json()["usage"]}
    assert rows == {
        (key_id, MODEL): mine[MODEL],
        (key_id, "echo"): mine["echo"],
        (other_id, MODEL): {
            "requests": 1,
            "prompt_tokens": 5,
            "completion_tokens": 3,
            "total_tokens": 8,
            "errors": 0,
        },
    }
    assert {(r["key_id"], r["model"]) for r in only_mine.json()["usage"]} == {
        (key_id, MODEL),
        (key_id, "echo"),
    }
    assert not_admin.status_code == 403
    # Cached in Redis once read, one hash per key and model; the alias escaped as in subjects.
    stored = await redis.hgetall(f"{settings.prefix}:usage:{key_id}:gpt-4~2e1-mini")
    assert {k.decode(): int(v) for k, v in stored.items()} == mine[MODEL]


async def test_calls_refused_by_the_token_budget_count_as_requests_and_errors(
    replicas: list[Replica], keys: KeyStore, models: None, sdk: dict[Any, openai.AsyncOpenAI]
) -> None:
    key, key_id = await make_key(keys, tokens="10/3600")
    admin, _ = await make_key(keys, scopes=frozenset({Scope.ADMIN}))
    client = client_of(sdk, replicas[0], key)
    await chat(client, max_tokens=2)
    with pytest.raises(openai.RateLimitError):
        await chat(client, max_tokens=2)
    async with httpx.AsyncClient(base_url=replicas[0].url) as http:
        r = await http.get(
            "/gateway/usage",
            params={"key_id": key_id},
            headers={"Authorization": f"Bearer {admin}"},
        )
    [row] = r.json()["usage"]
    assert (row["requests"], row["errors"], row["total_tokens"]) == (2, 1, 8)


async def test_usage_of_calls_made_while_redis_is_down_is_counted_all_the_same(
    start_gateway: StartGateway,
    settings: Settings,
    own_redis: RedisServer,
    models: None,
    durable: DurableState,
) -> None:
    # A gateway (auth off) whose Redis is gone: the call goes through the mesh, and its usage
    # into JetStream; the totals are folded into the (new, empty) Redis when they are read.
    own = settings.with_(redis_url=own_redis.url)
    replica = await start_gateway(settings_=own)
    await asyncio.to_thread(own_redis.stop)
    async with openai.AsyncOpenAI(
        base_url=f"{replica.url}/v1", api_key="unused", max_retries=0
    ) as client:
        reply = await chat(client, max_tokens=2)
    assert reply.choices[0].message.content == "hello from upstream"
    await asyncio.to_thread(own_redis.start)
    redis = await connect_redis(own)
    try:
        [usage] = await UsageStore(durable, redis, Subjects(own.prefix)).read()
    finally:
        await redis.aclose()
    assert (usage.key_id, usage.model, usage.requests, usage.total_tokens) == (
        "anonymous",
        MODEL,
        1,
        UPSTREAM_TOTAL,
    )


async def test_usage_that_cannot_be_counted_is_logged_and_the_call_still_answers(
    own_nats: NatsServer,  # first: stopped after the gateway
    start_gateway: StartGateway,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A mesh whose NATS comes back without JetStream: calls still go through the bus (core
    # NATS), but their usage cannot be stored.
    own = settings.with_(nats_url=own_nats.url)
    echo = {"models": [{"name": "echo", "deployments": [ECHO_DEPLOYMENT]}]}
    worker = LLMWorker(LLMConfig.parse(echo))
    await worker.start(own)
    try:
        replica = await start_gateway(settings_=own)
        await asyncio.to_thread(own_nats.stop)
        plain = NatsWithoutJetStream(own_nats)
        with Logged("agentmesh.broker.bus", "reconnected to NATS") as back:
            await asyncio.to_thread(plain.start)
            await back.wait(2)  # the worker and the gateway
        try:
            async with openai.AsyncOpenAI(
                base_url=f"{replica.url}/v1", api_key="unused", max_retries=0
            ) as client:
                with caplog.at_level(logging.WARNING, logger="agentmesh.gateway.llm_limits"):
                    reply = await chat(client, max_tokens=2, model="echo")
                    await settled()
        finally:
            await asyncio.to_thread(plain.stop)
            await asyncio.to_thread(own_nats.start)  # for the orderly stop of the worker
    finally:
        await worker.stop()
    assert reply.choices[0].message.content
    assert any("could not count usage" in r.getMessage() for r in caplog.records)


async def test_an_admin_creates_a_key_with_a_token_limit_over_http(
    replicas: list[Replica], keys: KeyStore
) -> None:
    admin, _ = await make_key(keys, scopes=frozenset({Scope.ADMIN}))
    h = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=replicas[0].url) as http:
        r = await http.post(
            "/gateway/keys", json={"name": "bot", "token_limit": "10000/m"}, headers=h
        )
        assert r.status_code == 201, r.text
        assert r.json()["token_limit"] == "10000/60s"
        created = r.json()["key"]
        listed = (await http.get("/gateway/keys", headers=h)).json()["keys"]
        assert {k["name"]: k["token_limit"] for k in listed} == {"llm": None, "bot": "10000/60s"}
        for bad, words in (("lots", "invalid token limit 'lots'"), ("0.5/s", "at least 1")):
            r = await http.post("/gateway/keys", json={"name": "x", "token_limit": bad}, headers=h)
            assert r.status_code == 400, r.text
            assert words in r.json()["error"]["message"]
    record = await keys.lookup(created)
    assert record is not None and record.token_limit == Limit(10000, 60)


async def test_usage_of_every_completed_call_survives_a_gateway_sigkill_right_after(
    agentmesh_exe: str,
    env_for: dict[str, str],
    start_worker: StartWorker,
    redis: aioredis.Redis,
    durable: DurableState,
    settings: Settings,
) -> None:
    """Usage is what users bill from: written before the reply goes out, never after it."""
    await start_worker({"models": [{"name": "echo", "deployments": [ECHO_DEPLOYMENT]}]})
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        agentmesh_exe,
        "gateway",
        "--port",
        str(port),
        env=env_for,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            async with asyncio.timeout(30):  # uvicorn says so once it listens
                while b"Uvicorn running on" not in (line := await proc.stderr.readline()):
                    assert line, "the gateway exited before listening"
            body = {"model": "echo", "messages": [{"role": "user", "content": "bill me"}]}
            for _ in range(20):
                assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
            async with http.stream(
                "POST", "/v1/chat/completions", json={**body, "stream": True}
            ) as r:
                assert r.status_code == 200
                assert "data: [DONE]" in (await r.aread()).decode()
        proc.kill()  # SIGKILL the moment the last reply is in: nothing may be pending
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    [usage] = await UsageStore(durable, redis, Subjects(settings.prefix)).read()
    assert (usage.key_id, usage.model, usage.requests, usage.errors) == ("anonymous", "echo", 21, 0)
    assert usage.total_tokens > 0
