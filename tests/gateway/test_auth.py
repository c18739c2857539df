"""API keys, scopes and per-key rate limits against real gateway replicas, NATS and Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.broker.durable import KEYS_BUCKET, DurableState
from agentmesh.broker.ratelimit import Limit
from agentmesh.broker.servers import RedisServer
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore, parse_tool_patterns
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.errors import InvalidMessage
from tests.conftest import StartAgent
from tests.gateway.conftest import Replica, StartGateway

AUTH = GatewayConfig(auth=True)
SEND_BODY = {"to_agent_id": "echo", "content": [{"type": "text", "text": "hi"}], "wait": True}


@pytest.fixture
def keys(durable: DurableState, settings: Settings) -> KeyStore:
    return KeyStore(durable, Subjects(settings.prefix))


async def stored(durable: DurableState, settings: Settings, key_id: str) -> dict[str, Any]:
    """A key's record as the KV bucket holds it."""
    record = await durable.bucket(KEYS_BUCKET).get(f"{settings.prefix}.{key_id}")
    assert record is not None
    return record


async def rewrite(durable: DurableState, settings: Settings, key_id: str, **fields: Any) -> None:
    """Change a stored record by hand (a field set to `...` is removed)."""
    record = await stored(durable, settings, key_id)
    record.update(fields)
    record = {k: v for k, v in record.items() if v is not ...}
    await durable.bucket(KEYS_BUCKET).put(f"{settings.prefix}.{key_id}", record)


@pytest.fixture
async def replica(start_gateway: StartGateway) -> Replica:
    return await start_gateway(config=AUTH)


@pytest.fixture
async def client(replica: Replica) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        yield http


@pytest.fixture
async def echo(start_agent: StartAgent) -> Agent:
    agent = Agent("echo", name="Echo")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        return msg.text

    return await start_agent(agent)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def make_key(
    keys: KeyStore,
    *scopes: Scope,
    rate_limit: str | None = None,
    name: str = "test",
    agents: tuple[str, ...] = ("*",),
) -> str:
    """A key with `scopes`; by default it may attach and send as any agent id."""
    limit = Limit.parse(rate_limit) if rate_limit else None
    key, _ = await keys.create(name, scopes=frozenset(scopes), rate_limit=limit, agents=agents)
    return key


def assert_401(r: httpx.Response, key: str | None = None) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "UNAUTHORIZED"
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer <key>" in r.json()["error"]["message"]
    if key:
        assert key not in r.text
        secret = key.split("_", 2)[-1]  # the secret may itself contain "_"
        assert not secret or secret not in r.text


# open gateway --------------------------------------------------------------------------------
async def test_a_gateway_with_auth_off_answers_without_a_key_and_says_so_in_its_log(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="agentmesh.gateway.app"):
        replica = await start_gateway(config=GatewayConfig(auth=False))
    async with httpx.AsyncClient(base_url=replica.url) as http:
        assert (await http.get("/gateway/agents")).status_code == 200
    warnings = [r.getMessage() for r in caplog.records if r.name == "agentmesh.gateway.app"]
    assert any("auth is OFF" in w and "AGENTMESH_AUTH=on" in w for w in warnings), warnings


ADMIN_TOKEN = "bootstrap-admin-token-0123456789"
ADMIN_CALLS = [
    ("POST", "/gateway/keys", {"name": "minted", "scopes": ["admin"]}),
    ("GET", "/gateway/keys", None),
    ("DELETE", "/gateway/keys/k3x9q2m7a1b4", None),
    ("GET", "/gateway/usage", None),
]


async def test_an_auth_off_gateway_refuses_every_anonymous_admin_call_and_says_how_to_enable_it(
    start_gateway: StartGateway, keys: KeyStore
) -> None:
    replica = await start_gateway(config=GatewayConfig(auth=False))
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        for method, path, body in ADMIN_CALLS:
            r = await http.request(method, path, json=body)
            assert r.status_code == 403, (path, r.text)
            error = r.json()["error"]
            assert error["code"] == "UNAUTHORIZED" and error["details"] == {"reason": "admin_off"}
            assert "AGENTMESH_AUTH=on" in error["message"]
            assert "AGENTMESH_ADMIN_TOKEN" in error["message"]
        # Not a key in sight: an auth-off gateway gives no one an admin.
        r = await http.post("/gateway/keys", json={"name": "x"}, headers=bearer("amk_x_y"))
        assert r.status_code == 403
    assert await keys.list() == []


async def test_the_bootstrap_admin_token_opens_the_admin_routes_of_an_auth_off_gateway(
    start_gateway: StartGateway, keys: KeyStore
) -> None:
    config = GatewayConfig(auth=False, admin_token=ADMIN_TOKEN)
    replica = await start_gateway(config=config)
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        for headers in ({}, bearer("wrong-token-wrong-token-wrong"), bearer(ADMIN_TOKEN + "x")):
            r = await http.post("/gateway/keys", json={"name": "x"}, headers=headers)
            assert r.status_code == 401, r.text
            assert "AGENTMESH_ADMIN_TOKEN" in r.json()["error"]["message"]
            assert ADMIN_TOKEN not in r.text
        body = {"name": "ops", "scopes": ["admin"]}
        created = await http.post("/gateway/keys", json=body, headers=bearer(ADMIN_TOKEN))
        assert created.status_code == 201, created.text
        r = await http.get("/gateway/usage", headers={"X-API-Key": ADMIN_TOKEN})
        assert r.status_code == 200
        assert (await http.get("/gateway/agents")).status_code == 200  # the rest stays open
    assert [k.name for k in await keys.list()] == ["ops"]


async def test_the_bootstrap_admin_token_works_on_an_auth_on_gateway_for_admin_routes_only(
    start_gateway: StartGateway, keys: KeyStore
) -> None:
    replica = await start_gateway(config=GatewayConfig(auth=True, admin_token=ADMIN_TOKEN))
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        r = await http.post("/gateway/keys", json={"name": "first"}, headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 201, r.text
        key = r.json()["key"]
        assert (await http.get("/gateway/agents", headers=bearer(key))).status_code == 200
        assert_401(await http.get("/gateway/agents", headers=bearer(ADMIN_TOKEN)))
        admin = await make_key(keys, Scope.ADMIN)
        assert (await http.get("/gateway/keys", headers=bearer(admin))).status_code == 200


def test_the_admin_token_comes_from_the_environment_is_never_short_and_never_printed() -> None:
    config = GatewayConfig.from_env({"AGENTMESH_ADMIN_TOKEN": f" {ADMIN_TOKEN} "})
    assert config.admin_token == ADMIN_TOKEN and ADMIN_TOKEN not in repr(config)
    assert GatewayConfig.from_env({}).admin_token is None
    with pytest.raises(ValueError, match="AGENTMESH_ADMIN_TOKEN is too short"):
        GatewayConfig.from_env({"AGENTMESH_ADMIN_TOKEN": "short"})


async def test_a_gateway_with_auth_on_does_not_warn_that_it_is_open(
    start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="agentmesh.gateway.app"):
        await start_gateway(config=AUTH)
    assert not [r for r in caplog.records if "auth is OFF" in r.getMessage()]


# authentication ------------------------------------------------------------------------------
async def test_a_call_without_a_key_is_a_401_that_says_how_to_pass_one(
    client: httpx.AsyncClient,
) -> None:
    for r in (
        await client.get("/gateway/agents"),
        await client.get("/gateway/status"),
        await client.post("/gateway/send", json=SEND_BODY),
        await client.get("/gateway/agents", headers={"Authorization": "Bearer"}),
    ):
        assert_401(r)


async def test_health_and_readiness_need_no_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


@pytest.mark.parametrize(
    "garbage",
    [
        "nonsense",
        "amk_",
        "amk_abcdefgh_",
        "amk_abc.*>_secret",
        "amk_abcdefghijkl_" + "x" * 43,
        "amk_" + "a" * 300,
    ],
)
async def test_a_garbage_key_is_a_401_that_does_not_echo_it(
    client: httpx.AsyncClient, garbage: str
) -> None:
    assert_401(await client.get("/gateway/agents", headers=bearer(garbage)), garbage)
    assert_401(await client.get("/gateway/agents", headers={"X-API-Key": garbage}), garbage)


async def test_a_real_key_id_with_a_wrong_secret_is_a_401(
    client: httpx.AsyncClient, keys: KeyStore
) -> None:
    key = await make_key(keys, Scope.AGENTS_READ)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert_401(await client.get("/gateway/agents", headers=bearer(forged)), forged)
    assert (await client.get("/gateway/agents", headers=bearer(key))).status_code == 200


async def test_a_key_sent_without_the_bearer_scheme_is_a_401_that_does_not_echo_it(
    client: httpx.AsyncClient, keys: KeyStore
) -> None:
    key = await make_key(keys, Scope.AGENTS_READ)
    assert_401(await client.get("/gateway/agents", headers={"Authorization": key}), key)


async def test_the_x_api_key_header_and_a_lowercase_bearer_scheme_are_accepted(
    client: httpx.AsyncClient, keys: KeyStore
) -> None:
    key = await make_key(keys, Scope.AGENTS_READ)
    assert (await client.get("/gateway/agents", headers={"X-API-Key": key})).status_code == 200
    r = await client.get("/gateway/agents", headers={"Authorization": f"bearer {key}"})
    assert r.status_code == 200


async def test_the_api_key_query_parameter_is_not_accepted_on_plain_http(
    client: httpx.AsyncClient, keys: KeyStore
) -> None:
    # Keys in URLs end up in logs; only WebSockets, which browsers cannot give headers, use it.
    key = await make_key(keys, Scope.AGENTS_READ)
    assert_401(await client.get("/gateway/agents", params={"api_key": key}), key)


async def test_a_revoked_key_is_refused_at_once_by_every_replica(
    start_gateway: StartGateway, keys: KeyStore
) -> None:
    replicas = [await start_gateway(config=AUTH) for _ in range(2)]
    key = await make_key(keys, Scope.AGENTS_READ)
    key_id = key.split("_")[1]
    async with httpx.AsyncClient(timeout=10) as http:
        for replica in replicas:
            r = await http.get(f"{replica.url}/gateway/agents", headers=bearer(key))
            assert r.status_code == 200
        assert await keys.revoke(key_id) is True
        for replica in replicas:
            assert_401(await http.get(f"{replica.url}/gateway/agents", headers=bearer(key)), key)
    assert await keys.revoke(key_id) is False
    assert await keys.lookup(key) is None


# scopes --------------------------------------------------------------------------------------
async def test_a_key_without_send_scope_gets_403_on_send_but_200_on_agents(
    client: httpx.AsyncClient, keys: KeyStore, echo: Agent
) -> None:
    key = await make_key(keys, Scope.AGENTS_READ, Scope.CONNECT)
    r = await client.post("/gateway/send", json=SEND_BODY, headers=bearer(key))
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "UNAUTHORIZED"
    assert "'send'" in r.json()["error"]["message"]
    assert "www-authenticate" not in r.headers
    assert (await client.get("/gateway/agents", headers=bearer(key))).status_code == 200


async def test_a_key_with_only_send_scope_can_send_but_not_list_agents(
    client: httpx.AsyncClient, keys: KeyStore, echo: Agent
) -> None:
    key = await make_key(keys, Scope.SEND)
    r = await client.post("/gateway/send", json=SEND_BODY, headers=bearer(key))
    assert r.status_code == 200, r.text
    assert r.json()["result"]["result"] == "hi"
    assert (await client.get("/gateway/agents", headers=bearer(key))).status_code == 403
    assert (await client.get("/gateway/status", headers=bearer(key))).status_code == 403


async def test_an_admin_key_can_read_send_and_manage_keys(
    client: httpx.AsyncClient, keys: KeyStore, echo: Agent
) -> None:
    key = await make_key(keys, Scope.ADMIN)
    h = bearer(key)
    assert (await client.get("/gateway/agents", headers=h)).status_code == 200
    assert (await client.get("/gateway/agents/echo", headers=h)).status_code == 200
    assert (await client.get("/gateway/status", headers=h)).status_code == 200
    r = await client.post("/gateway/send", json=SEND_BODY, headers=h)
    assert r.status_code == 200 and r.json()["result"]["result"] == "hi"
    assert (await client.get("/gateway/keys", headers=h)).status_code == 200


async def test_only_admin_keys_may_manage_keys(client: httpx.AsyncClient, keys: KeyStore) -> None:
    key = await make_key(keys, Scope.AGENTS_READ, Scope.SEND, Scope.CONNECT)
    h = bearer(key)
    assert (await client.get("/gateway/keys", headers=h)).status_code == 403
    assert (await client.post("/gateway/keys", json={"name": "x"}, headers=h)).status_code == 403
    key_id = key.split("_")[1]
    assert (await client.delete(f"/gateway/keys/{key_id}", headers=h)).status_code == 403
    assert await keys.lookup(key) is not None


async def test_an_admin_creates_lists_and_revokes_keys_over_http(
    client: httpx.AsyncClient, keys: KeyStore
) -> None:
    h = bearer(await make_key(keys, Scope.ADMIN, name="root"))
    r = await client.post(
        "/gateway/keys",
        json={"name": "ci bot", "scopes": ["agents:read"], "rate_limit": "10/m"},
        headers=h,
    )
    assert r.status_code == 201, r.text
    created = r.json()
    new_key = created["key"]
    assert new_key.startswith(f"amk_{created['key_id']}_")
    assert (created["name"], created["scopes"], created["rate_limit"]) == (
        "ci bot",
        ["agents:read"],
        "10/60s",
    )
    assert (await client.get("/gateway/agents", headers=bearer(new_key))).status_code == 200

    listed = (await client.get("/gateway/keys", headers=h)).json()["keys"]
    assert sorted(k["name"] for k in listed) == ["ci bot", "root"]
    assert new_key not in str(listed) and "hash" not in str(listed)

    r = await client.delete(f"/gateway/keys/{created['key_id']}", headers=h)
    assert r.status_code == 204
    assert_401(await client.get("/gateway/agents", headers=bearer(new_key)), new_key)
    r = await client.delete(f"/gateway/keys/{created['key_id']}", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"name": "x", "scopes": ["root"]}, "unknown scope 'root'"),
        ({"name": "x", "scopes": []}, "at least one scope"),
        ({"name": "x", "rate_limit": "fast"}, "invalid rate limit"),
        ({"name": "x", "rate_limit": "0.5/s"}, "at least 1"),
        ({"name": "a\nb"}, "printable"),
        ({"name": ""}, "name"),
    ],
)
async def test_creating_a_key_over_http_with_bad_input_is_a_clear_4xx(
    client: httpx.AsyncClient, keys: KeyStore, body: dict[str, object], words: str
) -> None:
    h = bearer(await make_key(keys, Scope.ADMIN))
    r = await client.post("/gateway/keys", json=body, headers=h)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["code"] == "INVALID_MESSAGE"
    assert words in r.json()["error"]["message"]


# storage -------------------------------------------------------------------------------------
async def dump_redis(redis: aioredis.Redis) -> bytes:
    """Every key name and value in the Redis database, as one blob to search."""
    out = bytearray()
    async for name in redis.scan_iter(count=1000):
        out += name + b"\n"
        kind = (await redis.type(name)).decode()
        if kind == "string":
            out += await redis.get(name) or b""
        elif kind == "hash":
            for k, v in (await redis.hgetall(name)).items():
                out += k + b"=" + v + b"\n"
        elif kind == "set":
            out += b"\n".join(await redis.smembers(name))
        elif kind == "zset":
            out += b"\n".join(await redis.zrange(name, 0, -1))
        elif kind == "list":
            out += b"\n".join(await redis.lrange(name, 0, -1))
        out += b"\n"
    return bytes(out)


async def test_keys_are_stored_only_as_their_sha256_hash_in_jetstream_and_not_in_redis(
    client: httpx.AsyncClient,
    keys: KeyStore,
    durable: DurableState,
    redis: aioredis.Redis,
    settings: Settings,
) -> None:
    key = await make_key(keys, Scope.AGENTS_READ, rate_limit="100/60s", name="stored")
    assert (await client.get("/gateway/agents", headers=bearer(key))).status_code == 200
    key_id, secret = key.removeprefix("amk_").split("_", 1)
    assert len(key_id) >= 8 and len(secret) >= 43  # 32 random bytes, url-safe base64

    everything = await dump_redis(redis)
    assert key.encode() not in everything
    assert secret.encode() not in everything
    assert not await redis.exists(f"{settings.prefix}:key:{key_id}", f"{settings.prefix}:keys")

    record = await stored(durable, settings, key_id)
    assert secret not in json.dumps(record)
    assert record["hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert (record["name"], record["scopes"], record["rate_limit"]) == (
        "stored",
        ["agents:read"],
        "100/60s",
    )


# rate limits ---------------------------------------------------------------------------------
async def call_alternately(replicas: list[Replica], key: str, n: int, *, concurrent: bool):
    async with httpx.AsyncClient(timeout=10, headers=bearer(key)) as http:
        urls = [f"{replicas[i % len(replicas)].url}/gateway/agents" for i in range(n)]
        if concurrent:
            return await asyncio.gather(*(http.get(u) for u in urls))
        return [await http.get(u) for u in urls]


@pytest.mark.parametrize("concurrent", [False, True], ids=["one-by-one", "all-at-once"])
async def test_a_limit_of_5_per_60s_allows_exactly_5_of_10_calls_spread_over_two_replicas(
    start_gateway: StartGateway, keys: KeyStore, concurrent: bool
) -> None:
    replicas = [await start_gateway(config=AUTH) for _ in range(2)]
    key = await make_key(keys, Scope.AGENTS_READ, rate_limit="5/60")
    responses = await call_alternately(replicas, key, 10, concurrent=concurrent)

    assert sorted(r.status_code for r in responses) == [200] * 5 + [429] * 5
    if not concurrent:
        assert [r.status_code for r in responses] == [200] * 5 + [429] * 5
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "RATE_LIMIT"
            assert int(r.headers["retry-after"]) >= 1
            assert "5/60s" in r.json()["error"]["message"]


async def test_two_keys_have_independent_limits(
    start_gateway: StartGateway, keys: KeyStore
) -> None:
    replicas = [await start_gateway(config=AUTH) for _ in range(2)]
    first = await make_key(keys, Scope.AGENTS_READ, rate_limit="2/60", name="first")
    second = await make_key(keys, Scope.AGENTS_READ, rate_limit="2/60", name="second")
    spent = await call_alternately(replicas, first, 3, concurrent=False)
    assert [r.status_code for r in spent] == [200, 200, 429]
    fresh = await call_alternately(replicas, second, 3, concurrent=False)
    assert [r.status_code for r in fresh] == [200, 200, 429]


async def test_a_key_without_a_rate_limit_is_not_limited(
    client: httpx.AsyncClient, keys: KeyStore
) -> None:
    key = await make_key(keys, Scope.AGENTS_READ)
    responses = await asyncio.gather(
        *(client.get("/gateway/agents", headers=bearer(key)) for _ in range(30))
    )
    assert {r.status_code for r in responses} == {200}


async def test_a_stored_limit_that_can_never_pass_is_a_429_without_retry_after(
    client: httpx.AsyncClient, keys: KeyStore, durable: DurableState, settings: Settings
) -> None:
    # `keys create` refuses such a limit; a record written by hand must still not crash a call.
    key = await make_key(keys, Scope.AGENTS_READ, rate_limit="1/s")
    await rewrite(durable, settings, key.split("_")[1], rate_limit="0.5/1s")
    r = await client.get("/gateway/agents", headers=bearer(key))
    assert r.status_code == 429, r.text
    assert "retry-after" not in r.headers
    assert r.json()["error"]["details"]["retry_after"] is None


async def test_keys_refuse_a_rate_limit_below_one_call_per_period(keys: KeyStore) -> None:
    with pytest.raises(InvalidMessage, match="at least 1"):
        await keys.create("x", scopes=frozenset({Scope.SEND}), rate_limit=Limit(0.5, 1))
    assert await keys.list() == []


# tool permissions ----------------------------------------------------------------------------
async def test_a_key_created_with_tool_patterns_keeps_them_through_lookup_and_list(
    keys: KeyStore, durable: DurableState, settings: Settings
) -> None:
    key, created = await keys.create(
        "tools", scopes=frozenset({Scope.SEND}), tools=[" time/* ", "demo/echo", "time/*"]
    )
    assert created.tools == ("time/*", "demo/echo")  # stripped, deduplicated in order
    record = await stored(durable, settings, created.key_id)
    assert record["tools"] == ["time/*", "demo/echo"]

    looked_up = await keys.lookup(key)
    assert looked_up is not None and looked_up.tools == ("time/*", "demo/echo")
    [listed] = await keys.list()
    assert listed == created


async def test_tools_none_means_every_tool_and_an_empty_list_means_none(
    keys: KeyStore, durable: DurableState, settings: Settings
) -> None:
    every, rec_every = await keys.create("every", scopes=frozenset({Scope.SEND}))
    no_tool, rec_none = await keys.create("none", scopes=frozenset({Scope.SEND}), tools=[])
    assert (rec_every.tools, rec_none.tools) == (None, ())
    assert (await stored(durable, settings, rec_every.key_id))["tools"] is None
    assert (await stored(durable, settings, rec_none.key_id))["tools"] == []
    found_every, found_none = await keys.lookup(every), await keys.lookup(no_tool)
    assert found_every is not None and found_every.tools is None
    assert found_none is not None and found_none.tools == ()


async def test_a_record_without_tools_may_use_every_tool(
    client: httpx.AsyncClient, keys: KeyStore, durable: DurableState, settings: Settings
) -> None:
    key, record = await keys.create("old", scopes=frozenset({Scope.ADMIN}), tools=["a/b"])
    await rewrite(durable, settings, record.key_id, tools=...)
    looked_up = await keys.lookup(key)
    assert looked_up is not None and looked_up.tools is None
    [info] = (await client.get("/gateway/keys", headers=bearer(key))).json()["keys"]
    assert info["tools"] is None


async def test_a_damaged_tools_field_grants_no_tool(
    keys: KeyStore, durable: DurableState, settings: Settings
) -> None:
    key, record = await keys.create("damaged", scopes=frozenset({Scope.SEND}))
    await rewrite(durable, settings, record.key_id, tools="time/*")  # not a list
    looked_up = await keys.lookup(key)
    assert looked_up is not None and looked_up.tools == ()


@pytest.mark.parametrize(
    "pattern",
    ["time", "a/b/c", "/x", "x/", "ti me/x", "a.b/x", "time/to day", "s/" + "x" * 255, "/"],
)
async def test_the_store_refuses_a_malformed_tool_pattern(keys: KeyStore, pattern: str) -> None:
    with pytest.raises(InvalidMessage, match="invalid tool pattern") as raised:
        await keys.create("x", scopes=frozenset({Scope.SEND}), tools=["time/*", pattern])
    assert raised.value.details == {"field": "tools"}
    assert await keys.list() == []


LONGEST = "srv/" + "x" * 252  # exactly 256 characters


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (None, None),
        ([], ()),
        (["", " "], ()),
        ("time/*, demo/echo,,time/*", ("time/*", "demo/echo")),
        (
            ["*/read_*", "github/get_issue", "my-srv_2/tool?", "a/é[x]"],
            ("*/read_*", "github/get_issue", "my-srv_2/tool?", "a/é[x]"),
        ),
        ([LONGEST], (LONGEST,)),
    ],
)
def test_parse_tool_patterns_accepts_wildcards_and_normalizes(
    values: list[str] | str | None, expected: tuple[str, ...] | None
) -> None:
    assert parse_tool_patterns(values) == expected


@pytest.mark.parametrize("text", ["", " ", " , "])
def test_parse_tool_patterns_refuses_a_string_with_no_pattern(text: str) -> None:
    with pytest.raises(InvalidMessage, match="no tool pattern") as raised:
        parse_tool_patterns(text)
    assert raised.value.details == {"field": "tools"}


async def test_an_admin_creates_a_key_with_tools_over_http(
    client: httpx.AsyncClient, keys: KeyStore
) -> None:
    h = bearer(await make_key(keys, Scope.ADMIN, name="root"))
    r = await client.post(
        "/gateway/keys", json={"name": "tooled", "tools": ["time/*", "demo/echo"]}, headers=h
    )
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["tools"] == ["time/*", "demo/echo"]
    looked_up = await keys.lookup(created["key"])
    assert looked_up is not None and looked_up.tools == ("time/*", "demo/echo")

    r = await client.post("/gateway/keys", json={"name": "no tools", "tools": []}, headers=h)
    assert r.status_code == 201 and r.json()["tools"] == [], r.text

    listed = {
        k["name"]: k["tools"] for k in (await client.get("/gateway/keys", headers=h)).json()["keys"]
    }
    assert listed == {"root": None, "tooled": ["time/*", "demo/echo"], "no tools": []}


@pytest.mark.parametrize("pattern", ["time", "a/b/c", "/x", "ti me/x", "a.b/x"])
async def test_creating_a_key_over_http_with_a_bad_tool_pattern_is_a_400(
    client: httpx.AsyncClient, keys: KeyStore, pattern: str
) -> None:
    h = bearer(await make_key(keys, Scope.ADMIN, name="root"))
    r = await client.post("/gateway/keys", json={"name": "x", "tools": [pattern]}, headers=h)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "INVALID_MESSAGE"
    assert f"invalid tool pattern {pattern!r}" in error["message"]
    assert error["details"]["field"] == "tools"
    assert [k.name for k in await keys.list()] == ["root"]


# Redis down ----------------------------------------------------------------------------------
async def test_a_call_while_redis_is_down_is_a_503_not_a_crash(
    start_gateway: StartGateway, settings: Settings, own_redis: RedisServer, keys: KeyStore
) -> None:
    own = dataclasses.replace(settings, redis_url=own_redis.url)
    replica = await start_gateway(config=AUTH, settings_=own)
    key = await make_key(keys, Scope.AGENTS_READ)  # the key is in JetStream: no Redis needed
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
        assert (await http.get("/gateway/agents", headers=bearer(key))).status_code == 200
        own_redis.stop()
        r = await http.get("/gateway/agents", headers=bearer(key))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "UNAVAILABLE"


# WebSocket -----------------------------------------------------------------------------------
async def ws_first_frame(url: str, **kw: object) -> tuple[dict[str, object], int | None]:
    """The first frame the gateway sends on `url`, and the close code if it then closes."""
    async with asyncio.timeout(10), ws_connect(url, **kw) as ws:
        first = json.loads(await ws.recv())
        if first["type"] == "connected":
            return first, None
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code is not None
        return first, ws.close_code


async def test_a_websocket_with_a_connect_key_in_the_query_attaches_as_an_agent(
    replica: Replica, client: httpx.AsyncClient, keys: KeyStore
) -> None:
    key = await make_key(keys, Scope.CONNECT)
    reader = await make_key(keys, Scope.AGENTS_READ)
    url = f"{replica.ws_url}/gateway/connect?agent_id=x&api_key={key}"
    async with asyncio.timeout(10), ws_connect(url) as ws:
        assert json.loads(await ws.recv())["type"] == "connected"
        r = await client.get("/gateway/agents/x", headers=bearer(reader))
        assert r.status_code == 200 and r.json()["agent_id"] == "x"


async def test_a_websocket_may_send_its_key_as_a_bearer_header_too(
    replica: Replica, keys: KeyStore
) -> None:
    key = await make_key(keys, Scope.CONNECT)
    url = f"{replica.ws_url}/gateway/connect?agent_id=x"
    first, _ = await ws_first_frame(url, additional_headers=bearer(key))
    assert first["type"] == "connected"


@pytest.mark.parametrize(
    "scopes", [(), (Scope.AGENTS_READ, Scope.SEND)], ids=["no-key", "key-without-connect"]
)
async def test_a_websocket_without_a_connect_key_is_refused_with_unauthorized(
    replica: Replica, keys: KeyStore, scopes: tuple[Scope, ...]
) -> None:
    url = f"{replica.ws_url}/gateway/connect?agent_id=x"
    key = await make_key(keys, *scopes) if scopes else None
    if key:
        url += f"&api_key={key}"
    first, close_code = await ws_first_frame(url)
    assert (first["type"], first["code"], close_code) == ("error", "UNAUTHORIZED", 1008)
    if key:
        assert "'connect'" in str(first["message"]) and key not in str(first)


async def test_a_websocket_with_a_revoked_key_is_refused(replica: Replica, keys: KeyStore) -> None:
    key = await make_key(keys, Scope.CONNECT)
    assert await keys.revoke(key.split("_")[1])
    first, close_code = await ws_first_frame(
        f"{replica.ws_url}/gateway/connect?agent_id=x&api_key={key}"
    )
    assert (first["code"], close_code) == ("UNAUTHORIZED", 1008)
    assert key not in str(first)


async def test_websocket_connects_count_against_the_keys_rate_limit_on_every_replica(
    start_gateway: StartGateway, keys: KeyStore
) -> None:
    first_replica, second_replica = [await start_gateway(config=AUTH) for _ in range(2)]
    key = await make_key(keys, Scope.CONNECT, rate_limit="1/60")
    query = f"/gateway/connect?agent_id=x&api_key={key}"
    first, _ = await ws_first_frame(first_replica.ws_url + query)
    assert first["type"] == "connected"
    refused, close_code = await ws_first_frame(second_replica.ws_url + query)
    assert (refused["code"], close_code) == ("RATE_LIMIT", 1013)


# Acting as an agent: keys name the agent ids they may attach and send as ----------------------
@pytest.mark.parametrize(
    ("agents", "agent_id"),
    [((), "slow"), (("bot-*",), "slow"), (("bot-?",), "bot-12")],
    ids=["no-patterns", "other-pattern", "one-char-wildcard"],
)
async def test_a_connect_key_cannot_attach_as_an_agent_its_patterns_do_not_name(
    replica: Replica, keys: KeyStore, agents: tuple[str, ...], agent_id: str
) -> None:
    key = await make_key(keys, Scope.CONNECT, agents=agents)
    first, close_code = await ws_first_frame(
        f"{replica.ws_url}/gateway/connect?agent_id={agent_id}&api_key={key}"
    )
    assert (first["type"], first["code"], close_code) == ("error", "UNAUTHORIZED", 1008)
    assert f"may not attach as agent '{agent_id}'" in first["message"]


async def test_a_connect_key_attaches_as_the_agents_its_patterns_name(
    replica: Replica, keys: KeyStore
) -> None:
    key = await make_key(keys, Scope.CONNECT, agents=("bot-*", "support"))
    for agent_id in ("bot-1", "support"):
        url = f"{replica.ws_url}/gateway/connect?agent_id={agent_id}&api_key={key}"
        first, _ = await ws_first_frame(url)
        assert first["type"] == "connected", first


async def test_an_impostor_never_joins_a_real_agents_queue_group(
    replica: Replica, client: httpx.AsyncClient, keys: KeyStore, echo: Agent
) -> None:
    """The probe's attack: a connect-only key attaching as an online agent to take its calls."""
    impostor = await make_key(keys, Scope.CONNECT, agents=("mine",))
    sender = await make_key(keys, Scope.SEND)
    first, _ = await ws_first_frame(
        f"{replica.ws_url}/gateway/connect?agent_id=echo&api_key={impostor}"
    )
    assert first["code"] == "UNAUTHORIZED"
    for _ in range(20):  # every call still reaches the real echo agent
        r = await client.post(
            "/gateway/send",
            headers=bearer(sender),
            json={"to_agent_id": "echo", "wait": True, "content": [{"type": "text", "text": "hi"}]},
        )
        assert r.status_code == 200 and r.json()["result"]["result"] == "hi"


async def test_a_send_key_may_only_set_a_from_agent_id_its_patterns_name_and_is_stamped(
    replica: Replica, client: httpx.AsyncClient, keys: KeyStore, start_agent: StartAgent
) -> None:
    seen: list[Message] = []
    agent = Agent("recorder")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        seen.append(msg)
        return "ok"

    await start_agent(agent)
    key, record = await keys.create("relay", scopes=frozenset({Scope.SEND}), agents=["bot-*"])

    async def send(**extra: object) -> httpx.Response:
        text = [{"type": "text", "text": "x"}]
        body = {"to_agent_id": "recorder", "wait": True, "content": text, **extra}
        return await client.post("/gateway/send", headers=bearer(key), json=body)

    forged = await send(from_agent_id="ceo", metadata={"sender_key": "someone-else"})
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "UNAUTHORIZED"
    assert "may not send as agent 'ceo'" in forged.json()["error"]["message"]
    assert (await send(from_agent_id="bot-7", metadata={"sender_key": "forged"})).status_code == 200
    assert (await send()).status_code == 200
    assert [m.from_agent_id for m in seen] == ["bot-7", None]
    assert [m.metadata["sender_key"] for m in seen] == [record.key_id, record.key_id]
