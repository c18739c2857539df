"""The gateway while Redis or NATS is down: 503 UNAVAILABLE with Retry-After in each API's own
format (never a 500, never a false 404), and serving again once the server is back."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from agentmesh.agents.agent import Agent
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.servers import NatsServer, RedisServer
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.state import GatewayConfig
from tests.conftest import StartAgent
from tests.gateway.conftest import StartGateway

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


async def test_key_and_usage_routes_answer_503_with_retry_after_while_redis_is_down(
    start_gateway: StartGateway, settings: Settings, own_redis: RedisServer
) -> None:
    own = settings.with_(redis_url=own_redis.url)
    replica = await start_gateway(config=GatewayConfig(auth=True), settings_=own)
    client = await connect_redis(own)
    try:
        keys = KeyStore(client, Subjects(own.prefix))
        admin, _ = await keys.create("root", scopes=frozenset({Scope.ADMIN}))
    finally:
        await client.aclose()
    headers = {"Authorization": f"Bearer {admin}"}
    async with httpx.AsyncClient(base_url=replica.url, timeout=30, headers=headers) as http:
        assert (await http.get("/gateway/keys")).status_code == 200
        await asyncio.to_thread(own_redis.stop)
        for path in ("/gateway/keys", "/gateway/usage", "/gateway/agents"):
            assert assert_unavailable(await http.get(path))["error"]["code"] == "UNAVAILABLE"
        anthropic = assert_unavailable(
            await http.post(
                "/v1/messages",
                json={
                    "model": "m",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "x"}],
                },
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

    async def sender(http: httpx.AsyncClient) -> None:
        delivered_after = 0
        while delivered_after < 20:  # keep sending until the mesh has clearly recovered
            r = await http.post(
                "/gateway/send", json={"to_agent_id": "steady", "content": TEXT, "timeout": 5}
            )
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["code"] == "UNAVAILABLE", r.text
                assert int(r.headers["retry-after"]) >= 1
            elif r.status_code != 200:
                raise AssertionError(f"send got {r.status_code}: {r.text}")
            if restarted.is_set() and r.status_code == 200:
                delivered_after += 1

    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
        assert (
            await http.post("/gateway/send", json={"to_agent_id": "steady", "content": TEXT})
        ).status_code == 200
        async with asyncio.timeout(60), asyncio.TaskGroup() as tasks:
            for _ in range(4):
                tasks.create_task(sender(http))
            await asyncio.to_thread(own_nats.stop)
            await asyncio.to_thread(own_nats.start)
            restarted.set()
        # A send to an agent that really is not online is still AGENT_NOT_FOUND.
        r = await http.post("/gateway/send", json={"to_agent_id": "nobody", "content": TEXT})
        assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
    assert 200 in statuses
