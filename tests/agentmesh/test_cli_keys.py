"""`agentmesh keys create/list/revoke/usage` as a real process against this test's NATS
(JetStream) and Redis."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pytest

from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.durable import KEYS_BUCKET, DurableState
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.usage import UsageStore
from tests.agentmesh.test_cli import run_cli

KEY = re.compile(r"^amk_([a-z0-9]{8,12})_[A-Za-z0-9_-]{43,}$")


def printed_key(out: str) -> tuple[str, str]:
    """The key `keys create` printed on a line of its own, and its id."""
    found = [m for line in out.splitlines() if (m := KEY.match(line))]
    assert len(found) == 1, out
    return found[0].group(0), found[0].group(1)


async def stored(settings: Settings, key_id: str) -> dict[str, Any]:
    """The key's record in the KV bucket."""
    async with await Bus.connect(settings, name="tests") as bus:
        record = await DurableState(bus.nc).bucket(KEYS_BUCKET).get(f"{settings.prefix}.{key_id}")
    assert record is not None
    return record


async def test_keys_create_prints_a_new_key_once_with_its_scopes_and_limit(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    result = await run_cli(
        agentmesh_exe, "keys", "create", "ci bot", "--rate-limit", "5/60", env=env_for
    )
    assert (result.code, result.err) == (0, ""), result.err
    key, key_id = printed_key(result.out)
    assert "will not be shown again" in result.out
    assert "agents:read, connect, send" in result.out  # the default scopes; not admin
    assert "5/60s" in result.out
    assert key_id in result.out.splitlines()[0]

    record = await stored(settings, key_id)
    assert record["hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert record["name"] == "ci bot"


async def test_keys_create_quiet_prints_only_the_key(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    result = await run_cli(
        agentmesh_exe, "keys", "create", "q", "-s", "admin", "--quiet", env=env_for
    )
    assert result.code == 0, result.err
    assert KEY.match(result.out.strip())
    assert result.out.count("\n") == 1


async def test_keys_list_shows_names_and_scopes_but_never_the_key(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    created = await run_cli(
        agentmesh_exe,
        "keys",
        "create",
        "dashboard",
        "--scope",
        "agents:read",
        "--scope",
        "send,connect",
        env=env_for,
    )
    assert created.code == 0, created.err
    key, key_id = printed_key(created.out)
    secret = key.split("_", 2)[-1]  # the secret may itself contain "_"

    result = await run_cli(agentmesh_exe, "keys", "list", env=env_for)
    assert result.code == 0, result.err
    header, *rows = result.out.splitlines()
    assert header.split() == "ID NAME SCOPES RATE LIMIT TOKEN LIMIT TOOLS TO AGENTS CREATED".split()
    assert len(rows) == 1
    assert rows[0].split()[:3] == [key_id, "dashboard", "agents:read,connect,send"]
    assert rows[0].split()[5:7] == ["all", "all"]  # tools, to agents
    assert secret not in result.out

    as_json = await run_cli(agentmesh_exe, "keys", "list", "--json", env=env_for)
    [row] = json.loads(as_json.out)
    assert row["key_id"] == key_id and row["rate_limit"] is None and row["tools"] is None
    assert secret not in as_json.out and "hash" not in row


async def test_keys_list_says_so_when_there_are_none(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "keys", "list", env=env_for)
    assert (result.code, result.out) == (0, "no keys\n")


async def test_keys_revoke_removes_the_key(agentmesh_exe: str, env_for: dict[str, str]) -> None:
    created = await run_cli(agentmesh_exe, "keys", "create", "temp", env=env_for)
    _, key_id = printed_key(created.out)

    result = await run_cli(agentmesh_exe, "keys", "revoke", key_id, env=env_for)
    assert (result.code, result.out) == (0, f"revoked key {key_id}\n")
    listed = await run_cli(agentmesh_exe, "keys", "list", env=env_for)
    assert listed.out == "no keys\n"

    again = await run_cli(agentmesh_exe, "keys", "revoke", key_id, env=env_for)
    assert again.code == 1
    assert again.err == f"error: no key with id '{key_id}' (see `agentmesh keys list`)\n"


BAD_INPUT = [
    pytest.param(["create", "x", "--rate-limit", "fast"], "invalid rate limit 'fast'", id="limit"),
    pytest.param(["create", "x", "--rate-limit", "0.5/s"], "at least 1", id="limit-below-one"),
    pytest.param(
        ["create", "x", "--token-limit", "many"], "invalid token limit 'many'", id="token-limit"
    ),
    pytest.param(
        ["create", "x", "--token-limit", "0.5/s"],
        "token limit 0.5/1s allows no token",
        id="token-limit-below-one",
    ),
    pytest.param(["create", "x", "--scope", "root"], "unknown scope 'root'", id="scope"),
    pytest.param(["create", "x", "--tools", "time"], "invalid tool pattern 'time'", id="tools"),
    pytest.param(
        ["create", "x", "--tools", "time/*", "--tools", "a.b/x"],
        "invalid tool pattern 'a.b/x'",
        id="tools-server",
    ),
    pytest.param(["create", "x", "--tools", " "], "no tool pattern", id="tools-empty"),
    pytest.param(["create", "x" * 65], "1-64 printable characters", id="name"),
    pytest.param(["revoke", "nosuchkey"], "no key with id 'nosuchkey'", id="unknown-id"),
    pytest.param(["revoke", "a.>"], "no key with id 'a.>'", id="wildcard-id"),
]


@pytest.mark.parametrize(("args", "words"), BAD_INPUT)
async def test_bad_input_exits_1_with_one_clear_line(
    agentmesh_exe: str, env_for: dict[str, str], args: list[str], words: str
) -> None:
    result = await run_cli(agentmesh_exe, "keys", *args, env=env_for)
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert words in result.err


@pytest.mark.parametrize("args", [["create", "x"], ["list"], ["revoke", "abcdefghijkl"], ["usage"]])
async def test_keys_with_redis_down_exits_1_naming_the_url(
    agentmesh_exe: str, env_for: dict[str, str], args: list[str]
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = await run_cli(
        agentmesh_exe, "keys", *args, env={**env_for, "AGENTMESH_REDIS_URL": url}
    )
    assert result.code == 1
    assert url in result.err
    assert "Traceback" not in result.err
    assert result.out == ""


@pytest.mark.parametrize("args", [["create", "x"], ["list"], ["revoke", "abcdefghijkl"], ["usage"]])
async def test_keys_with_nats_down_exits_1_naming_the_url(
    agentmesh_exe: str, env_for: dict[str, str], args: list[str]
) -> None:
    # Keys live in JetStream: without NATS there is nothing to read or write them in.
    url = f"nats://127.0.0.1:{free_port()}"
    result = await run_cli(agentmesh_exe, "keys", *args, env={**env_for, "AGENTMESH_NATS_URL": url})
    assert result.code == 1
    assert url in result.err and "cannot reach NATS" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""


# token limits and usage -----------------------------------------------------------------------
async def test_keys_create_with_a_token_limit_stores_it_and_list_shows_it(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    result = await run_cli(
        agentmesh_exe, "keys", "create", "llm bot", "--token-limit", "10000/60", env=env_for
    )
    assert result.code == 0, result.err
    _, key_id = printed_key(result.out)
    assert "token limit: 10000/60s" in result.out
    assert "rate limit:  none" in result.out

    assert (await stored(settings, key_id))["token_limit"] == "10000/60s"

    listed = await run_cli(agentmesh_exe, "keys", "list", env=env_for)
    header, row = listed.out.splitlines()
    assert row.split()[:5] == [key_id, "llm", "bot", "agents:read,connect,send", "-"]
    assert row.split()[5] == "10000/60s"
    [as_json] = json.loads(
        (await run_cli(agentmesh_exe, "keys", "list", "--json", env=env_for)).out
    )
    assert (as_json["rate_limit"], as_json["token_limit"]) == (None, "10000/60s")


async def test_keys_usage_prints_the_counters_per_key_and_model(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings, durable: DurableState
) -> None:
    redis = await connect_redis(settings)
    try:
        store = UsageStore(durable, redis, Subjects(settings.prefix))
        tokens = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        await store.add("abcdefghijkl", "gpt-4.1-mini", tokens, error=False)
        await store.add("abcdefghijkl", "gpt-4.1-mini", {}, error=True)
        await store.add("mnopqrstuvwx", "echo", {"total_tokens": 2}, error=False)
    finally:
        await redis.aclose()

    result = await run_cli(agentmesh_exe, "keys", "usage", env=env_for)
    assert result.code == 0, result.err
    assert [line.split() for line in result.out.splitlines()] == [
        ["KEY", "MODEL", "REQUESTS", "PROMPT", "COMPLETION", "TOTAL", "ERRORS"],
        ["abcdefghijkl", "gpt-4.1-mini", "2", "5", "3", "8", "1"],
        ["mnopqrstuvwx", "echo", "1", "0", "0", "2", "0"],
    ]
    one = await run_cli(agentmesh_exe, "keys", "usage", "mnopqrstuvwx", "--json", env=env_for)
    assert json.loads(one.out) == [
        {
            "key_id": "mnopqrstuvwx",
            "model": "echo",
            "requests": 1,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 2,
            "errors": 0,
        }
    ]
    none = await run_cli(agentmesh_exe, "keys", "usage", "zzzzzzzzzzzz", env=env_for)
    assert (none.code, none.out) == (0, "no usage for key zzzzzzzzzzzz\n")


# tool permissions -----------------------------------------------------------------------------
async def test_keys_create_with_tools_stores_them_and_list_shows_them(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    result = await run_cli(
        agentmesh_exe,
        "keys",
        "create",
        "tool bot",
        "--tools",
        "time/*,demo/echo",
        "--tools",
        "*/read_*",
        env=env_for,
    )
    assert result.code == 0, result.err
    _, key_id = printed_key(result.out)
    assert "  tools:       time/*, demo/echo, */read_*\n" in result.out

    assert (await stored(settings, key_id))["tools"] == ["time/*", "demo/echo", "*/read_*"]

    listed = await run_cli(agentmesh_exe, "keys", "list", env=env_for)
    _, row = listed.out.splitlines()
    assert row.split()[:3] == [key_id, "tool", "bot"]
    assert row.split()[6] == "time/*,demo/echo,*/read_*"
    [as_json] = json.loads(
        (await run_cli(agentmesh_exe, "keys", "list", "--json", env=env_for)).out
    )
    assert as_json["tools"] == ["time/*", "demo/echo", "*/read_*"]


async def test_keys_create_without_tools_allows_every_tool(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "keys", "create", "plain", env=env_for)
    assert result.code == 0, result.err
    assert "  tools:       all\n" in result.out


# keys an earlier version kept in Redis ---------------------------------------------------------
async def test_keys_list_moves_keys_of_the_old_redis_layout_into_jetstream_first(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    key_id = "legacy000001"
    redis = await connect_redis(settings)
    try:
        await redis.hset(
            f"{settings.prefix}:key:{key_id}",
            mapping={"name": "from redis", "scopes": "send", "created_at": "1700000000.0",
                     "hash": hashlib.sha256(b"amk_legacy000001_x").hexdigest()},
        )  # fmt: skip
        await redis.sadd(f"{settings.prefix}:keys", key_id)
        result = await run_cli(agentmesh_exe, "keys", "list", "--json", env=env_for)
        assert result.code == 0, result.err
        assert "moved 1 keys, 0 webhooks" in result.err
        [row] = json.loads(result.out)
        assert (row["key_id"], row["name"], row["scopes"]) == (key_id, "from redis", ["send"])
        assert not await redis.exists(f"{settings.prefix}:keys", f"{settings.prefix}:key:{key_id}")
    finally:
        await redis.aclose()
    assert (await stored(settings, key_id))["name"] == "from redis"
    again = await run_cli(agentmesh_exe, "keys", "list", env=env_for)
    assert again.err == "" and key_id in again.out
