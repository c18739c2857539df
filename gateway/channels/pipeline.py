"""A chat message for the mesh: routed to its agent, stored as durable work, its reply queued.

An `Inbound` (from a platform module, over HTTP or a long connection) becomes a task for the
chat's agent (config.route: per chat, else the channel's default agent or agent type). In a
group chat only a message that mentions the app's bot is taken; in a direct chat every one.
The task's idempotency key is `chan:<kind>:<name>:<event id>`, so a platform's retry, on any
replica, is the same task; its input is a mesh Message in the conversation
`<kind>:<name>:<chat>[:<thread>]` (a runtime agent keeps one session per chat or thread), with
the chat's ids in `metadata.channel`. If the conversation has a task whose agent asked for input
(its question was posted), the message answers that task instead. Each reply job carries its
turn's target: the reply answers the message that started the turn. Only once the task and its
reply job are in JetStream is the platform answered 200.
"""

from __future__ import annotations

import logging
from typing import Any

from agentmesh.gateway.channels.base import Inbound, ReplyTarget
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.gateway.channels.replies import Job, Replies, waiting_key
from agentmesh.gateway.state import GatewayState
from agentmesh.schemas.envelope import Message, TextPart
from agentmesh.schemas.errors import Conflict, NotFound
from agentmesh.schemas.task import TaskSpec

logger = logging.getLogger(__name__)


def conversation_id(config: ChannelConfig, inbound: Inbound) -> str:
    return f"{config.kind}:{config.name}:{inbound.conversation_key}"


def _message(config: ChannelConfig, inbound: Inbound, target: ReplyTarget) -> Message:
    channel = {
        **target.to_dict(),
        "chat_type": inbound.chat_type,
        "sender_id": inbound.sender_id,
        "sender_name": inbound.sender_name,
        "event_id": inbound.event_id,
        **inbound.metadata,
    }
    return Message(
        # The platform's message id: a retried event's answer to a question is the same one.
        message_id=f"{config.kind}:{config.name}:{inbound.message_id}",
        conversation_id=conversation_id(config, inbound),
        content=[TextPart(text=inbound.text)],
        metadata={"channel": channel},
    )


async def accept(
    state: GatewayState, replies: Replies, config: ChannelConfig, inbound: Inbound
) -> dict[str, Any]:
    """Take `inbound` (or leave it, saying why); the platform's 200 body.

    Raises:
        Unavailable: JetStream cannot be reached (nothing was accepted: the platform retries).
    """
    if inbound.chat_type == "group" and not inbound.mentioned:
        return {}  # not for the bot
    agent_id, agent_type = config.route(inbound.chat_id)
    if agent_id is None and agent_type is None:
        logger.info(
            "channel %s/%s: no agent for chat %s", config.kind, config.name, inbound.chat_id
        )
        return {}
    target = ReplyTarget(
        kind=config.kind,
        name=config.name,
        chat_id=inbound.chat_id,
        message_id=inbound.message_id,
        thread_id=inbound.thread_id,
    )
    message = _message(config, inbound, target)
    job = await _answer(state, message, target)
    if job is None:
        message.to_agent_id = agent_id
        spec = TaskSpec(
            agent_id=agent_id,
            agent_type=agent_type,
            input=message,
            idempotency_key=f"chan:{config.kind}:{config.name}:{inbound.event_id}",
            metadata={"channel": target.to_dict()},
        )
        ref = await state.tasks.submit(spec)
        job = Job(task_id=ref.task_id, turn=0, target=target.to_dict())
    await replies.queue(job)
    return {}


async def _answer(state: GatewayState, message: Message, target: ReplyTarget) -> Job | None:
    """If the conversation's agent asked a question, `message` answers it: that task's next
    turn (None: no question waits, or it can no longer be answered)."""
    key = waiting_key(state.settings.prefix, message.conversation_id or "")
    task_id = (await state.redis.get(key) or b"").decode()
    if not task_id:
        return None
    record = await state.tasks.get(task_id)
    if record is None:
        return None
    message.to_agent_id = record.spec.agent_id or record.asked_by
    try:
        resumed = await state.tasks.resume(task_id, message)
    except (Conflict, NotFound):
        return None  # settled otherwise meanwhile (canceled, ...): a new task
    turn = resumed.turn_of(message.message_id)  # the new turn; or, for a retried event, its own
    if turn is None:
        return None
    # The turn's reply answers this message (in its thread).
    return Job(task_id=task_id, turn=turn, target=target.to_dict())
