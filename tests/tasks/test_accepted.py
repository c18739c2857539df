""" "Accepted" means durable: `POST /gateway/send` without `wait` and webhook deliveries are tasks,
answered once stored, and run to their end whatever happens to the agent meanwhile."""

from __future__ import annotations

import asyncio
import time

import httpx
import redis.asyncio as aioredis

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.durable import DurableState
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.state import GatewayConfig
from agentmesh.gateway.webhook_store import WebhookStore
from agentmesh.gateway.webhooks import signature
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.service import ServiceKind
from agentmesh.schemas.task import TaskStatus
from tests.conftest import StartAgent, StartExecutor
from tests.gateway.conftest import StartGateway
from tests.tasks.conftest import online

SECRET = "whsec-accepted-0123456789abcdef"
COUNT = 20
TEXT = [{"type": "text", "text": "hello"}]


def signed(body: bytes, delivery: str) -> dict[str, str]:
    ts = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Mesh-Timestamp": ts,
        "X-Mesh-Delivery": delivery,
        "X-Mesh-Signature": signature(SECRET, ts, delivery, body),
    }


async def webhook(durable: DurableState, redis: aioredis.Redis, prefix: str, agent_id: str) -> None:
    await WebhookStore(durable, redis, Subjects(prefix)).create(
        "hook", agent_id=agent_id, secret=SECRET
    )


async def sigkill_the_holder_then_take(
    mesh: MeshClient, spawn, accept, conversations: list[str]
) -> None:
    """Start `inbox` as a holder, have `accept()` get every message acknowledged, SIGKILL the
    holder once it holds them all, start a taker: each task completes, on the taker, once."""
    holder = await spawn("agent", "run", "tests.tasks.inbox:holder")
    [record] = [r for r in await online(mesh, ServiceKind.AGENT, 1) if r.service_id == "inbox"]
    task_ids = await accept()
    async with asyncio.timeout(20):
        for task_id in task_ids:  # the executor handed each to the holder, which took it
            async for event in mesh.tasks.events(task_id):
                if event.status is TaskStatus.RUNNING:
                    break
    holder.kill()  # as an agent dies with the messages it was given
    await holder.wait()
    await spawn("agent", "run", "tests.tasks.inbox:taker")
    async with asyncio.timeout(60):
        done = [await mesh.tasks.wait(task_id) for task_id in task_ids]
    assert [d.status for d in done] == [TaskStatus.COMPLETED] * len(done), [d.error for d in done]
    instances, handled = zip(*(d.result.text.split(":") for d in done), strict=True)
    assert len(set(instances)) == 1 and record.instance_id not in instances
    assert sorted(handled) == sorted(conversations)
    for d in done:  # the holder's attempt was lost with it, and retried on the taker
        assert [a.instance_id for a in d.attempts] == [record.instance_id, instances[0]]
        assert d.attempts[0].error is not None and d.attempts[0].error.code == "UNAVAILABLE"


async def test_sends_answered_before_their_agent_was_sigkilled_all_run_on_the_next_replica(
    mesh: MeshClient, spawn, start_gateway: StartGateway, start_executor: StartExecutor
) -> None:
    await start_executor()
    replica = await start_gateway()
    conversations = [f"c{i}" for i in range(COUNT)]

    async def accept() -> list[str]:
        async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
            answers = await asyncio.gather(
                *(
                    http.post(
                        "/gateway/send",
                        json={"to_agent_id": "inbox", "conversation_id": c, "content": TEXT},
                    )
                    for c in conversations
                )
            )
        assert [r.status_code for r in answers] == [200] * COUNT, [r.text for r in answers]
        assert {r.json()["status"] for r in answers} == {"delivered"}
        return [r.json()["task_id"] for r in answers]

    await sigkill_the_holder_then_take(mesh, spawn, accept, conversations)


async def test_webhook_deliveries_answered_before_their_agent_was_sigkilled_all_run_later(
    mesh: MeshClient,
    spawn,
    start_gateway: StartGateway,
    start_executor: StartExecutor,
    durable: DurableState,
    redis: aioredis.Redis,
    prefix: str,
) -> None:
    await webhook(durable, redis, prefix, "inbox")
    await start_executor()
    replica = await start_gateway()
    deliveries = [f"d{i}" for i in range(COUNT)]

    async def accept() -> list[str]:
        body = b'{"event": "paid"}'
        async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
            answers = await asyncio.gather(
                *(
                    http.post("/webhooks/hook", content=body, headers=signed(body, d))
                    for d in deliveries
                )
            )
        assert [r.status_code for r in answers] == [202] * COUNT, [r.text for r in answers]
        return [r.json()["task_id"] for r in answers]

    await sigkill_the_holder_then_take(mesh, spawn, accept, deliveries)


async def test_a_webhook_retry_is_the_same_task_also_after_a_crash_between_stored_and_answered(
    mesh: MeshClient,
    start_gateway: StartGateway,
    start_executor: StartExecutor,
    start_agent: StartAgent,
    durable: DurableState,
    redis: aioredis.Redis,
    prefix: str,
) -> None:
    received: list[str | None] = []
    agent = Agent("billing")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        received.append(msg.conversation_id)
        return "ok"

    await webhook(durable, redis, prefix, "billing")
    replica = await start_gateway()
    # A gateway that stored delivery "d-crash" and died before it answered (PROTOCOL.md §8).
    stored = await mesh.tasks.submit("billing", "as stored", idempotency_key="hook:hook:d-crash")
    body = b'{"n": 1}'
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
        first = await http.post("/webhooks/hook", content=body, headers=signed(body, "d-1"))
        assert first.status_code == 202, first.text
        again = await http.post("/webhooks/hook", content=body, headers=signed(body, "d-1"))
        retry = await http.post("/webhooks/hook", content=body, headers=signed(body, "d-crash"))
    assert again.status_code == 200 and again.json() == {
        "status": "duplicate",
        "delivery_id": "d-1",
        "task_id": first.json()["task_id"],
    }
    assert retry.status_code == 200 and retry.json()["task_id"] == stored.task_id
    await start_agent(agent)
    await start_executor()
    async with asyncio.timeout(20):
        for task_id in (first.json()["task_id"], stored.task_id):
            assert (await mesh.tasks.wait(task_id)).status is TaskStatus.COMPLETED
    assert len(received) == 2 and set(received) == {"d-1", None}  # each delivery handled once
    assert len(await mesh.tasks.list(agent_id="billing")) == 2


async def test_a_send_to_an_offline_agent_is_stored_with_its_sender_and_runs_once_it_is_online(
    mesh: MeshClient,
    start_gateway: StartGateway,
    start_executor: StartExecutor,
    start_agent: StartAgent,
    durable: DurableState,
    prefix: str,
) -> None:
    key, record = await KeyStore(durable, Subjects(prefix)).create(
        "sender", scopes=frozenset({Scope.SEND}), agents=["sender-*"]
    )
    replica = await start_gateway(config=GatewayConfig(auth=True))
    body = {
        "from_agent_id": "sender-1",
        "to_agent_id": "later",
        "conversation_id": "conv-9",
        "content": TEXT,
        "metadata": {"k": 1, "sender_key": "forged"},
    }
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
        r = await http.post("/gateway/send", json=body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"message_id", "status", "timestamp", "task_id"}
    stored = await mesh.tasks.get(answer["task_id"])
    assert stored.status is TaskStatus.PENDING and stored.spec.agent_id == "later"
    assert stored.spec.metadata == {"sender_key": record.key_id}

    got: asyncio.Queue[Message] = asyncio.Queue()
    agent = Agent("later")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        got.put_nowait(msg)
        return f"re: {msg.text}"

    await start_executor()
    await start_agent(agent)
    async with asyncio.timeout(20):
        done = await mesh.tasks.wait(answer["task_id"])
        message = await got.get()
    assert done.status is TaskStatus.COMPLETED and done.result.text == "re: hello"
    assert message.message_id == answer["message_id"]
    assert (message.from_agent_id, message.to_agent_id) == ("sender-1", "later")
    assert message.conversation_id == "conv-9"
    assert message.metadata == {"k": 1, "sender_key": record.key_id}


async def test_a_send_with_wait_is_still_a_direct_call_that_returns_the_reply(
    mesh: MeshClient, start_gateway: StartGateway, start_agent: StartAgent
) -> None:
    agent = Agent("direct")
    agent.handler(lambda msg, ctx: f"re: {msg.text}")
    await start_agent(agent)
    replica = await start_gateway()
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
        r = await http.post(
            "/gateway/send", json={"to_agent_id": "direct", "content": TEXT, "wait": True}
        )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed" and r.json()["result"]["result"] == "re: hello"
    assert "task_id" not in r.json()
    assert await mesh.tasks.list(agent_id="direct") == []  # no executor needed, no task made
