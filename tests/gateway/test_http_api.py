"""The gateway's HTTP agent API against real uvicorn, NATS and Redis, as in the seed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
import redis.asyncio as aioredis

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.broker.registry import HEARTBEAT_SCRIPT
from agentmesh.broker.settings import Settings
from agentmesh.schemas.envelope import Message
from tests.agentmesh.test_cli import run_cli
from tests.conftest import StartAgent
from tests.gateway.conftest import Replica, StartGateway
from tests.waiting import until

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def research_agent() -> Agent:
    agent = Agent(
        "agent-001",
        name="Research Agent",
        capabilities=["search", "analyze"],
        agent_type="analyst",
        version="1.0.0",
    )

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        return f"re: {msg.text}"

    return agent


async def test_agents_list_and_detail_follow_the_seed(
    http: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    await start_agent(research_agent())
    listed = (await http.get("/gateway/agents")).json()["agents"]
    assert len(listed) == 1
    agent = listed[0]
    assert {k: agent[k] for k in ("agent_id", "agent_name", "capabilities", "status")} == {
        "agent_id": "agent-001",
        "agent_name": "Research Agent",
        "capabilities": ["search", "analyze"],
        "status": "online",
    }
    assert ISO.match(agent["last_heartbeat"])
    detail = (await http.get("/gateway/agents/agent-001")).json()
    assert detail["agent_id"] == "agent-001" and ISO.match(detail["connected_at"])
    assert detail["agent_type"] == "analyst" and detail["instances"] == 1


async def test_an_agent_that_is_not_online_is_a_404_with_the_seed_code(
    http: httpx.AsyncClient,
) -> None:
    r = await http.get("/gateway/agents/nobody")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "AGENT_NOT_FOUND"
    body = {"to_agent_id": "nobody", "content": [{"type": "text", "text": "hi"}]}
    r = await http.post("/gateway/send", json={**body, "wait": True})
    assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
    # Without wait the message is a task: stored now, delivered when the agent comes online.
    r = await http.post("/gateway/send", json=body)
    assert r.status_code == 200 and r.json()["task_id"].startswith("task-")


async def test_send_stores_a_task_and_with_wait_returns_the_result(
    http: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    await start_agent(research_agent())
    body = {
        "from_agent_id": "sender-001",
        "to_agent_id": "agent-001",
        "conversation_id": "conv-abc-123",
        "content": [{"type": "text", "text": "Hello"}],
        "metadata": {},
    }
    r = await http.post("/gateway/send", json=body)
    assert r.status_code == 200
    sent = r.json()
    assert sent["status"] == "delivered" and sent["message_id"] and ISO.match(sent["timestamp"])
    assert sent["task_id"].startswith("task-") and "result" not in sent
    r = await http.post("/gateway/send", json={**body, "wait": True})
    waited = r.json()
    assert waited["status"] == "completed"
    assert waited["result"]["result"] == "re: Hello"
    assert waited["result"]["conversation_id"] == "conv-abc-123"
    assert waited["result"]["success"] is True
    assert "task_id" not in waited  # a direct call, not a task


async def test_send_with_wait_times_out_with_504(
    http: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    agent = Agent("sleepy")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        await asyncio.Event().wait()
        return "never"

    await start_agent(agent)
    r = await http.post(
        "/gateway/send",
        json={
            "to_agent_id": "sleepy",
            "wait": True,
            "timeout": 0.3,
            "content": [{"type": "text", "text": "hi"}],
        },
    )
    assert r.status_code == 504 and r.json()["error"]["code"] == "TIMEOUT"


async def test_bad_input_gets_a_clear_error_and_the_gateway_keeps_serving(
    http: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    await start_agent(research_agent())
    cases = [
        (b"{not json", 422),
        (b'{"to_agent_id": "agent-001"}', 422),  # no content
        (b'{"to_agent_id": "a.>", "content": [{"type": "text", "text": "x"}]}', 400),
        (b'{"to_agent_id": "agent-001", "content": [{"type": "nope"}]}', 422),
        (
            b'{"to_agent_id": "agent-001", "from_agent_id": "*", '
            b'"content": [{"type": "text", "text": "x"}]}',
            400,
        ),
    ]
    for raw, status in cases:
        r = await http.post(
            "/gateway/send", content=raw, headers={"content-type": "application/json"}
        )
        assert r.status_code == status, (raw, r.text)
        assert r.json()["error"]["code"] in {"INVALID_MESSAGE", "INVALID_ID"}
        assert r.json()["error"]["message"]
    r = await http.get("/gateway/agents/a.b")
    assert r.status_code == 400 and r.json()["error"]["code"] == "INVALID_ID"
    r = await http.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    assert (await http.get("/healthz")).status_code == 200


async def test_an_oversized_body_is_refused_with_413(
    start_gateway: StartGateway,
) -> None:
    from agentmesh.gateway.state import GatewayConfig

    replica = await start_gateway(config=GatewayConfig(max_body_bytes=1000))
    async with httpx.AsyncClient(base_url=replica.url) as http:
        big = {"to_agent_id": "x", "content": [{"type": "text", "text": "x" * 5000}]}
        r = await http.post("/gateway/send", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

        async def chunks():  # no content-length: counted while streaming
            for _ in range(10):
                yield b"x" * 500

        r = await http.post("/gateway/send", content=chunks())
        assert r.status_code == 413
        assert (await http.get("/healthz")).json() == {"status": "ok"}


async def test_status_counts_the_whole_mesh_and_ready_checks_both_servers(
    http: httpx.AsyncClient, start_agent: StartAgent, settings: Settings
) -> None:
    await start_agent(research_agent())
    for _ in range(3):
        await http.post(
            "/gateway/send",
            json={
                "to_agent_id": "agent-001",
                "wait": True,
                "content": [{"type": "text", "text": "x"}],
            },
        )

    async def counted() -> dict[str, Any] | None:
        status = (await http.get("/gateway/status")).json()
        return status if status["total_messages"] >= 3 else None

    status = await until(  # served counts reach Redis with the agent's next heartbeat
        counted,
        timeout=5,
        what="3 messages counted in /gateway/status",
        every=settings.heartbeat_interval / 2,
    )
    assert status["status"] == "running" and status["connected_agents"] == 1
    assert isinstance(status["uptime_seconds"], int) and status["version"]
    ready = await http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["nats"] and ready.json()["redis"]


async def test_openapi_describes_the_api(http: httpx.AsyncClient) -> None:
    spec = (await http.get("/openapi.json")).json()
    assert {
        "/gateway/agents",
        "/gateway/agents/{agent_id}",
        "/gateway/send",
        "/gateway/status",
    } <= set(spec["paths"])


async def test_two_replicas_serve_the_same_mesh(
    start_gateway: StartGateway, start_agent: StartAgent
) -> None:
    await start_agent(research_agent())
    a, b = await start_gateway(), await start_gateway()
    for replica in (a, b):
        async with httpx.AsyncClient(base_url=replica.url) as http:
            r = await http.post(
                "/gateway/send",
                json={
                    "to_agent_id": "agent-001",
                    "wait": True,
                    "content": [{"type": "text", "text": "x"}],
                },
            )
            assert r.json()["result"]["result"] == "re: x"


async def test_file_bytes_travel_as_base64_in_json_and_as_binary_on_the_bus(
    http: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    import base64

    agent = Agent("files")
    seen: list[bytes] = []

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> object:
        seen.append(msg.content[0].bytes)  # type: ignore[union-attr]
        return msg.content

    await start_agent(agent)
    raw = bytes(range(256))  # not UTF-8
    encoded = base64.b64encode(raw).decode()
    r = await http.post(
        "/gateway/send",
        json={
            "to_agent_id": "files",
            "wait": True,
            "content": [{"type": "file", "name": "blob.bin", "bytes": encoded}],
        },
    )
    assert r.status_code == 200, r.text
    assert seen == [raw]
    assert r.json()["result"]["content"][0]["bytes"] == encoded


async def test_one_invalid_registry_record_never_takes_the_listings_down(
    http: httpx.AsyncClient,
    start_agent: StartAgent,
    redis: aioredis.Redis,
    settings: Settings,
    agentmesh_exe: str,
    env_for: dict[str, str],
) -> None:
    await start_agent(research_agent())
    # A Node agent written from PROTOCOL.md that sent its card's owner as a string.
    record = {
        "kind": "agent",
        "service_id": "node-agent",
        "instance_id": "node1",
        "started_at": time.time(),
        "serves": {"agents": ["node-agent"]},
        "card": {"agent_id": "node-agent", "owner": "alice"},
    }

    async def beat() -> None:  # the node agent's heartbeat; the tests' timeout is a second
        await redis.eval(HEARTBEAT_SCRIPT, 0, settings.prefix, "node1", json.dumps(record), 60_000)

    await beat()
    r = await http.get("/gateway/agents")
    assert r.status_code == 200
    assert [a["agent_id"] for a in r.json()["agents"]] == ["agent-001"]
    assert (await http.get("/gateway/agents/node-agent")).status_code == 404
    await beat()
    listed = (await http.get("/gateway/services")).json()["services"]
    invalid = [s for s in listed if s["kind"] == "invalid"]
    assert [s["instance_id"] for s in invalid] == ["node1"]
    assert "card.owner" in invalid[0]["error"] and invalid[0]["key"].endswith(":svc:node1")
    await beat()
    status = (await http.get("/gateway/status")).json()
    assert status["connected_agents"] >= 1 and status["services"]["invalid"]["instances"] == 1
    # The CLI takes a while to start: it reads with a longer timeout than the tests' second.
    slow_reader = {
        **env_for,
        "AGENTMESH_HEARTBEAT_INTERVAL": "30",
        "AGENTMESH_HEARTBEAT_TIMEOUT": "60",
    }

    async def keep_beating() -> None:  # as the node agent would, while the CLI starts (slowly)
        while True:
            await beat()
            await asyncio.sleep(settings.heartbeat_interval)

    beating = asyncio.create_task(keep_beating())
    try:
        for args, shown in (
            (["agents"], "agent-001"),
            (["ps"], "invalid"),
            (["status"], "invalid"),
        ):
            result = await run_cli(agentmesh_exe, *args, env=slow_reader)
            assert result.code == 0 and "Traceback" not in result.err, result.err
            assert shown in result.out
    finally:
        beating.cancel()


async def test_services_lists_the_gateway_and_agents_with_their_load(
    http: httpx.AsyncClient, start_agent: StartAgent, gateway: Replica
) -> None:
    await start_agent(research_agent())
    listed = (await http.get("/gateway/services")).json()["services"]
    by_kind = {s["kind"]: s for s in listed}
    assert by_kind["gateway"]["detail"]["listen"] == f"127.0.0.1:{gateway.port}"
    assert by_kind["agent"]["serves"]["agents"] == ["agent-001"]
    assert by_kind["agent"]["card"]["agent_id"] == "agent-001"
    assert set(by_kind["agent"]["load"]) == {"in_flight", "served"}
    only = (await http.get("/gateway/services", params={"kind": "gateway"})).json()["services"]
    assert [s["kind"] for s in only] == ["gateway"]
    body = {"to_agent_id": "agent-001", "wait": True, "content": [{"type": "text", "text": "x"}]}
    assert (await http.post("/gateway/send", json=body)).status_code == 200

    async def loaded() -> dict[str, Any] | None:
        listed = (await http.get("/gateway/services")).json()["services"]
        by_kind = {s["kind"]: s for s in listed}
        served = by_kind["gateway"]["load"]["served"] and by_kind["agent"]["load"]["served"]
        return by_kind if served else None

    by_kind = await until(  # the load reaches the registry with each instance's next heartbeat
        loaded, timeout=5, what="the gateway's and the agent's served calls in /gateway/services"
    )
    assert by_kind["gateway"]["load"]["served"] == 1  # the call it relayed
    assert by_kind["agent"]["load"]["served"] == 1  # the call it answered
