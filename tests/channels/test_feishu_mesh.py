"""Feishu chats answered by mesh agents, end to end: events built and encrypted as Feishu sends
them, into real gateway replicas (and one gateway process SIGKILLed after its 200), a real agent
and executor, replies taken by a fake Feishu open platform (a real HTTP server); and the long
connection, held by one replica of two."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.gateway.channels import connections, replies
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.envelope import Message
from tests.channels.conftest import gateway_process, sigkill
from tests.channels.fake_feishu import (
    APP_ID,
    APP_SECRET,
    BOT_OPEN_ID,
    ENCRYPT_KEY,
    VERIFICATION_TOKEN,
    FakeFeishu,
    mention,
    message_event,
    url_verification,
    webhook_request,
)
from tests.conftest import StartAgent, StartExecutor
from tests.gateway.conftest import Replica, StartGateway

EVENTS = "/channels/feishu/support/events"


@pytest.fixture
async def fake() -> AsyncIterator[FakeFeishu]:
    platform = await FakeFeishu().start()
    yield platform
    await platform.stop()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replies, "BACKOFF", 0.05)


def channel(fake: FakeFeishu, **kw: Any) -> dict[str, Any]:
    return {
        "name": "support",
        "kind": "feishu",
        "app_id": APP_ID,
        "app_secret": APP_SECRET,
        "verification_token": VERIFICATION_TOKEN,
        "encrypt_key": ENCRYPT_KEY,
        "base_url": fake.base_url,
        "agent": "helper",
        **kw,
    }


def gateway_config(fake: FakeFeishu, **kw: Any) -> GatewayConfig:
    return GatewayConfig(channels=(ChannelConfig(**channel(fake, **kw)),))


async def post(replica: Replica, event: dict[str, Any], **kw: Any) -> httpx.Response:
    body, headers = webhook_request(event, encrypt_key=kw.pop("encrypt_key", ENCRYPT_KEY), **kw)
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        return await http.post(EVENTS, content=body, headers=headers)


async def test_the_url_check_is_answered_plain_and_encrypted_and_a_bad_signature_is_a_401(
    start_gateway: StartGateway, fake: FakeFeishu, helper: list[Message]
) -> None:
    gateway = await start_gateway(config=gateway_config(fake))
    encrypted = await post(gateway, url_verification("c-1"))
    assert encrypted.status_code == 200 and encrypted.json() == {"challenge": "c-1"}
    plain_gateway = await start_gateway(config=gateway_config(fake, encrypt_key=None))
    plain = await post(plain_gateway, url_verification("c-2"), encrypt_key=None)
    assert plain.json() == {"challenge": "c-2"}
    body, headers = webhook_request(message_event("hi"), encrypt_key=ENCRYPT_KEY)
    headers["X-Lark-Signature"] = "0" * 64
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        forged = await http.post(EVENTS, content=body, headers=headers)
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "UNAUTHORIZED"
    wrong = await post(plain_gateway, message_event("hi", token="not-it"), encrypt_key=None)
    assert wrong.status_code == 401
    assert helper == []  # nothing reached the agent


async def test_a_p2p_message_is_answered_once_in_its_chat_through_either_replica(
    start_gateway: StartGateway, fake: FakeFeishu, helper: list[Message], mesh: MeshClient
) -> None:
    one = await start_gateway(config=gateway_config(fake))
    two = await start_gateway(config=gateway_config(fake))
    event = message_event("where is my order?", chat_id="oc_p2p1")
    assert (await post(one, event)).status_code == 200
    assert (await post(two, event)).status_code == 200  # Feishu's retry: the same event id
    (reply,) = await fake.wait_replies(1)
    assert reply.to == event["event"]["message"]["message_id"]
    assert reply.msg_type == "text" and reply.content == {"text": "helper: where is my order?"}
    assert len(helper) == 1
    got = helper[0]
    assert got.conversation_id == "feishu:support:oc_p2p1"
    assert got.metadata["channel"]["sender_id"] == "ou_user0001"
    assert got.metadata["channel"]["message_id"] == reply.to
    (task,) = await mesh.tasks.list(agent_id="helper")
    assert task.spec.idempotency_key == f"chan:feishu:support:{event['header']['event_id']}"


async def test_in_a_group_only_a_message_mentioning_the_bot_is_answered(
    start_gateway: StartGateway, fake: FakeFeishu, helper: list[Message]
) -> None:
    gateway = await start_gateway(config=gateway_config(fake, bot_open_id=BOT_OPEN_ID))
    chatter = message_event(
        "@_user_1 lunch?", chat_type="group", mentions=[mention(1, "Bob", "ou_bob")]
    )
    asked = message_event(
        "@_user_1 status please", chat_type="group", mentions=[mention(1, "MeshBot", BOT_OPEN_ID)]
    )
    assert (await post(gateway, chatter)).status_code == 200
    assert (await post(gateway, asked)).status_code == 200
    (reply,) = await fake.wait_replies(1)
    assert reply.content == {"text": "helper: @MeshBot status please"}
    assert [m.text for m in helper] == ["@MeshBot status please"]


async def test_an_expired_token_is_refreshed_and_a_failing_reply_api_recovers(
    start_gateway: StartGateway, fake: FakeFeishu, helper: list[Message]
) -> None:
    gateway = await start_gateway(config=gateway_config(fake))
    assert (await post(gateway, message_event("one"))).status_code == 200
    await fake.wait_replies(1)
    tokens = fake.token_requests
    fake.expire_tokens()
    fake.fail_next(2, api="reply", status=503)
    assert (await post(gateway, message_event("two"))).status_code == 200
    replies_ = await fake.wait_replies(2)
    assert replies_[1].content == {"text": "helper: two"}
    assert fake.token_requests == tokens + 1  # the refused token was replaced once


async def test_a_gateway_sigkilled_after_its_200_loses_nothing(
    tmp_path: Path,
    fake: FakeFeishu,
    task_env: dict[str, str],
    mesh: MeshClient,
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
) -> None:
    async with gateway_process(tmp_path, channel(fake), task_env, mesh) as (gateway, replica):
        answer = await post(replica, message_event("survive this", chat_id="oc_crash"))
        assert answer.status_code == 200, answer.text
        await sigkill(gateway)
    assert fake.replies == []  # no agent was running: nothing could have been answered yet
    # Another replica, the agent and an executor come: the task runs, the reply is posted.
    await start_gateway(config=gateway_config(fake))
    agent = Agent("helper")
    agent.handler(lambda msg, ctx: f"still here: {msg.text}")
    await start_agent(agent)
    await start_executor()
    (reply,) = await fake.wait_replies(1, timeout=40)
    assert reply.content == {"text": "still here: survive this"}


async def test_one_replica_holds_the_long_connection_and_its_events_are_answered(
    start_gateway: StartGateway, fake: FakeFeishu, helper: list[Message]
) -> None:
    config = gateway_config(fake, mode="long_connection", encrypt_key=None)
    await start_gateway(config=config)
    await start_gateway(config=config)
    await fake.until_ws(1, open_now=1, timeout=40)
    ack = await fake.push_event(message_event("over the socket", chat_id="oc_ws"))
    assert ack.get("code") == 200, ack
    (reply,) = await fake.wait_replies(1)
    assert reply.content == {"text": "helper: over the socket"}
    assert fake.ws_connections == 1  # the other replica did not connect too


async def test_when_the_holder_is_sigkilled_another_replica_takes_the_long_connection(
    tmp_path: Path,
    fake: FakeFeishu,
    task_env: dict[str, str],
    mesh: MeshClient,
    start_gateway: StartGateway,
    helper: list[Message],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This process's replica looks for the claim often; the dead holder's claim still lasts
    # its full HOLD (15 s), as it would in production.
    monkeypatch.setattr(connections, "HOLD", 1.5)
    options = {"mode": "long_connection", "encrypt_key": None}
    async with gateway_process(tmp_path, channel(fake, **options), task_env, mesh) as (holder, _):
        await fake.until_ws(1, open_now=1, timeout=40)  # the process holds it
        await start_gateway(config=gateway_config(fake, **options))
        await sigkill(holder)
    await fake.until_ws(2, open_now=1, timeout=connections.HOLD + 30)
    ack = await fake.push_event(message_event("after the failover", chat_id="oc_ws"))
    assert ack.get("code") == 200, ack
    (reply,) = await fake.wait_replies(1)
    assert reply.content == {"text": "helper: after the failover"}
