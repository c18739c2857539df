"""The platform-independent pipeline, end to end through the Slack module (the Feishu one has its
own end-to-end tests in test_feishu_mesh.py): signed events into real gateway replicas, a real
agent and executor answering, replies posted to a fake Slack (a real HTTP server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import api

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.gateway.channels import replies
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.codec import decode
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.task import TaskEvent, TaskStatus
from tests.channels.conftest import gateway_process, sigkill
from tests.channels.fake_slack import (
    BOT_USER_ID,
    SIGNING_SECRET,
    TOKEN,
    FakeSlack,
    app_mention,
    event_callback,
    message,
    signed,
)
from tests.conftest import StartAgent, StartExecutor
from tests.gateway.conftest import Replica, StartGateway

EVENTS = "/channels/slack/team/events"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(users={}, outside={"C0OUTSIDE"}).start()
    yield fake
    await fake.stop()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replies, "BACKOFF", 0.05)


def channel(slack: FakeSlack, **kw: Any) -> ChannelConfig:
    fields: dict[str, Any] = {
        "name": "team",
        "kind": "slack",
        "bot_token": TOKEN,
        "signing_secret": SIGNING_SECRET,
        "base_url": slack.base_url,
        "agent": "helper",
        **kw,
    }
    return ChannelConfig(**fields)


async def post(replica: Replica, payload: dict[str, Any], **kw: Any) -> httpx.Response:
    body, headers = signed(payload, **kw)
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        return await http.post(EVENTS, content=body, headers=headers)


async def test_a_mention_is_answered_in_its_thread_once_through_either_replica(
    start_gateway: StartGateway, slack: FakeSlack, helper: list[Message], mesh: MeshClient
) -> None:
    config = GatewayConfig(channels=(channel(slack),))
    one, two = await start_gateway(config=config), await start_gateway(config=config)
    event = event_callback(app_mention("<@U0MESHBOT> hello there"))
    assert (await post(one, event)).status_code == 200
    # Slack retries what it thinks was not answered: the same event id, on another replica.
    assert (await post(two, event, retry_num=1)).status_code == 200
    (posted,) = await slack.wait_posted(1)
    assert posted["text"] == "helper: @U0MESHBOT hello there", posted  # users.info knows none
    assert posted["channel"] == "C0GENERAL"
    assert posted["thread_ts"] == event["event"]["ts"]
    assert len(helper) == 1  # one task for both deliveries
    got = helper[0]
    assert got.conversation_id == f"slack:team:C0GENERAL:{event['event']['ts']}"
    assert got.metadata["channel"]["chat_id"] == "C0GENERAL"
    assert got.metadata["channel"]["sender_id"] == "U0ALICE"
    (task,) = await mesh.tasks.list(agent_id="helper")
    settled = await mesh.tasks.wait(task.task_id, timeout=10)
    assert settled.status is TaskStatus.COMPLETED


async def test_a_gateway_sigkilled_after_its_200_loses_nothing(
    tmp_path: Path,
    slack: FakeSlack,
    task_env: dict[str, str],
    mesh: MeshClient,
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
) -> None:
    config = channel(slack).model_dump(mode="json", exclude_none=True)
    async with gateway_process(tmp_path, config, task_env, mesh) as (gateway, replica):
        event = event_callback(app_mention("<@U0MESHBOT> survive this"))
        assert (await post(replica, event)).status_code == 200
        await sigkill(gateway)
    assert slack.posted == []  # no agent was running: nothing could have been answered yet
    # Another replica, the agent and an executor come: the task runs, the reply is posted.
    await start_gateway(config=GatewayConfig(channels=(channel(slack),)))
    agent = Agent("helper")
    agent.handler(lambda msg, ctx: f"still here: {msg.text}")
    await start_agent(agent)
    await start_executor()
    (posted,) = await slack.wait_posted(1, timeout=40)
    assert posted["text"] == "still here: @U0MESHBOT survive this", posted
    assert posted["thread_ts"] == event["event"]["ts"]


async def test_a_bad_signature_is_a_401_and_a_channel_message_without_a_mention_is_left(
    start_gateway: StartGateway, slack: FakeSlack, helper: list[Message], mesh: MeshClient
) -> None:
    gateway = await start_gateway(config=GatewayConfig(channels=(channel(slack),)))
    forged = await post(gateway, event_callback(message("hi")), secret="not-the-secret")
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "UNAUTHORIZED"
    assert (await post(gateway, event_callback(message("just chatting")))).status_code == 200
    direct = event_callback(message("in private", channel="D0ALICE", channel_type="im"))
    assert (await post(gateway, direct)).status_code == 200
    (posted,) = await slack.wait_posted(1)
    assert posted["text"] == "helper: in private" and posted["channel"] == "D0ALICE"
    assert [m.text for m in helper] == ["in private"]  # the others never reached the agent
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        missing = await http.post("/channels/slack/nobody/events", content=b"{}")
    assert missing.status_code == 404


async def test_a_failing_reply_api_is_retried_then_a_refused_reply_is_recorded_on_the_task(
    start_gateway: StartGateway, slack: FakeSlack, helper: list[Message], mesh: MeshClient
) -> None:
    # The bot's id configured: the failures below hit the reply, not the lookup of the bot.
    config = channel(slack, bot_user_id=BOT_USER_ID)
    gateway = await start_gateway(config=GatewayConfig(channels=(config,)))
    slack.fail_next(2)  # two 5xx, then it works
    assert (await post(gateway, event_callback(app_mention("<@U0MESHBOT> one")))).status_code == 200
    (posted,) = await slack.wait_posted(1)
    assert posted["text"].startswith("helper: ")
    (task,) = await mesh.tasks.list(agent_id="helper")
    record = await _reply_recorded(mesh, task.task_id)
    assert record["outcome"] == "posted"
    # A chat the bot is not in: Slack will never take it; recorded, not dropped.
    outside = event_callback(app_mention("<@U0MESHBOT> two", channel="C0OUTSIDE"))
    assert (await post(gateway, outside)).status_code == 200
    tasks = await mesh.tasks.list(agent_id="helper")
    newest = max(tasks, key=lambda t: t.created_at)
    refused = await _reply_recorded(mesh, newest.task_id)
    assert refused["outcome"] == "failed" and "not_in_channel" in refused["detail"]


async def test_a_question_is_posted_and_the_next_message_in_the_thread_answers_it(
    start_gateway: StartGateway, slack: FakeSlack, weather: list[Message], mesh: MeshClient
) -> None:
    gateway = await start_gateway(config=GatewayConfig(channels=(channel(slack, agent="weather"),)))
    first = event_callback(app_mention("<@U0MESHBOT> weather?"))
    assert (await post(gateway, first)).status_code == 200
    (question,) = await slack.wait_posted(1)
    assert question["text"] == "Which city?"
    # Slack delivers the first event again (its answer looked late): not an answer to the question.
    assert (await post(gateway, first, retry_num=1)).status_code == 200
    thread = first["event"]["ts"]
    answer = event_callback(app_mention("<@U0MESHBOT> Oslo", thread_ts=thread))
    assert (await post(gateway, answer)).status_code == 200
    _, reply = await slack.wait_posted(2)
    assert reply["text"] == "sunny in Oslo (2 turns)" and reply["thread_ts"] == thread
    (task,) = await mesh.tasks.list(agent_id="weather")  # one task, two turns
    done = await mesh.tasks.wait(task.task_id, timeout=10)
    assert done.status is TaskStatus.COMPLETED and len(done.history) == 2
    assert [m.text for m in weather] == ["@U0MESHBOT weather?", "@U0MESHBOT Oslo"]


async def _reply_recorded(mesh: MeshClient, task_id: str) -> dict[str, Any]:
    """The task's `channel_reply`, once its event says the delivery recorded it (that event
    comes after the task's final one, where the store's feeds end: read the log itself)."""
    store = mesh.tasks.store
    sub = await store.js.subscribe(
        store.subjects.task_events(task_id),
        stream=store.names["task_events"],
        ordered_consumer=True,
        config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
    )
    try:
        async with asyncio.timeout(20):
            while True:
                event = decode((await sub.next_msg(timeout=None)).data, TaskEvent)
                if (event.note or "").startswith("reply to slack/team"):
                    break
    finally:
        await sub.unsubscribe()
    record = await mesh.tasks.get(task_id)  # written before that event
    return dict(record.spec.metadata["channel_reply"])
