"""The gateway while Redis or NATS is down: 503 UNAVAILABLE with Retry-After in each API's own
format (never a 500, never a false 404 or 401), and serving again once the server is back; and
the records (keys, webhooks, usage totals) that outlive a Redis loss."""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.durable import DurableState
from agentmesh.broker.ratelimit import Limit
from agentmesh.broker.servers import NatsServer, RedisServer, free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.state import GatewayConfig
from agentmesh.gateway.webhook_store import WebhookStore
from agentmesh.schemas.envelope import Message
from tests.conftest import Logged, StartAgent, StartExecutor
from tests.gateway.conftest import NatsWithoutJetStream, StartGateway
from tests.workers.fixtures import StartWorker

MCP_HEADERS = {
    "Accept": "application/json, text/event-stream",
    "MCP-Protocol-Version": "2025-11-25",
}
TEXT = [{"type": "text", "text": "hi"}]


def assert_unavailable(r: httpx.Response) -> dict[str, Any]:
    """A 503 with a Retry-After of whole seconds; returns the body."""
    assert r.status_code == 503, (r.request.url, r.text)
    assert int(r.headers["retry-after"]) >= 1
    assert "redis.exceptions" not in r.text and "Error " not in r.text
    return r.json()


def mcp(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


async def test_every_route_that_reads_redis_answers_503_in_its_format_while_redis_is_down(
    start_gateway: StartGateway, settings: Settings, own_redis: RedisServer
) -> None:
    replica = await start_gateway(settings_=settings.with_(redis_url=own_redis.url))
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
        assert (await http.get("/gateway/agents")).status_code == 200
        await asyncio.to_thread(own_redis.stop)

        for path in ("/gateway/agents", "/gateway/agents/someone", "/gateway/status", "/v1/tools"):
            error = assert_unavailable(await http.get(path))["error"]
            assert error["code"] == "UNAVAILABLE", path
            assert "Redis" in error["message"], path

        openai = assert_unavailable(await http.get("/v1/models"))["error"]
        assert openai["code"] == "unavailable" and openai["type"] == "api_error"

        listed = await http.post("/mcp", json=mcp("tools/list", {}), headers=MCP_HEADERS)
        assert listed.status_code == 200, listed.text
        rpc_error = listed.json()["error"]
        assert rpc_error["code"] != 0 and rpc_error["message"].startswith("UNAVAILABLE: ")
        assert "Error " not in rpc_error["message"]
        called = await http.post(
            "/mcp",
            json=mcp("tools/call", {"name": "time_now", "arguments": {}}),
            headers=MCP_HEADERS,
        )
        result = called.json()["result"]
        assert result["isError"] is True
        assert result["content"][0]["text"].startswith("UNAVAILABLE: ")

        await asyncio.to_thread(own_redis.start)
        assert (await http.get("/gateway/agents")).status_code == 200
        assert (await http.get("/gateway/status")).status_code == 200


async def test_usage_and_agent_routes_answer_503_while_redis_is_down_but_keys_still_work(
    start_gateway: StartGateway, settings: Settings, own_redis: RedisServer, durable: DurableState
) -> None:
    own = settings.with_(redis_url=own_redis.url)
    replica = await start_gateway(config=GatewayConfig(auth=True), settings_=own)
    keys = KeyStore(durable, Subjects(own.prefix))
    admin, _ = await keys.create("root", scopes=frozenset({Scope.ADMIN}))
    budgeted, _ = await keys.create(
        "llm", scopes=frozenset({Scope.SEND}), token_limit=Limit(1000, 60)
    )
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=replica.url, timeout=30, headers=headers) as http:
        assert (await http.get("/gateway/keys")).status_code == 200
        await asyncio.to_thread(own_redis.stop)
        # Keys live in JetStream: checking and listing them needs no Redis.
        assert (await http.get("/gateway/keys")).status_code == 200
        for path in ("/gateway/usage", "/gateway/agents"):
            assert assert_unavailable(await http.get(path))["error"]["code"] == "UNAVAILABLE"
        # A token budget is in Redis: a call that must reserve from it cannot go on.
        anthropic = assert_unavailable(
            await http.post(
                "/v1/messages",
                json={
                    "model": "m",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "x"}],
                },
                headers={"Authorization": f"Bearer {budgeted}"},
            )
        )
        assert anthropic["type"] == "error" and anthropic["error"]["type"] == "overloaded_error"


async def test_sends_to_an_online_agent_during_a_nats_restart_are_delivered_or_503_never_404(
    own_nats: NatsServer,  # first: stopped after the agent and the gateway
    start_gateway: StartGateway,
    start_agent: StartAgent,
    settings: Settings,
) -> None:
    own = settings.with_(nats_url=own_nats.url)
    agent = Agent("steady")
    agent.handler(lambda msg, ctx: "ok")
    await start_agent(agent, settings_=own)
    replica = await start_gateway(settings_=own)
    statuses: list[int] = []
    restarted = asyncio.Event()

    async def sender(http: httpx.AsyncClient, wait: bool) -> None:
        # A waited send is a direct call; one without wait is a task submit (JetStream).
        body = {"to_agent_id": "steady", "content": TEXT, "timeout": 5, "wait": wait}
        delivered_after = 0
        while delivered_after < 20:  # keep sending until the mesh has clearly recovered
            r = await http.post("/gateway/send", json=body)
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "UNAVAILABLE", r.text
                assert int(r.headers["retry-after"]) >= 1
            elif r.status_code != 200:
                raise AssertionError(f"send got {r.status_code}: {r.text}")
            if restarted.is_set() and r.status_code == 200:
                delivered_after += 1

    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
        waited = {"to_agent_id": "steady", "content": TEXT, "wait": True}
        assert (await http.post("/gateway/send", json=waited)).status_code == 200
        async with asyncio.timeout(60), asyncio.TaskGroup() as tasks:
            for wait in (True, True, False, False):
                tasks.create_task(sender(http, wait))
            await asyncio.to_thread(own_nats.stop)
            await asyncio.to_thread(own_nats.start)
            restarted.set()
        # A waited send to an agent that really is not online is still AGENT_NOT_FOUND.
        r = await http.post("/gateway/send", json={**waited, "to_agent_id": "nobody"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
    assert 200 in statuses


# Records that outlive their servers (issue 10, item 3) -------------------------------------
ECHO_MODEL = {"models": [{"name": "echo", "deployments": [{"provider": "echo", "model": "echo"}]}]}
HELLO = {"model": "echo", "messages": [{"role": "user", "content": "hello mesh"}]}  # 2 + 2 tokens
HOOK_SECRET = "whsec-outage-0123456789abcdef"


def signed_delivery(body: bytes) -> dict[str, str]:
    ts, delivery = str(int(time.time())), f"dlv-{uuid.uuid4().hex}"
    mac = hmac.new(HOOK_SECRET.encode(), f"{ts}.{delivery}.".encode() + body, "sha256")
    return {
        "Content-Type": "application/json",
        "X-Mesh-Timestamp": ts,
        "X-Mesh-Delivery": delivery,
        "X-Mesh-Signature": "v2=" + mac.hexdigest(),
    }


def inbox() -> tuple[Agent, asyncio.Queue[Message]]:
    agent, received = Agent("inbox"), asyncio.Queue[Message]()

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> None:
        received.put_nowait(msg)

    return agent, received


async def test_keys_webhooks_and_usage_totals_survive_a_redis_loss(
    start_gateway: StartGateway,
    start_worker: StartWorker,
    start_agent: StartAgent,
    settings: Settings,
    own_redis: RedisServer,
    durable: DurableState,
    start_executor: StartExecutor,
) -> None:
    """Redis really restarted empty (no persistence): keys, webhooks and totals come back."""
    await start_worker(ECHO_MODEL)
    await start_executor()  # webhook deliveries are tasks
    agent, received = inbox()
    await start_agent(agent)
    own = settings.with_(redis_url=own_redis.url)
    replicas = [await start_gateway(config=GatewayConfig(auth=True), settings_=own) for _ in "ab"]
    keys = KeyStore(durable, Subjects(own.prefix))
    admin, _ = await keys.create("root", scopes=frozenset({Scope.ADMIN}))
    caller, record = await keys.create("caller", scopes=frozenset({Scope.SEND}))
    redis = await connect_redis(own)
    try:
        await WebhookStore(durable, redis, Subjects(own.prefix)).create(
            "alerts", agent_id="inbox", secret=HOOK_SECRET
        )
    finally:
        await redis.aclose()
    as_admin = {"Authorization": f"Bearer {admin}"}
    as_caller = {"Authorization": f"Bearer {caller}"}
    calls = 6
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(calls):
            r = await http.post(
                f"{replicas[i % 2].url}/v1/chat/completions", json=HELLO, headers=as_caller
            )
            assert r.status_code == 200, r.text
        before = await http.get(f"{replicas[0].url}/gateway/usage", headers=as_admin)
        assert before.json()["usage"] == [
            {
                "key_id": record.key_id,
                "model": "echo",
                "requests": calls,
                "prompt_tokens": 2 * calls,
                "completion_tokens": 2 * calls,
                "total_tokens": 4 * calls,
                "errors": 0,
            }
        ]

        await asyncio.to_thread(own_redis.stop)
        await asyncio.to_thread(own_redis.start)  # a new, empty Redis on the same port
        fresh = await connect_redis(own)
        try:
            assert await fresh.keys(f"{own.prefix}:usage*") == []  # the loss is real
        finally:
            await fresh.aclose()

        # Every replica still knows the keys, and the totals are folded again, exactly, even
        # when both replicas fold at once.
        rows = await asyncio.gather(
            *(http.get(f"{r.url}/gateway/usage", headers=as_admin) for r in replicas)
        )
        for r in rows:
            assert r.status_code == 200, r.text
            assert r.json() == before.json()
        r = await http.post(f"{replicas[1].url}/v1/chat/completions", json=HELLO, headers=as_caller)
        assert r.status_code == 200, r.text
        [row] = (await http.get(f"{replicas[0].url}/gateway/usage", headers=as_admin)).json()[
            "usage"
        ]
        assert (row["requests"], row["total_tokens"]) == (calls + 1, 4 * (calls + 1))

        body = b'{"alert": "disk full"}'
        r = await http.post(
            f"{replicas[1].url}/webhooks/alerts", content=body, headers=signed_delivery(body)
        )
        assert r.status_code == 202, r.text
        async with asyncio.timeout(5):
            delivered = await received.get()
        assert delivered.from_agent_id == "webhook-alerts"

        # Revoked on one replica, refused at once by the other.
        r = await http.delete(f"{replicas[0].url}/gateway/keys/{record.key_id}", headers=as_admin)
        assert r.status_code == 204, r.text
        r = await http.post(f"{replicas[1].url}/v1/chat/completions", json=HELLO, headers=as_caller)
        assert r.status_code == 401, r.text


async def test_jetstream_down_is_a_503_on_key_checks_never_a_401(
    own_nats: NatsServer,  # first: stopped after the gateway
    start_gateway: StartGateway,
    settings: Settings,
) -> None:
    own = settings.with_(nats_url=own_nats.url)
    replica = await start_gateway(config=GatewayConfig(auth=True), settings_=own)
    async with await Bus.connect(own, name="tests") as bus:
        key, _ = await KeyStore(DurableState(bus.nc), bus.subjects).create(
            "reader", scopes=frozenset({Scope.AGENTS_READ})
        )
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=replica.url, timeout=30, headers=headers) as http:
        assert (await http.get("/gateway/agents")).status_code == 200

        with Logged("agentmesh.broker.bus", "disconnected from NATS") as gone:
            await asyncio.to_thread(own_nats.stop)  # NATS gone: the gateway is reconnecting
            await gone.wait()
        for path in ("/gateway/agents", "/gateway/keys", "/v1/models"):
            r = await http.get(path)
            assert_unavailable(r)
            assert "invalid" not in r.text, r.text

        plain = NatsWithoutJetStream(own_nats)  # NATS back, JetStream not
        with Logged("agentmesh.broker.bus", "reconnected to NATS") as back:
            await asyncio.to_thread(plain.start)
            await back.wait()
        try:
            error = assert_unavailable(await http.get("/gateway/agents"))["error"]
            assert error["code"] == "UNAVAILABLE" and "JetStream" in error["message"], error
            openai_error = assert_unavailable(await http.get("/v1/models"))["error"]
            assert openai_error["code"] == "unavailable"
        finally:
            await asyncio.to_thread(plain.stop)

        # JetStream back with its files: the key was kept across the NATS restarts.
        with Logged("agentmesh.broker.bus", "reconnected to NATS") as back:
            await asyncio.to_thread(own_nats.start)
            await back.wait()
        assert (await http.get("/gateway/agents")).status_code == 200


async def test_a_gateway_refuses_to_start_on_a_nats_without_jetstream_and_says_why(
    agentmesh_exe: str, env_for: dict[str, str], tmp_path: Path
) -> None:
    plain = NatsWithoutJetStream(NatsServer(data_dir=tmp_path / "plain-nats"))
    await asyncio.to_thread(plain.start)
    try:
        proc = await asyncio.create_subprocess_exec(
            agentmesh_exe,
            "gateway",
            "--port",
            str(free_port()),
            env={**env_for, "AGENTMESH_NATS_URL": plain.url},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
    finally:
        await asyncio.to_thread(plain.stop)
    assert proc.returncode != 0, err  # uvicorn exits 3 when the app cannot start
    assert b"keeps API keys, webhooks and usage in NATS JetStream" in err
    assert b"nats-server -js" in err
