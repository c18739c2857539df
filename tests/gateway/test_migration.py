"""Records an earlier version kept in Redis (keys, webhooks, usage counters) are moved into
JetStream when a gateway starts: written here in the old layout, field for field, then used."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid

import httpx
import pytest
import redis.asyncio as aioredis

from agentmesh.agents.agent import Agent
from agentmesh.broker.durable import DurableState
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyRecord, KeyStore
from agentmesh.gateway.state import GatewayConfig
from agentmesh.gateway.usage import UsageStore
from agentmesh.schemas.envelope import Message
from tests.conftest import StartAgent, StartExecutor
from tests.gateway.conftest import StartGateway
from tests.workers.fixtures import StartWorker

SECRET = "whsec-legacy-0123456789abcdef"
ADMIN_ID, READER_ID, TAKEN_ID = "oldadmin0001", "oldreader001", "oldtaken0001"
ECHO_MODEL = {"models": [{"name": "echo", "deployments": [{"provider": "echo", "model": "echo"}]}]}
OLD_USAGE = {
    f"{ADMIN_ID}:gpt-4~2e1-mini": {
        "requests": 7,
        "prompt_tokens": 35,
        "completion_tokens": 21,
        "total_tokens": 56,
        "errors": 1,
    },
    "anonymous:echo": {"requests": 3, "total_tokens": 12},
}


def old_key(key_id: str) -> str:
    return f"amk_{key_id}_{'s' * 43}"


async def write_old_layout(redis: aioredis.Redis, prefix: str) -> None:
    """What the Redis-only version wrote (gateway/keys.py, webhook_store.py, usage.py then)."""
    created = repr(time.time() - 86400)
    await redis.hset(
        f"{prefix}:key:{ADMIN_ID}",
        mapping={
            "name": "old admin",
            "scopes": "admin",
            "rate_limit": "100/60s",
            "token_limit": "",
            "tools": '["time/*"]',
            "agents": '["bot-*"]',
            "created_at": created,
            "hash": hashlib.sha256(old_key(ADMIN_ID).encode()).hexdigest(),
        },
    )
    # From before tool and agent patterns existed: no `agents`, "" tools (every tool).
    await redis.hset(
        f"{prefix}:key:{READER_ID}",
        mapping={
            "name": "old reader",
            "scopes": "agents:read,send",
            "rate_limit": "",
            "tools": "",
            "created_at": created,
            "hash": hashlib.sha256(old_key(READER_ID).encode()).hexdigest(),
        },
    )
    await redis.hset(
        f"{prefix}:key:{TAKEN_ID}",
        mapping={"name": "redis copy", "scopes": "admin", "created_at": created, "hash": "x" * 64},
    )
    await redis.sadd(f"{prefix}:keys", ADMIN_ID, READER_ID, TAKEN_ID)
    await redis.hset(
        f"{prefix}:webhook:legacy",
        mapping={
            "agent_id": "inbox",
            "secret": SECRET,
            "created_at": created,
            "tolerance_seconds": "300",
        },
    )
    await redis.sadd(f"{prefix}:webhooks", "legacy")
    for pair, counts in OLD_USAGE.items():
        await redis.hset(f"{prefix}:usage:{pair}", mapping=counts)
        await redis.sadd(f"{prefix}:usage", pair)


def signed(body: bytes) -> dict[str, str]:
    ts, delivery = str(int(time.time())), f"dlv-{uuid.uuid4().hex}"
    mac = hmac.new(SECRET.encode(), f"{ts}.{delivery}.".encode() + body, "sha256")
    return {
        "Content-Type": "application/json",
        "X-Mesh-Timestamp": ts,
        "X-Mesh-Delivery": delivery,
        "X-Mesh-Signature": "v2=" + mac.hexdigest(),
    }


async def test_keys_webhooks_and_usage_in_the_old_redis_layout_move_to_jetstream_at_start(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    start_agent: StartAgent,
    settings: Settings,
    redis: aioredis.Redis,
    durable: DurableState,
    caplog: pytest.LogCaptureFixture,
    start_executor: StartExecutor,
) -> None:
    prefix = settings.prefix
    await write_old_layout(redis, prefix)
    await start_executor()  # webhook deliveries are tasks
    # A record already in JetStream is never overwritten by its Redis copy.
    taken = KeyRecord(TAKEN_ID, "kv copy", frozenset({Scope.SEND}), None, time.time())
    assert await KeyStore(durable, Subjects(prefix)).adopt(taken, "y" * 64)
    await start_worker(ECHO_MODEL)
    agent, received = Agent("inbox"), asyncio.Queue[Message]()
    agent.handler(lambda msg, ctx: received.put_nowait(msg))
    await start_agent(agent)

    with caplog.at_level(logging.INFO, logger="agentmesh.gateway.migration"):
        # Two replicas starting at once: one migrates, the other waits for it.
        replicas = await asyncio.gather(
            *(start_gateway(config=GatewayConfig(auth=True)) for _ in "ab")
        )
    moved = [r.getMessage() for r in caplog.records if "moved from Redis" in r.getMessage()]
    assert moved == [
        "moved from Redis to JetStream: 2 API keys, 1 webhooks, usage of 2 key/model pairs"
    ]
    for old in ("keys", f"key:{ADMIN_ID}", f"key:{TAKEN_ID}", "webhooks", "webhook:legacy"):
        assert not await redis.exists(f"{prefix}:{old}"), old

    admin = {"Authorization": f"Bearer {old_key(ADMIN_ID)}"}
    reader = {"Authorization": f"Bearer {old_key(READER_ID)}"}
    async with httpx.AsyncClient(timeout=30) as http:
        listed = await http.get(f"{replicas[0].url}/gateway/keys", headers=admin)
        assert listed.status_code == 200, listed.text
        by_id = {k["key_id"]: k for k in listed.json()["keys"]}
        assert by_id[ADMIN_ID]["name"] == "old admin"
        assert (by_id[ADMIN_ID]["rate_limit"], by_id[ADMIN_ID]["tools"]) == ("100/60s", ["time/*"])
        assert by_id[ADMIN_ID]["agents"] == ["bot-*"]
        assert by_id[READER_ID]["scopes"] == ["agents:read", "send"]
        assert (by_id[READER_ID]["tools"], by_id[READER_ID]["agents"]) == (None, [])
        assert by_id[TAKEN_ID]["name"] == "kv copy"
        agents = await http.get(f"{replicas[1].url}/gateway/agents", headers=reader)
        assert agents.status_code == 200, agents.text

        body = b'{"from": "before the upgrade"}'
        r = await http.post(
            f"{replicas[1].url}/webhooks/legacy", content=body, headers=signed(body)
        )
        assert r.status_code == 202, r.text
        async with asyncio.timeout(5):
            assert (await received.get()).from_agent_id == "webhook-legacy"

        # The old totals, once (not once per replica), then counted on from there.
        usage = await http.get(f"{replicas[1].url}/gateway/usage", headers=admin)
        rows = {(u.pop("key_id"), u.pop("model")): u for u in usage.json()["usage"]}
        assert rows[ADMIN_ID, "gpt-4.1-mini"] == OLD_USAGE[f"{ADMIN_ID}:gpt-4~2e1-mini"]
        assert rows["anonymous", "echo"] == {
            "requests": 3,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 12,
            "errors": 0,
        }
        hello = {"model": "echo", "messages": [{"role": "user", "content": "hello mesh"}]}
        r = await http.post(f"{replicas[0].url}/v1/chat/completions", json=hello, headers=admin)
        assert r.status_code == 200, r.text

    # A later start finds nothing left to move, and the totals stay what they were.
    await start_gateway(config=GatewayConfig(auth=True))
    store = UsageStore(durable, redis, Subjects(prefix))
    usage = {u.model: u for u in await store.read(ADMIN_ID)}
    assert (usage["echo"].requests, usage["echo"].total_tokens) == (1, 4)
    old = usage["gpt-4.1-mini"]
    assert (old.requests, old.total_tokens, old.errors) == (7, 56, 1)
