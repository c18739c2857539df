"""The executor: takes queued tasks and runs each as an ordinary mesh call to its agent.

N executors share the queue's durable consumers (one per priority). Each takes a task when it
has a free slot, `high` before `normal` before `low`, and holds its lease (the consumer's ack
wait) by renewing it while the call runs; an executor that dies stops renewing and another one
takes the task over. The agent sees a plain call (PROTOCOL §4) with `Mesh-Task-*` headers.

Outcomes: the agent's reply completes the task. `UNAVAILABLE` and `TIMEOUT` (the instance died or
went silent) are retried with backoff while attempts remain, any other error only if the task
asked for it (`retry_on_error`); then the task fails with that error. A call nobody took (no
instance online, or a type with no agent) leaves the task `pending` and costs no attempt: it is
looked at again shortly, so it runs when an instance comes online.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import trace

from agentmesh.broker.lifecycle import MeshService
from agentmesh.broker.registry import Registry
from agentmesh.broker.tasks import TaskStore, consumer_name
from agentmesh.broker.types import H_TASK_ATTEMPT, H_TASK_ID, H_TRACE_ID, Kind
from agentmesh.schemas.codec import decode, encode
from agentmesh.schemas.envelope import Chunk, Message, merge_text
from agentmesh.schemas.errors import (
    Cancelled,
    ErrorCode,
    ErrorInfo,
    MeshError,
    MeshTimeout,
    NoResponders,
    Unavailable,
)
from agentmesh.schemas.service import Load, ServiceKind
from agentmesh.schemas.task import (
    Attempt,
    Priority,
    TaskEvent,
    TaskEventKind,
    TaskRecord,
    TaskStatus,
    reply_status,
)
from agentmesh.workers.executor.limits import AgentLimits

logger = logging.getLogger(__name__)

IDLE_POLL = 1.0  # seconds between looks at the queue when no nudge comes (delayed tasks)
OFFLINE_RECHECK = 0.5  # seconds before a task nobody could take is looked at again, doubling
OFFLINE_RECHECK_MAX = 4.0  # ... up to this, so a long-offline agent's backlog costs little
MAX_DELAY = 60.0  # a task due later is redelivered at most this far apart
MAX_ATTEMPT_SECONDS = 86400.0  # a call with no deadline still ends some day
RETRIABLE = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT})
_NO_WAIT = json.dumps({"batch": 1, "no_wait": True}).encode()


@dataclass
class _Running:
    task_id: str
    call: asyncio.Task[Any] | None = None
    cancel_requested: bool = False
    instance_id: str | None = None
    acked: asyncio.Event = field(default_factory=asyncio.Event)


class Executor(MeshService):
    """An executor instance (`agentmesh worker executor`).

    Args:
        name: its service name in the registry.
        max_running: tasks this instance runs at once.
        agent_limits: at most this many tasks of an agent id run at once, across every
            executor of the mesh (each executor must be given the same limits); others wait,
            pending, in their priority order.
    """

    kind = ServiceKind.EXECUTOR

    def __init__(
        self,
        name: str = "executor",
        *,
        max_running: int = 100,
        agent_limits: dict[str, int] | None = None,
    ) -> None:
        super().__init__(name)
        self.max_running = max_running
        self.limits = AgentLimits(agent_limits)
        self.store: TaskStore | None = None
        self._running: dict[str, _Running] = {}
        self._slots = asyncio.Semaphore(max_running)
        self._nudged = asyncio.Event()
        self._subs: list[Any] = []
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._registry: Registry | None = None
        self._pulls: Any = None  # the subscription pulled tasks arrive on
        self.completed = 0  # attempts this instance finished (any outcome)

    def load(self) -> Load:
        return Load(in_flight=len(self._running), served=self.completed)

    def detail(self) -> dict[str, Any]:
        return {"max_running": self.max_running, "agent_limits": self.limits.limits}

    # Lifecycle -------------------------------------------------------------------------------
    async def on_start(self) -> None:
        bus = self.bus
        self.store = TaskStore(bus.nc, bus.settings)
        await self.store.ensure()
        self._registry = Registry(self.redis, bus.subjects, timeout=bus.settings.heartbeat_timeout)
        subjects = bus.subjects
        self._pulls = await bus.nc.subscribe(bus.nc.new_inbox())
        self._subs.append(self._pulls)
        self._subs.append(await bus.nc.subscribe(subjects.tasks_nudge(), cb=self._on_nudge))
        self._subs.append(await bus.nc.subscribe(subjects.task_cancel(), cb=self._on_cancel))
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch())

    async def on_stop(self) -> None:
        # Python 3.11's wait_for (inside nats' next_msg) can swallow a cancel that meets a
        # message, and the loop would go on: cancel again until it has ended.
        while self._loop_task is not None and not self._loop_task.done():
            self._loop_task.cancel()
            await asyncio.wait({self._loop_task}, timeout=1.0)
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if self._tasks:  # the attempts in flight finish (bounded), then are left to others
            _, pending = await asyncio.wait(self._tasks, timeout=10.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)

    async def _on_nudge(self, msg: Msg) -> None:
        self._nudged.set()

    async def _on_cancel(self, msg: Msg) -> None:
        task_id = msg.subject.rpartition(".")[2]
        running = self._running.get(task_id)
        if running is not None:
            running.cancel_requested = True
            if running.call is not None:
                running.call.cancel()

    # Taking tasks ----------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            self._nudged.clear()
            try:
                msg = await self._next()
            except Exception:  # noqa: BLE001 - JetStream away: keep the loop, try again
                logger.warning("cannot read the task queue; retrying", exc_info=True)
                msg = None
            if msg is None:
                self._slots.release()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_POLL):
                        await self._nudged.wait()
                continue
            task = asyncio.get_running_loop().create_task(self._take(msg))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, Unavailable):  # JetStream away: the task is redelivered later
            logger.warning("a task was left for later: %s", exc)
        else:
            logger.error("a task attempt failed in the executor", exc_info=exc)

    async def _next(self) -> Msg | None:
        """The next queued task, highest priority first; None if every queue is empty now.

        One pull request at a time (`no_wait`: answered at once, a task or "404 no messages"),
        answered on this executor's own inbox: a pulled message keeps its stream subject, so
        the bus's muxed request inbox cannot match it.
        """
        assert self.store is not None and self._pulls is not None
        stream = self.store.names["task_queue"]
        for priority in Priority:
            api = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer_name(priority)}"
            await self.bus.nc.publish(api, _NO_WAIT, reply=self._pulls.subject)
            while True:
                try:
                    msg = await self._pulls.next_msg(timeout=5.0)
                except nats.errors.TimeoutError:
                    return None  # JetStream did not answer: look again at the next round
                status = msg.headers.get("Status") if msg.headers else None
                if status is None:
                    return msg
                if status in ("404", "408"):  # no messages now (or a pull that expired)
                    break
                if status == "503":  # JetStream not ready (just restarted): next round
                    return None
                logger.warning("pulling tasks: %s %s", status, msg.headers.get("Description"))
                break
        return None

    async def _take(self, msg: Msg) -> None:
        assert self.store is not None
        task_id = msg.data.decode(errors="replace")
        found = await self.store.load(task_id)
        if found is None:
            await msg.ack()  # a queue entry whose record is gone (expired): nothing to run
            return
        record = found[0]
        now = time.time()
        if record.status.settled:  # final, or waiting for its caller's input
            await msg.ack()
            return
        if record.cancel_requested:
            await self._finish(record, TaskStatus.CANCELED, None, None)
            await msg.ack()
            return
        spec = record.spec
        if spec.deadline is not None and now >= spec.deadline:
            error = ErrorInfo(
                code=ErrorCode.TIMEOUT, message="the task's deadline passed before it finished"
            )
            await self._finish(record, TaskStatus.FAILED, None, error)
            await msg.ack()
            return
        due = max(spec.not_before or 0.0, record.next_attempt_at or 0.0)
        if due > now:
            await msg.nak(delay=min(due - now, MAX_DELAY))
            return
        agent_id = spec.agent_id or record.asked_by or await self._pick(spec.agent_type or "")
        if agent_id is None:
            await msg.nak(delay=_recheck(msg))  # no agent of that type online: wait
            return
        if record.turn_attempts >= spec.max_attempts:
            error = record.error or ErrorInfo(
                code=ErrorCode.UNAVAILABLE, message="every attempt was lost with its executor"
            )
            await self._finish(record, TaskStatus.FAILED, None, error)
            await msg.ack()
            return
        if self.limits.limited(agent_id):
            lease, subjects = self.bus.settings.task_lease, self.bus.subjects
            if not await self.limits.admit(self.redis, subjects, agent_id, task_id, lease):
                await msg.nak(delay=OFFLINE_RECHECK)  # the agent has its limit running: wait
                return
        try:
            await self._attempt(msg, record, agent_id)
        finally:
            await self.limits.release(self.redis, self.bus.subjects, task_id)

    async def _pick(self, agent_type: str) -> str | None:
        """An online agent of `agent_type`, the least loaded (ties at random)."""
        assert self._registry is not None
        records = await self._registry.serving("agent_types", agent_type)
        if not records:
            return None
        random.shuffle(records)
        return min(records, key=lambda r: r.load.in_flight).service_id

    # Running one attempt ---------------------------------------------------------------------
    async def _attempt(self, msg: Msg, record: TaskRecord, agent_id: str) -> None:
        assert self.store is not None
        task_id = record.task_id
        number = record.attempt + 1
        running = _Running(task_id)
        self._running[task_id] = running
        chunks: asyncio.Queue[Chunk | None] = asyncio.Queue()
        lease = asyncio.get_running_loop().create_task(self._renew(msg, task_id))
        try:
            running.call = asyncio.get_running_loop().create_task(
                self._call(record, agent_id, number, running, chunks)
            )
            # Wait until an instance took it (ack) or the call ended without one.
            acked = asyncio.ensure_future(running.acked.wait())
            await asyncio.wait({acked, running.call}, return_when=asyncio.FIRST_COMPLETED)
            acked.cancel()
            if not running.acked.is_set():
                outcome = await _outcome(running.call)
                if isinstance(outcome, NoResponders):
                    await msg.nak(delay=_recheck(msg))  # nobody serves it now: still pending
                    return
                if isinstance(outcome, Cancelled) and running.cancel_requested:
                    await self._finish(record, TaskStatus.CANCELED, None, None)
                    await msg.ack()
                    return
            started = await self._started(record, number, agent_id, running.instance_id)
            if started is None:  # cancelled or finished meanwhile (another executor, a cancel)
                running.call.cancel()
                await msg.ack()
                return
            await self._relay(task_id, number, chunks)
            outcome = await _outcome(running.call)
            await self._settle(msg, started, number, outcome, running)
        except asyncio.CancelledError:
            # This executor is stopping: hand the task back now rather than at the lease's end.
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.nak()
            raise
        finally:
            lease.cancel()
            if running.call is not None and not running.call.done():
                running.call.cancel()  # an error of ours mid-call: no orphaned call
            self._running.pop(task_id, None)
            self.completed += 1

    async def _renew(self, msg: Msg, task_id: str) -> None:
        """Hold the task's lease: tell JetStream it is in progress every third of the lease
        (and keep its place under its agent's limit)."""
        lease = self.bus.settings.task_lease
        while True:
            await asyncio.sleep(lease / 3)
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.in_progress()
            await self.limits.renew(self.redis, self.bus.subjects, task_id, lease)

    async def _call(
        self,
        record: TaskRecord,
        agent_id: str,
        number: int,
        running: _Running,
        chunks: asyncio.Queue[Chunk | None],
    ) -> Message | None:
        """The mesh call of one attempt; its chunks go to `chunks` (None ends them)."""
        spec = record.spec
        message = spec.input.model_copy()
        message.to_agent_id = agent_id
        headers = {H_TASK_ID: record.task_id, H_TASK_ATTEMPT: str(number)}
        token = None
        if spec.trace_id is not None:
            headers[H_TRACE_ID] = spec.trace_id
            # The trace id is the task's trace's: with tracing off this header carries it; with
            # it on, the bus's own span (which replaces the header) is a child in that trace.
            parent = uuid.uuid4().hex[:16]
            headers["traceparent"] = f"00-{spec.trace_id}-{parent}-01"
            remote = trace.SpanContext(
                trace_id=int(spec.trace_id, 16),
                span_id=int(parent, 16),
                is_remote=True,
                trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            )
            token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(remote)))
        timeout = MAX_ATTEMPT_SECONDS
        if spec.deadline is not None:
            timeout = max(0.001, min(timeout, spec.deadline - time.time()))

        def on_ack(instance_id: str) -> None:
            running.instance_id = instance_id
            running.acked.set()

        parts: list[Any] = []
        metadata: dict[str, Any] = {}  # the chunks' metadata, merged (a streamed reply's own)
        final: Message | None = None
        try:
            async for frame in self.bus.stream(
                self.bus.subjects.agent(agent_id),
                encode(message),
                headers=headers,
                timeout=timeout,
                on_ack=on_ack,
            ):
                running.acked.set()  # a frame without an ack first (a plain NATS responder)
                if frame.kind is Kind.CHUNK:
                    chunk = decode(frame.data, Chunk)
                    parts.extend(chunk.content)
                    metadata.update(chunk.metadata)
                    chunks.put_nowait(chunk)
                elif frame.data:
                    final = decode(frame.data, Message)
        finally:
            chunks.put_nowait(None)
            if token is not None:
                otel_context.detach(token)
        if final is None:
            final = Message(content=merge_text(parts), metadata=metadata, from_agent_id=agent_id)
        return final

    async def _relay(self, task_id: str, number: int, chunks: asyncio.Queue[Chunk | None]) -> None:
        """Append the call's chunks to the task's events as they come, until the call ends."""
        assert self.store is not None
        while (chunk := await chunks.get()) is not None:
            await self.store.append_event(
                TaskEvent(task_id=task_id, kind=TaskEventKind.CHUNK, attempt=number, chunk=chunk)
            )

    async def _started(
        self, record: TaskRecord, number: int, agent_id: str, instance_id: str | None
    ) -> TaskRecord | None:
        """Record attempt `number` as running; None if the task is no longer ours to run."""
        assert self.store is not None
        now = time.time()

        def change(r: TaskRecord) -> TaskRecord | None:
            if r.status.settled or r.attempt != number - 1 or r.cancel_requested:
                raise _NotOurs
            for earlier in r.attempts:
                if earlier.ended_at is None:  # its executor died with it
                    earlier.ended_at = now
                    earlier.error = ErrorInfo(
                        code=ErrorCode.UNAVAILABLE, message="the executor running it stopped"
                    )
            r.attempts.append(
                Attempt(
                    number=number,
                    executor_id=self.instance_id or "",
                    instance_id=instance_id,
                    agent_id=agent_id,
                    started_at=now,
                )
            )
            r.status = TaskStatus.RUNNING
            r.started_at = r.started_at or now
            r.next_attempt_at = None
            return r

        try:
            stored = await self.store.update(record.task_id, change)
        except _NotOurs:
            return None
        if stored is None:
            return None
        await self.store.append_event(
            TaskEvent(
                task_id=record.task_id,
                kind=TaskEventKind.STATUS,
                status=TaskStatus.RUNNING,
                attempt=number,
                data={"agent_id": agent_id, "instance_id": instance_id},
            )
        )
        return stored

    async def _settle(
        self,
        msg: Msg,
        record: TaskRecord,
        number: int,
        outcome: Message | BaseException | None,
        running: _Running,
    ) -> None:
        """Record the attempt's outcome (once: a late or superseded one is dropped)."""
        spec = record.spec
        if isinstance(outcome, Message):  # completed; or the agent asks for input, or refuses
            status = reply_status(outcome)
            if status is TaskStatus.INPUT_REQUIRED and running.cancel_requested:
                status, outcome = TaskStatus.CANCELED, None  # a cancel asked meanwhile wins
            await self._finish(record, status, outcome, None, number=number)
            await msg.ack()
            return
        if running.cancel_requested:
            await self._finish(record, TaskStatus.CANCELED, None, None, number=number)
            await msg.ack()
            return
        error = _error_of(outcome)
        retriable = error.code in RETRIABLE or spec.retry_on_error
        deadline_left = spec.deadline is None or spec.deadline > time.time()
        tried = number - record.turn_start  # this turn's attempts (each turn has max_attempts)
        if retriable and tried < spec.max_attempts and deadline_left:
            backoff = min(self.bus.settings.task_retry_backoff * 2 ** (tried - 1), MAX_DELAY)
            if await self._retry_later(record, number, error, backoff):
                await msg.nak(delay=backoff)
            else:
                await msg.ack()
            return
        await self._finish(record, TaskStatus.FAILED, None, error, number=number)
        await msg.ack()

    async def _retry_later(
        self, record: TaskRecord, number: int, error: ErrorInfo, backoff: float
    ) -> bool:
        assert self.store is not None
        now = time.time()

        def change(r: TaskRecord) -> TaskRecord | None:
            if r.status is not TaskStatus.RUNNING or r.attempt != number:
                raise _NotOurs
            r.attempts[-1].ended_at = now
            r.attempts[-1].error = error
            r.status = TaskStatus.PENDING
            r.error = error
            r.next_attempt_at = now + backoff
            return r

        try:
            if await self.store.update(record.task_id, change) is None:
                return False
        except _NotOurs:
            return False
        await self.store.append_event(
            TaskEvent(
                task_id=record.task_id,
                kind=TaskEventKind.STATUS,
                status=TaskStatus.PENDING,
                attempt=number,
                error=error,
                data={"retry_in": backoff},
            )
        )
        return True

    async def _finish(
        self,
        record: TaskRecord,
        status: TaskStatus,
        result: Message | None,
        error: ErrorInfo | None,
        *,
        number: int | None = None,
    ) -> None:
        """Record a final status (or input-required: the turn's end); with `number`, only if that
        attempt is still the running one."""
        assert self.store is not None
        now = time.time()

        def change(r: TaskRecord) -> TaskRecord | None:
            if r.status.settled:
                raise _NotOurs  # recorded once: a late result is dropped
            if number is not None and (r.status is not TaskStatus.RUNNING or r.attempt != number):
                raise _NotOurs
            if r.attempts and r.attempts[-1].ended_at is None:
                r.attempts[-1].ended_at = now
                r.attempts[-1].error = error
            r.status, r.result, r.error = status, result, error
            r.finished_at = now if status.terminal else None
            r.next_attempt_at = None
            return r

        try:
            if await self.store.update(record.task_id, change) is None:
                return
        except _NotOurs:
            logger.info("task %s: a late outcome (%s) was dropped", record.task_id, status.value)
            return
        await self.store.append_event(
            TaskEvent(
                task_id=record.task_id,
                kind=TaskEventKind.STATUS,
                status=status,
                attempt=number,
                error=error,
            )
        )


class _NotOurs(Exception):
    """The record changed under us: someone else settled, cancelled or took the task."""


async def _outcome(call: asyncio.Task[Message | None]) -> Message | BaseException | None:
    try:
        return await call
    except asyncio.CancelledError:
        return Cancelled("the call was cancelled")
    except BaseException as exc:  # noqa: BLE001 - every failure is an outcome to record
        return exc


def _error_of(outcome: object) -> ErrorInfo:
    if isinstance(outcome, MeshError):
        return outcome.to_info()
    if isinstance(outcome, TimeoutError):
        return MeshTimeout(str(outcome) or "the call timed out").to_info()
    if isinstance(outcome, BaseException):
        return Unavailable(f"{type(outcome).__name__}: {outcome}").to_info()
    return Unavailable("the call ended without a reply").to_info()


def _recheck(msg: Msg) -> float:
    """How long a task nobody could take waits before it is looked at again: 0.5 s, doubling
    with each look, at most 4 s."""
    try:
        looks = max(1, msg.metadata.num_delivered or 1)
    except (ValueError, AttributeError):
        looks = 1
    return min(OFFLINE_RECHECK * 2 ** min(looks - 1, 8), OFFLINE_RECHECK_MAX)
