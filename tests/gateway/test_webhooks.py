"""Signed webhooks against real uvicorn replicas, NATS, Redis, an executor and an SDK agent.

An accepted delivery is a durable task that the executor hands to the agent. "Nothing was
delivered" is shown without waiting: after a refused call, a valid delivery is sent, and the
first message the agent receives must be that valid one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import pytest
import redis.asyncio as aioredis

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.broker.durable import DurableState
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.state import GatewayConfig
from agentmesh.gateway.webhook_store import WebhookStore
from agentmesh.schemas.envelope import DataPart, FilePart, Message, TextPart
from tests.conftest import StartAgent, StartExecutor
from tests.gateway.conftest import Replica, StartGateway

SECRET = "whsec-test-0123456789abcdef"
WAIT = 5.0


def sign(secret: str, timestamp: str, delivery: str, body: bytes, *, v1: bool = False) -> str:
    """What a sender computes, written out independently of the gateway's code."""
    if v1:  # the legacy scheme: the delivery id is not signed
        mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, "sha256")
        return "sha256=" + mac.hexdigest()
    mac = hmac.new(secret.encode(), f"{timestamp}.{delivery}.".encode() + body, "sha256")
    return "v2=" + mac.hexdigest()


def signed(
    body: bytes,
    *,
    secret: str = SECRET,
    ts: float | None = None,
    delivery: str | None = None,
    content_type: str = "application/json",
    v1: bool = False,
) -> dict[str, str]:
    timestamp = str(int(time.time() if ts is None else ts))
    delivery = delivery or f"dlv-{uuid.uuid4().hex}"
    return {
        "Content-Type": content_type,
        "X-Mesh-Timestamp": timestamp,
        "X-Mesh-Delivery": delivery,
        "X-Mesh-Signature": sign(secret, timestamp, delivery, body, v1=v1),
    }


@dataclass
class Recorder:
    agent: Agent
    received: asyncio.Queue[Message]

    async def next(self) -> Message:
        async with asyncio.timeout(WAIT):
            return await self.received.get()


def recorder(agent_id: str = "triage") -> Recorder:
    agent = Agent(agent_id)
    received: asyncio.Queue[Message] = asyncio.Queue()

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> None:
        received.put_nowait(msg)

    return Recorder(agent, received)


@pytest.fixture
async def store(durable: DurableState, redis: aioredis.Redis, settings: Settings) -> WebhookStore:
    store = WebhookStore(durable, redis, Subjects(settings.prefix))
    await store.create("github", agent_id="triage", secret=SECRET)
    return store


@pytest.fixture
async def executor(start_executor: StartExecutor) -> None:
    """Deliveries are tasks: an executor hands them to the agent."""
    await start_executor()


@pytest.fixture
async def triage(start_agent: StartAgent, executor: None) -> Recorder:
    rec = recorder("triage")
    await start_agent(rec.agent)
    return rec


async def post(
    http: httpx.AsyncClient, body: bytes, headers: dict[str, str], name: str = "github"
) -> httpx.Response:
    return await http.post(f"/webhooks/{name}", content=body, headers=headers)


async def assert_next_is_a_fresh_delivery(http: httpx.AsyncClient, triage: Recorder) -> None:
    """The agent's next message is a new valid delivery: nothing else reached it before."""
    headers = signed(b'{"probe": true}')
    assert (await post(http, b'{"probe": true}', headers)).status_code == 202
    got = await triage.next()
    assert got.conversation_id == headers["X-Mesh-Delivery"] and got.data == {"probe": True}


# Delivery ------------------------------------------------------------------------------------
async def test_a_signed_json_delivery_reaches_the_agent_as_data_with_webhook_metadata(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    # Odd spacing on purpose: the signature covers the raw bytes, never re-serialised JSON.
    body = b'{"action" :"opened",  "issue": {"number": 7}}'
    headers = signed(body, delivery="gh-7f3a") | {"User-Agent": "GitHub-Hookshot/1"}
    r = await post(http, body, headers)
    assert r.status_code == 202, r.text
    answer = r.json()
    assert answer["status"] == "delivered" and answer["delivery_id"] == "gh-7f3a"
    assert answer["task_id"].startswith("task-")

    got = await triage.next()
    assert got.message_id == answer["message_id"]
    assert got.content == [DataPart(data={"action": "opened", "issue": {"number": 7}})]
    assert got.from_agent_id == "webhook-github" and got.to_agent_id == "triage"
    assert got.conversation_id == "gh-7f3a"
    assert got.metadata["webhook"] == "github"
    assert got.metadata["delivery_id"] == "gh-7f3a"
    assert got.metadata["content_type"] == "application/json"
    assert got.metadata["timestamp"] == int(headers["X-Mesh-Timestamp"])
    assert got.metadata["headers"] == {"user-agent": "GitHub-Hookshot/1"}


async def test_a_non_json_body_arrives_as_text(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    body = "build 42 passed ✓".encode()
    r = await post(http, body, signed(body, content_type="text/plain; charset=utf-8"))
    assert r.status_code == 202, r.text
    assert (await triage.next()).content == [TextPart(text="build 42 passed ✓")]

    broken = b'{"not": json'  # declared JSON that does not parse is still delivered, as text
    assert (await post(http, broken, signed(broken))).status_code == 202
    assert (await triage.next()).content == [TextPart(text='{"not": json')]


async def test_a_binary_body_arrives_as_a_file_part_with_its_bytes(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    body = bytes(range(256))
    r = await post(http, body, signed(body, content_type="application/octet-stream"))
    assert r.status_code == 202, r.text
    assert (await triage.next()).content == [
        FilePart(bytes=body, mime_type="application/octet-stream")
    ]


async def test_json_that_msgpack_cannot_carry_arrives_as_text(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    body = b'{"id": 123456789012345678901234567890}'  # beyond 64-bit integers
    assert (await post(http, body, signed(body))).status_code == 202
    assert (await triage.next()).text == body.decode()


# Signatures and replays ----------------------------------------------------------------------
async def test_a_bad_signature_is_401_and_nothing_is_delivered(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    body = b'{"evil": true}'
    r = await post(http, body, signed(body, secret="not-the-secret-at-all"))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "UNAUTHORIZED"
    assert "signature" in r.json()["error"]["message"]
    await assert_next_is_a_fresh_delivery(http, triage)


async def test_a_signature_over_a_different_body_is_401(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    headers = signed(b'{"amount": 1}')
    r = await post(http, b'{"amount": 1000}', headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    await assert_next_is_a_fresh_delivery(http, triage)


async def test_an_old_timestamp_is_a_replay_even_with_a_valid_signature(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    body = b'{"captured": "earlier"}'
    r = await post(http, body, signed(body, ts=time.time() - 1000))
    assert r.status_code == 401
    assert r.json()["error"] == {
        "code": "UNAUTHORIZED",
        "message": "timestamp outside the tolerance window",
        "details": r.json()["error"]["details"],
    }
    assert r.json()["error"]["details"]["tolerance_seconds"] == 300
    await assert_next_is_a_fresh_delivery(http, triage)


async def test_a_timestamp_too_far_in_the_future_is_401(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    body = b"{}"
    r = await post(http, body, signed(body, ts=time.time() + 1000))
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "timestamp outside the tolerance window"
    await assert_next_is_a_fresh_delivery(http, triage)


async def test_a_per_webhook_tolerance_widens_the_window(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    await store.create("slow-sender", agent_id="triage", secret=SECRET, tolerance_seconds=3600)
    body = b'{"late": true}'
    r = await post(http, body, signed(body, ts=time.time() - 1000), name="slow-sender")
    assert r.status_code == 202, r.text
    assert (await triage.next()).metadata["webhook"] == "slow-sender"


@pytest.mark.parametrize("header", ["X-Mesh-Timestamp", "X-Mesh-Delivery", "X-Mesh-Signature"])
async def test_a_missing_header_is_400_naming_it(
    http: httpx.AsyncClient, store: WebhookStore, header: str
) -> None:
    headers = signed(b"{}")
    del headers[header]
    r = await post(http, b"{}", headers)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "INVALID_MESSAGE" and header in error["message"]


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Mesh-Timestamp", "yesterday"),
        ("X-Mesh-Timestamp", "1700000000.5"),
        ("X-Mesh-Signature", "md5=abc"),
        ("X-Mesh-Signature", "0123456789abcdef" * 4),
        ("X-Mesh-Delivery", "two words"),
        ("X-Mesh-Delivery", "x" * 129),
    ],
)
async def test_a_garbled_header_is_400_naming_it(
    http: httpx.AsyncClient, store: WebhookStore, header: str, value: str
) -> None:
    headers = signed(b"{}") | {header: value}
    r = await post(http, b"{}", headers)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["code"] == "INVALID_MESSAGE" and header in error["message"]


async def test_an_unknown_or_deleted_webhook_is_404(
    http: httpx.AsyncClient, store: WebhookStore
) -> None:
    for name in ("nobody", "bad.name"):
        r = await post(http, b"{}", signed(b"{}"), name=name)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    assert await store.delete("github")
    r = await post(http, b"{}", signed(b"{}"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"


@asynccontextmanager
async def two_replicas(
    start_gateway: StartGateway,
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """HTTP clients of two gateway replicas of the same mesh."""
    a, b = await start_gateway(), await start_gateway()
    async with (
        httpx.AsyncClient(base_url=a.url, timeout=10) as on_a,
        httpx.AsyncClient(base_url=b.url, timeout=10) as on_b,
    ):
        yield on_a, on_b


# Replays with another delivery id -------------------------------------------------------------
async def test_a_captured_v1_request_replayed_with_a_new_delivery_id_is_refused_on_every_replica(
    start_gateway: StartGateway, store: WebhookStore, triage: Recorder
) -> None:
    async with two_replicas(start_gateway) as (on_a, on_b):
        body = b'{"pay": 100}'
        captured = signed(body, delivery="evt-real", v1=True)
        assert (await post(on_a, body, captured)).status_code == 202
        for client, new_id in ((on_a, "evt-forged-1"), (on_b, "evt-forged-2")):
            r = await post(client, body, captured | {"X-Mesh-Delivery": new_id})
            assert r.status_code == 409, r.text
            error = r.json()["error"]
            assert error["code"] == "REPLAYED" and "replay" in error["message"]
            assert error["details"] == {"webhook": "github", "delivery_id": new_id}
        assert (await triage.next()).conversation_id == "evt-real"
        await assert_next_is_a_fresh_delivery(on_b, triage)


async def test_a_v2_signature_covers_the_delivery_id_so_a_replay_with_a_new_id_is_401(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    body = b'{"pay": 100}'
    captured = signed(body, delivery="evt-real")
    assert (await post(http, body, captured)).status_code == 202
    r = await post(http, body, captured | {"X-Mesh-Delivery": "evt-forged"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    assert "signature does not match" in r.json()["error"]["message"]
    assert (await triage.next()).conversation_id == "evt-real"
    await assert_next_is_a_fresh_delivery(http, triage)


@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
async def test_the_same_signed_request_sent_again_with_its_own_id_is_a_duplicate(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder, v1: bool
) -> None:
    body = b'{"n": 5}'
    headers = signed(body, delivery="evt-5", v1=v1)
    first = await post(http, body, headers)
    assert first.status_code == 202
    again = await post(http, body, headers)  # a sender that retries the very same bytes
    assert again.status_code == 200
    task_id = first.json()["task_id"]
    assert again.json() == {"status": "duplicate", "delivery_id": "evt-5", "task_id": task_id}
    assert (await triage.next()).conversation_id == "evt-5"
    await assert_next_is_a_fresh_delivery(http, triage)


async def test_a_delivery_to_an_offline_agent_waits_and_a_replay_of_it_is_still_refused(
    http: httpx.AsyncClient, store: WebhookStore, start_agent: StartAgent, executor: None
) -> None:
    body = b'{"n": 6}'
    headers = signed(body, delivery="evt-6", v1=True)
    first = await post(http, body, headers)  # no agent online yet: stored all the same
    assert first.status_code == 202 and first.json()["status"] == "delivered"
    replay = await post(http, body, headers | {"X-Mesh-Delivery": "evt-forged"})
    assert replay.status_code == 409 and replay.json()["error"]["code"] == "REPLAYED"
    again = await post(http, body, headers)  # the sender resends the same bytes
    assert again.status_code == 200 and again.json()["task_id"] == first.json()["task_id"]

    late = recorder("triage")
    await start_agent(late.agent)
    got = await late.next()
    assert got.conversation_id == "evt-6" and got.data == {"n": 6}
    assert got.message_id == first.json()["message_id"]
    assert late.received.empty()


# De-duplication ------------------------------------------------------------------------------
async def test_the_same_delivery_id_twice_is_delivered_once(
    http: httpx.AsyncClient, store: WebhookStore, triage: Recorder
) -> None:
    body = b'{"n": 1}'
    first = await post(http, body, signed(body, delivery="evt-1"))
    assert first.status_code == 202
    # A retry is signed afresh (new timestamp) but carries the same delivery id.
    again = await post(http, body, signed(body, delivery="evt-1"))
    assert again.status_code == 200
    task_id = first.json()["task_id"]
    assert again.json() == {"status": "duplicate", "delivery_id": "evt-1", "task_id": task_id}
    assert (await triage.next()).conversation_id == "evt-1"
    await assert_next_is_a_fresh_delivery(http, triage)


async def test_de_duplication_holds_across_two_gateway_replicas(
    start_gateway: StartGateway, store: WebhookStore, triage: Recorder
) -> None:
    async with two_replicas(start_gateway) as (on_a, on_b):
        body = b'{"n": 2}'
        first = await post(on_a, body, signed(body, delivery="evt-2"))
        assert first.status_code == 202
        r = await post(on_b, body, signed(body, delivery="evt-2"))
        assert r.status_code == 200 and r.json()["status"] == "duplicate"
        assert r.json()["task_id"] == first.json()["task_id"]
        assert (await triage.next()).conversation_id == "evt-2"
        await assert_next_is_a_fresh_delivery(on_b, triage)


async def test_the_same_delivery_sent_to_two_replicas_at_once_is_one_task(
    start_gateway: StartGateway, store: WebhookStore, triage: Recorder
) -> None:
    async with two_replicas(start_gateway) as (on_a, on_b):
        body = b'{"n": 3}'
        answers = await asyncio.gather(
            post(on_a, body, signed(body, delivery="evt-3")),
            post(on_b, body, signed(body, delivery="evt-3")),
        )
        assert {r.status_code for r in answers} <= {200, 202}, [r.text for r in answers]
        assert answers[0].json()["task_id"] == answers[1].json()["task_id"]
        assert (await triage.next()).conversation_id == "evt-3"
        await assert_next_is_a_fresh_delivery(on_b, triage)


async def test_a_delivery_to_an_offline_agent_is_accepted_and_reaches_it_once_it_is_up(
    http: httpx.AsyncClient, store: WebhookStore, start_agent: StartAgent, executor: None
) -> None:
    body = b'{"n": 4}'
    r = await post(http, body, signed(body, delivery="evt-4"))
    assert r.status_code == 202 and r.json()["status"] == "delivered"

    late = recorder("triage")
    await start_agent(late.agent)
    got = await late.next()
    assert got.conversation_id == "evt-4" and got.data == {"n": 4}
    assert got.message_id == r.json()["message_id"]


# Around the edges ----------------------------------------------------------------------------
async def test_webhooks_need_no_api_key_when_auth_is_on(
    start_gateway: StartGateway, store: WebhookStore, triage: Recorder
) -> None:
    replica: Replica = await start_gateway(config=GatewayConfig(auth=True))
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as client:
        body = b'{"signed": "only"}'
        assert (await post(client, body, signed(body))).status_code == 202
        assert (await triage.next()).data == {"signed": "only"}
        bad = await post(client, body, signed(body, secret="wrong-secret-wrong-secret"))
        assert bad.status_code == 401


async def test_a_body_over_the_gateway_limit_is_413_and_not_delivered(
    start_gateway: StartGateway, store: WebhookStore, triage: Recorder
) -> None:
    replica = await start_gateway(config=GatewayConfig(max_body_bytes=1000))
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as client:
        body = json.dumps({"blob": "x" * 2000}).encode()
        r = await post(client, body, signed(body))
        assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
        await assert_next_is_a_fresh_delivery(client, triage)


def test_the_signature_is_hmac_sha256_over_timestamp_dot_delivery_id_dot_raw_body() -> None:
    from agentmesh.gateway.webhooks import signature

    message = b"1700000000.evt-1." + b'{"a":1}'
    expected = hmac.new(b"k" * 16, message, hashlib.sha256).hexdigest()
    assert signature("k" * 16, "1700000000", "evt-1", b'{"a":1}') == f"v2={expected}"


def test_the_legacy_signature_is_hmac_sha256_over_timestamp_dot_raw_body() -> None:
    from agentmesh.gateway.webhooks import legacy_signature

    expected = hmac.new(b"k" * 16, b"1700000000." + b'{"a":1}', hashlib.sha256).hexdigest()
    assert legacy_signature("k" * 16, "1700000000", b'{"a":1}') == f"sha256={expected}"
