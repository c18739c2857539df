"""Agents' answers back to the chat: one durable reply job per turn of a channel's task, taken by
whichever gateway replica is free, posted once the task has settled.

    agentmesh_<p>_channel_replies   stream, work queue: `<p>.channels.replies`, one job per turn
                                    (`{"task_id", "turn", "target"}`, `Nats-Msg-Id:
                                    <task_id>.<turn>`)
    channel-replies                 its durable consumer, shared by every replica

A replica holds a job (in progress) up to `HOLD_WAIT` while its task runs, and hands it back
to be looked at again if the task is slower, so slow tasks never keep others' replies waiting.
Once the turn has settled its answer is posted with the channel's `reply`: the result
(completed; or the question of a task that asks for input, after which the chat's next message
answers it), an apology naming the error code (failed), nothing (canceled). A post the platform
may take later (`ReplyFailed(retriable=True)`) is tried again with backoff, `MAX_POSTS` times;
then, or at once for a post it will never take, the failure is recorded on the task
(`metadata.channel_reply` and a progress event) — never silently dropped. A replica claims a
turn's post in Redis before posting (`posting`, then the posted message's id), so a job
delivered twice posts once; delivery is at least once only if Redis lost the mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api
from pydantic import BaseModel, ConfigDict, Field

from agentmesh.broker.consumer import bind, consume
from agentmesh.gateway.channels.base import ReplyFailed, ReplyTarget
from agentmesh.gateway.channels.registry import ChannelSet
from agentmesh.gateway.state import GatewayState
from agentmesh.schemas.codec import decode, encode
from agentmesh.schemas.envelope import Message, TextPart
from agentmesh.schemas.errors import InvalidMessage, MeshError, NotFound
from agentmesh.schemas.task import TaskEvent, TaskEventKind, TaskRecord, TaskStatus

logger = logging.getLogger(__name__)

CONSUMER = "channel-replies"
LEASE = 30.0  # seconds a replica holds a job without a sign of life (renewed while it waits)
MAX_POSTS = 8  # tries of one reply the platform may take later
BACKOFF = 1.0  # seconds before the second try, doubling, at most MAX_BACKOFF
MAX_BACKOFF = 60.0
CONCURRENCY = 64  # jobs a replica works on at once
HOLD_WAIT = 20.0  # seconds a job waits for its task in a slot; then it is looked at again later
RECHECK = 2.0  # seconds before a job whose task still runs (or is being posted) is looked at
CLAIM_TTL = 60  # seconds a replica's claim on posting one turn lasts (it crashed: another posts)
POSTING = b"posting"  # the claim's value; the posted message's id replaces it
RETRY = 1.0  # seconds before the consumer is bound again after JetStream went away
POSTED_TTL = 24 * 3600  # seconds a posted turn is remembered (a job redelivered later)
WAITING_TTL = 7 * 24 * 3600  # seconds a question waits for the chat's answer


class Job(BaseModel):
    """A reply to post: turn `turn` of task `task_id` (0: its first; n: after n answers)."""

    model_config = ConfigDict(frozen=True)

    task_id: str
    turn: int = Field(ge=0)
    target: dict[str, Any]  # ReplyTarget.to_dict(): the message that started the turn


def stream_name(prefix: str) -> str:
    return f"agentmesh_{prefix}_channel_replies"


def waiting_key(prefix: str, conversation_id: str) -> str:
    """Redis: the task whose question waits for this conversation's next message."""
    return f"{prefix}:channels:waiting:{conversation_id}"


def _posted_key(prefix: str, job: Job) -> str:
    return f"{prefix}:channels:posted:{job.task_id}:{job.turn}"


class Replies:
    """The replica's part of reply delivery: `queue` jobs; `run` takes and posts them."""

    def __init__(self, state: GatewayState, channels: ChannelSet) -> None:
        self.state = state
        self.channels = channels
        self.prefix = state.settings.prefix
        self.stream = stream_name(self.prefix)
        self.subject = state.bus.subjects.channel_replies()
        self._ready = False

    async def ensure(self) -> None:
        """The stream and its consumer (idempotent). Raises Unavailable."""
        if self._ready:
            return
        durable = self.state.durable
        with durable.calling("creating the channel reply queue"):
            config = api.StreamConfig(
                name=self.stream,
                subjects=[self.subject],
                retention=api.RetentionPolicy.WORK_QUEUE,
                storage=api.StorageType.FILE,
                num_replicas=self.state.settings.jetstream_replicas,
                duplicate_window=120.0,
            )
            try:
                await durable.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await durable.js.update_stream(config)
        await bind(
            durable,
            self.stream,
            api.ConsumerConfig(
                durable_name=CONSUMER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=LEASE,
                max_deliver=-1,
                max_ack_pending=-1,
                deliver_policy=api.DeliverPolicy.ALL,
            ),
        )
        self._ready = True

    async def queue(self, job: Job) -> None:
        """Store a reply job (once per turn: a repeat within two minutes is dropped by
        JetStream, a later one by the posted mark). Raises Unavailable."""
        await self.ensure()
        durable = self.state.durable
        with durable.calling("queueing a channel reply"):
            await durable.js.publish(
                self.subject,
                encode(job),
                stream=self.stream,
                headers={"Nats-Msg-Id": f"{job.task_id}.{job.turn}"},
            )

    async def run(self) -> None:
        """Take and post jobs until cancelled; bind again when JetStream comes back."""
        while True:
            try:
                await self.ensure()
                await consume(
                    self.state.durable,
                    self.stream,
                    CONSUMER,
                    self._deliver,
                    concurrency=CONCURRENCY,
                    what="channel replies",
                    retry=RETRY,
                    after_error=LEASE,
                )
            except (MeshError, nats.errors.Error, OSError) as exc:
                logger.warning("channel replies paused: %r", exc)
                self._ready = False
            await asyncio.sleep(RETRY)

    # One job ----------------------------------------------------------------------------------
    async def _deliver(self, msg: Msg) -> None:
        try:
            job = decode(msg.data, Job)
            target = ReplyTarget.from_dict(job.target)
        except (InvalidMessage, KeyError, TypeError):
            logger.warning("channel replies: a job that is not one, dropped: %r", msg.data[:200])
            await msg.ack()
            return
        redis, posted_key = self.state.redis, _posted_key(self.prefix, job)
        mark = await redis.get(posted_key)
        if mark is not None:  # posted; or being posted by another replica: look again later
            await (msg.nak(delay=RECHECK) if mark == POSTING else msg.ack())
            return
        record = await self._settled(msg, job)
        if record is None:  # no such task (expired)
            await msg.ack()
            return
        if record.turn == job.turn and not record.status.settled:
            await msg.nak(delay=RECHECK)  # still running: free the slot, look again shortly
            return
        answer, status = _answer(record, job.turn)
        if answer is None:
            await self._record(record.task_id, target, "not_posted", f"the task was {status}")
            await msg.ack()
            return
        found = self.channels.get(target.kind, target.name)
        if found is None:
            await self._record(
                record.task_id, target, "failed", "the channel is no longer configured"
            )
            await msg.ack()
            return
        if not await redis.set(posted_key, POSTING, nx=True, ex=CLAIM_TTL):
            await msg.nak(delay=RECHECK)  # another replica took this turn's post just now
            return
        try:
            posted = await found[1].reply(target, answer)
        except ReplyFailed as exc:
            await redis.delete(posted_key)
            tries = await self._tried(job)
            if exc.retriable and tries < MAX_POSTS:
                delay = min(max(BACKOFF * 2 ** (tries - 1), exc.retry_after or 0), MAX_BACKOFF)
                logger.info("channel reply for %s: %s; again in %.1f s", job.task_id, exc, delay)
                await msg.nak(delay=delay)
                return
            await self._record(record.task_id, target, "failed", str(exc), tries=tries)
            await msg.ack()
            return
        except BaseException:
            await redis.delete(posted_key)
            raise
        await redis.set(posted_key, posted, ex=POSTED_TTL)
        await self._after_post(record, job, status)
        await self._record(record.task_id, target, "posted", posted, turn=job.turn)
        await msg.ack()

    async def _tried(self, job: Job) -> int:
        """Count one more failed post of this turn (across replicas and deliveries)."""
        key = f"{_posted_key(self.prefix, job)}:tries"
        tries = int(await self.state.redis.incr(key))
        await self.state.redis.expire(key, POSTED_TTL)
        return tries

    async def _settled(self, msg: Msg, job: Job) -> TaskRecord | None:
        """The task once turn `job.turn` has settled, or as it is after `HOLD_WAIT` (a job is
        not held longer: a slow task must not keep replies of others waiting)."""
        tasks = self.state.tasks
        deadline = time.monotonic() + HOLD_WAIT
        while True:
            record = await tasks.get(job.task_id)
            if record is None or record.turn > job.turn or record.status.settled:
                return record
            left = deadline - time.monotonic()
            if left <= 0:
                return record
            try:
                record = await tasks.wait(job.task_id, timeout=min(left, LEASE / 3))
            except NotFound:
                return None
            if record.status.settled:
                return record
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.in_progress()

    async def _after_post(self, record: TaskRecord, job: Job, status: TaskStatus) -> None:
        """Remember a question for the chat's next message; forget an answered one."""
        key = waiting_key(self.prefix, record.spec.input.conversation_id or "")
        if status is TaskStatus.INPUT_REQUIRED:
            if record.turn == job.turn and record.status is TaskStatus.INPUT_REQUIRED:
                await self.state.redis.set(key, record.task_id, ex=WAITING_TTL)
        elif (await self.state.redis.get(key) or b"").decode() == record.task_id:
            await self.state.redis.delete(key)  # answered (a newer question of another stays)

    async def _record(
        self, task_id: str, target: ReplyTarget, outcome: str, detail: str, **extra: Any
    ) -> None:
        """The reply's outcome on the task: its record's `metadata.channel_reply`, and an event."""
        note = {"outcome": outcome, "detail": detail, "at": time.time(), **extra}
        if outcome != "posted":
            logger.warning(
                "channel %s/%s: reply for %s %s: %s",
                target.kind,
                target.name,
                task_id,
                outcome,
                detail,
            )

        def change(record: TaskRecord) -> TaskRecord:
            record.spec.metadata["channel_reply"] = note
            return record

        await self.state.tasks.update(task_id, change)
        await self.state.tasks.append_event(
            TaskEvent(
                task_id=task_id,
                kind=TaskEventKind.PROGRESS,
                note=f"reply to {target.kind}/{target.name}: {outcome}",
                data=note,
            )
        )


def _answer(record: TaskRecord, turn: int) -> tuple[Message | None, TaskStatus]:
    """What to post for `turn` of the task, and the turn's outcome."""
    if record.turn > turn:  # answered since: its question is in the history
        return record.history[2 * turn + 1], TaskStatus.INPUT_REQUIRED
    status = record.status
    if status in (TaskStatus.COMPLETED, TaskStatus.INPUT_REQUIRED, TaskStatus.REJECTED):
        if record.result is not None and record.result.content:
            return record.result, status
        if status is TaskStatus.REJECTED:
            return Message(content=[TextPart(text="Sorry, I cannot help with that.")]), status
        return None, status
    if status is TaskStatus.FAILED:
        error = record.error
        why = f" ({error.code})" if error is not None else ""  # its message stays inside
        return Message(content=[TextPart(text=f"Sorry, I could not answer{why}.")]), status
    return None, status  # canceled
