"""Durable tasks and traces in JetStream: the store every submitter, executor and watcher uses.

Per mesh prefix `<p>` (created idempotently by whoever needs them first; replicas from
`Settings.jetstream_replicas`):

    agentmesh_<p>_tasks        KV      `<task_id>` → the TaskRecord (msgpack), updated
                                       compare-and-set on its revision
    agentmesh_<p>_traces       KV      `<trace_id>` → the Trace (msgpack)
    agentmesh_<p>_task_index   KV      `idem.<sha256 of the key>` → task id;
                                       `trace.<trace_id>.<task_id>`, `ws.<workspace>.<trace_id>`
                                       → empty (listing without a scan)
    agentmesh_<p>_task_queue   stream  `<p>.tasks.queue.<priority>`: one message per task (its id),
                                       work-queue retention; durable consumers
                                       `executors-<priority>` shared by every executor
    agentmesh_<p>_task_events  stream  `<p>.tasks.events.<task_id>`: the task's event log

and two core subjects: `<p>.tasks.nudge` (a task was queued) and `<p>.tasks.cancel.<task_id>`.
A task is submitted in this order: idempotency claim, record, first event, queue message, nudge;
the submitter hears its id only after the queue message is acknowledged by JetStream. A crash in
between leaves a record that a retried submit (same idempotency key) completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import api
from nats.js.kv import KeyValue

from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects, validate_id
from agentmesh.broker.task_log import TaskLog, validate_task_id
from agentmesh.schemas.codec import decode, encode
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.errors import (
    Conflict,
    InvalidMessage,
    NotFound,
    PayloadTooLarge,
    Unavailable,
)
from agentmesh.schemas.task import (
    TASK_ID_RE,
    TRACE_ID_RE,
    Priority,
    TaskEvent,
    TaskEventKind,
    TaskRecord,
    TaskRef,
    TaskSpec,
    TaskStatus,
    Trace,
)

logger = logging.getLogger(__name__)

QUEUE_DUPLICATE_WINDOW = 120.0  # seconds: a re-submitted task id is queued once
MAX_CAS_RETRIES = 50
KNOWN_RECORDS = 1024  # task records a store keeps from its last read or write (see `update`)
_UNREACHABLE = (nats.errors.Error, OSError, TimeoutError)


def names(prefix: str) -> dict[str, str]:
    """The JetStream resources of mesh `prefix`, by role."""
    return {
        role: f"agentmesh_{prefix}_{role}"
        for role in ("tasks", "traces", "task_index", "task_queue", "task_events")
    }


def consumer_name(priority: Priority) -> str:
    return f"executors-{priority.value}"


def validate_trace_id(trace_id: object) -> str:
    if isinstance(trace_id, str) and TRACE_ID_RE.fullmatch(trace_id):
        return trace_id
    raise NotFound(f"no trace {trace_id!r}", details={"trace_id": str(trace_id)[:80]})


class TaskStore(TaskLog):
    """Tasks, their events (task_log.py) and traces of one mesh, on one NATS connection."""

    def __init__(self, nc: NatsClient, settings: Settings, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self.names = names(settings.prefix)
        self.js = nc.jetstream(timeout=timeout)
        self._kv: dict[str, KeyValue] = {}
        self._known: dict[str, tuple[TaskRecord, int]] = {}  # last read or written, for update
        self._ready = False

    # Set-up ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _calling(self, what: str):  # noqa: ANN202 - a context manager
        if not self.nc.is_connected:
            raise Unavailable(f"NATS is reconnecting ({what}); retry shortly")
        try:
            yield
        except _UNREACHABLE as exc:
            if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
                raise
            logger.warning("JetStream unreachable (%s): %s", what, exc or type(exc).__name__)
            raise Unavailable(f"NATS JetStream is unreachable ({what}); retry shortly") from None

    async def ensure(self) -> None:
        """Create the buckets, streams and consumers if they are missing (idempotent).

        Raises:
            Unavailable: JetStream cannot be reached or is not enabled.
        """
        if self._ready:
            return
        s, n = self.settings, self.names
        with self._calling("creating the task store"):
            for role in ("tasks", "traces", "task_index"):
                self._kv[role] = await self._bucket(n[role])
            await self._stream(
                api.StreamConfig(
                    name=n["task_queue"],
                    subjects=[self.subjects.task_queue()],
                    retention=api.RetentionPolicy.WORK_QUEUE,
                    storage=api.StorageType.FILE,
                    num_replicas=s.jetstream_replicas,
                    duplicate_window=QUEUE_DUPLICATE_WINDOW,
                )
            )
            await self._stream(
                api.StreamConfig(
                    name=n["task_events"],
                    subjects=[self.subjects.task_events()],
                    retention=api.RetentionPolicy.LIMITS,
                    storage=api.StorageType.FILE,
                    num_replicas=s.jetstream_replicas,
                    max_age=s.task_retention,
                    allow_direct=True,
                )
            )
            for priority in Priority:
                config = api.ConsumerConfig(
                    durable_name=consumer_name(priority),
                    filter_subject=self.subjects.task_queue(priority.value),
                    ack_policy=api.AckPolicy.EXPLICIT,
                    ack_wait=s.task_lease,
                    max_deliver=-1,
                    max_ack_pending=-1,
                    deliver_policy=api.DeliverPolicy.ALL,
                )
                await self.js.add_consumer(n["task_queue"], config)
        self._ready = True

    async def _bucket(self, name: str) -> KeyValue:
        try:
            return await self.js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            pass
        config = api.KeyValueConfig(
            bucket=name,
            history=1,
            storage=api.StorageType.FILE,
            replicas=self.settings.jetstream_replicas,
            # Everything of a task expires: its record, a trace and its index entries (the
            # idempotency claims of webhook deliveries too), the retention after their last write.
            ttl=self.settings.task_retention,
            direct=True,
        )
        try:
            return await self.js.create_key_value(config)
        except nats.js.errors.BadRequestError:
            return await self.js.key_value(name)  # another process made it first

    async def _stream(self, config: api.StreamConfig) -> None:
        try:
            await self.js.add_stream(config)
        except nats.js.errors.BadRequestError:
            await self.js.stream_info(config.name)  # there with another config: use it

    async def _tasks(self) -> KeyValue:
        await self.ensure()
        return self._kv["tasks"]

    # Traces ----------------------------------------------------------------------------------
    async def create_trace(
        self,
        workspace_id: str,
        *,
        agent_type: str | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Trace:
        """A new trace in `workspace_id`; its id is a fresh W3C trace id.

        Raises:
            InvalidId: a workspace id or agent type that is not an id.
        """
        validate_id(workspace_id, what="workspace id")
        if agent_type is not None:
            validate_id(agent_type, what="agent type")
        trace = Trace(
            trace_id=uuid.uuid4().hex,
            workspace_id=workspace_id,
            agent_type=agent_type,
            name=name,
            metadata=metadata or {},
        )
        await self.ensure()
        with self._calling("storing a trace"):
            await self._kv["traces"].create(trace.trace_id, encode(trace))
            await self._kv["task_index"].put(f"ws.{workspace_id}.{trace.trace_id}", b"")
        return trace

    async def get_trace(self, trace_id: str) -> Trace | None:
        try:
            validate_trace_id(trace_id)
        except NotFound:
            return None
        await self.ensure()
        with self._calling("reading a trace"):
            try:
                entry = await self._kv["traces"].get(trace_id)
            except nats.js.errors.KeyNotFoundError:
                return None
        return decode(entry.value or b"", Trace)

    async def list_traces(self, workspace_id: str | None = None) -> list[Trace]:
        """Traces, newest first; of one workspace if given."""
        if workspace_id is not None:
            validate_id(workspace_id, what="workspace id")
            ids = [k.rpartition(".")[2] for k in await self._index(f"ws.{workspace_id}.*")]
        else:
            ids = [k.rpartition(".")[2] for k in await self._index("ws.*.*")]
        traces = [t for t in [await self.get_trace(i) for i in ids] if t is not None]
        return sorted(traces, key=lambda t: t.created_at, reverse=True)

    async def workspaces(self) -> dict[str, int]:
        """Each workspace with its number of traces."""
        out: dict[str, int] = {}
        for key in await self._index("ws.*.*"):
            workspace = key.split(".")[1]
            out[workspace] = out.get(workspace, 0) + 1
        return dict(sorted(out.items()))

    async def _index(self, pattern: str) -> list[str]:
        """Keys of the index bucket matching `pattern` (KV wildcards)."""
        return await self._keys("task_index", pattern)

    async def _keys(self, role: str, pattern: str) -> list[str]:
        """Keys of one of the buckets matching `pattern`, from the stream's per-subject state.

        Not a KV watch: nats-py's watcher can signal "no more values" before it delivered them
        all under load (nats-io/nats.py#842), which made listings come back short. These
        buckets never delete a key (entries only expire), so every subject is a live key.
        """
        await self.ensure()
        bucket = self.names[role]
        root = f"$KV.{bucket}."
        with self._calling(f"listing {bucket}"):
            info = await self.js.stream_info(f"KV_{bucket}", subjects_filter=root + pattern)
        return [subject[len(root) :] for subject in info.state.subjects or {}]

    # Tasks -----------------------------------------------------------------------------------
    async def submit(self, spec: TaskSpec) -> TaskRef:
        """Store a task and queue it; returns once JetStream has both.

        Raises:
            InvalidId: a bad agent id or type.
            InvalidMessage: no target, two targets, a deadline in the past.
            NotFound: an unknown trace.
            PayloadTooLarge: the input does not fit a message.
            Unavailable: JetStream cannot be reached (nothing was acknowledged).
        """
        now = time.time()
        workspace = await self._check(spec, now)
        await self.ensure()
        task_id = f"task-{uuid.uuid4().hex}"
        if spec.idempotency_key is not None:
            claim = "idem." + hashlib.sha256(spec.idempotency_key.encode()).hexdigest()
            with self._calling("submitting a task"):
                try:
                    await self._kv["task_index"].create(claim, task_id.encode())
                except nats.js.errors.KeyWrongLastSequenceError:
                    entry = await self._kv["task_index"].get(claim)
                    earlier = (entry.value or b"").decode()
                    found = await self.get(earlier)
                    if found is not None:
                        if found.status is TaskStatus.PENDING:
                            await self._enqueue(found)  # the first submit may have died here
                        return TaskRef(task_id=earlier, status=found.status, created=False)
                    task_id = earlier  # claimed, then the submitter died: finish its submit
        record = TaskRecord(task_id=task_id, spec=spec, workspace_id=workspace, created_at=now)
        data = encode(record)
        if len(data) > self._max_record():
            raise PayloadTooLarge(
                f"the task is {len(data)} bytes; at most {self._max_record()} fit",
                details={"size": len(data), "limit": self._max_record()},
            )
        with self._calling("submitting a task"):
            try:
                await self._kv["tasks"].create(task_id, data)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # a retried submit of a claimed id: the record is there already
            if spec.trace_id is not None:
                await self._kv["task_index"].put(f"trace.{spec.trace_id}.{task_id}", b"")
        await self.append_event(
            TaskEvent(task_id=task_id, kind=TaskEventKind.STATUS, status=TaskStatus.PENDING)
        )
        await self._enqueue(record)
        return TaskRef(task_id=task_id, status=TaskStatus.PENDING)

    async def _check(self, spec: TaskSpec, now: float) -> str | None:
        """Validate the target and times; the trace's workspace."""
        if spec.agent_id is not None:
            validate_id(spec.agent_id, what="agent id")
        if spec.agent_type is not None:
            validate_id(spec.agent_type, what="agent type")
        if spec.agent_id is not None and spec.agent_type is not None:
            raise InvalidMessage(
                "give agent_id or agent_type, not both", details={"field": "agent_id"}
            )
        workspace = None
        if spec.trace_id is not None:
            trace = await self.get_trace(spec.trace_id)
            if trace is None:
                raise NotFound(f"no trace {spec.trace_id!r}", details={"trace_id": spec.trace_id})
            workspace = trace.workspace_id
            if spec.agent_id is None and spec.agent_type is None:
                spec.agent_type = trace.agent_type
        if spec.agent_id is None and spec.agent_type is None:
            raise InvalidMessage(
                "a task needs a target: agent_id, agent_type, or a trace with an agent_type",
                details={"field": "agent_id"},
            )
        if spec.deadline is not None and spec.deadline <= now:
            raise InvalidMessage(
                "the deadline is in the past", details={"field": "deadline", "now": now}
            )
        return workspace

    def _max_record(self) -> int:
        return min(self.settings.max_message_bytes, self.nc.max_payload or 1 << 20)

    async def _enqueue(self, record: TaskRecord) -> None:
        subject = self.subjects.task_queue(record.spec.priority.value)
        # One queue entry per turn (JetStream drops a repeated id: a retried submit or resume).
        entry_id = record.task_id + (f".{len(record.history)}" if record.history else "")
        with self._calling("queueing a task"):
            await self.js.publish(
                subject,
                record.task_id.encode(),
                stream=self.names["task_queue"],
                headers={"Nats-Msg-Id": entry_id},
            )
            await self.nc.publish(self.subjects.tasks_nudge(), b"")

    async def resume(self, task_id: str, message: Message) -> TaskRecord:
        """The caller's next message for a task that asked for input: the question and the
        earlier input go to the record's `history`, `message` becomes its input, and the task is
        queued again (a new turn, with `max_attempts` of its own). A message that is already
        some turn's input (a retry after a lost answer) changes nothing; if it is the current
        turn's and that turn is pending, the task is queued again.

        Raises:
            NotFound: no such task.
            Conflict: the task is not waiting for input (running, or final).
            PayloadTooLarge: the record with this turn does not fit a message.
        """
        validate_task_id(task_id)
        repeated = False

        def change(record: TaskRecord) -> TaskRecord | None:
            nonlocal repeated
            if record.turn_of(message.message_id) is not None:
                repeated = True
                return None
            if record.status is not TaskStatus.INPUT_REQUIRED:
                raise Conflict(
                    f"task {task_id} is {record.status.value}: it takes no more input",
                    details={"task_id": task_id, "status": record.status.value},
                )
            record.history += [record.spec.input, record.result or Message()]  # the question
            record.spec.input, record.result = message, None
            record.status, record.turn_start = TaskStatus.PENDING, len(record.attempts)
            record.cancel_requested = False  # one asked while the question was asked: over
            if len(data := encode(record)) > self._max_record():
                raise PayloadTooLarge(
                    f"the task with this turn is {len(data)} bytes; at most "
                    f"{self._max_record()} fit",
                    details={"size": len(data), "limit": self._max_record()},
                )
            return record

        record = await self.update(task_id, change)
        if record is None:
            raise NotFound(f"no task {task_id!r}", details={"task_id": task_id})
        if not repeated:
            await self.append_event(
                TaskEvent(
                    task_id=task_id,
                    kind=TaskEventKind.STATUS,
                    status=TaskStatus.PENDING,
                    data={"turn": record.turn + 1},
                )
            )
        current = record.turn_of(message.message_id) == record.turn
        if record.status is TaskStatus.PENDING and current:
            await self._enqueue(record)  # the first resume may have died before queueing
        return record

    async def get(self, task_id: str) -> TaskRecord | None:
        """The task's record; None if there is no such task (or its id is malformed)."""
        found = await self.load(task_id)
        return None if found is None else found[0]

    async def load(self, task_id: str) -> tuple[TaskRecord, int] | None:
        """The record and its revision (for `update`)."""
        if not isinstance(task_id, str) or not TASK_ID_RE.fullmatch(task_id):
            return None
        kv = await self._tasks()
        with self._calling("reading a task"):
            try:
                entry = await kv.get(task_id)
            except nats.js.errors.KeyNotFoundError:
                self._known.pop(task_id, None)
                return None
        found = decode(entry.value or b"", TaskRecord), entry.revision or 0
        self._remember(task_id, found)
        return found

    async def update(
        self, task_id: str, change: Callable[[TaskRecord], TaskRecord | None]
    ) -> TaskRecord | None:
        """Apply `change` compare-and-set until it sticks; `change` returns the new record, or
        None to leave it as it is. Returns the stored record (None: no such task)."""
        kv = await self._tasks()
        # Start from the copy this store last read or wrote, if any: compare-and-set makes a
        # stale one safe (the write fails, and the record is read again). An executor's chain
        # of updates to one task so costs one read instead of one per update.
        found = self._known.pop(task_id, None)
        for _ in range(MAX_CAS_RETRIES):
            if found is None:
                found = await self.load(task_id)
                if found is None:
                    return None
            record, revision = found
            new = change(record.model_copy(deep=True))
            if new is None:
                return record
            new.updated_at = time.time()
            with self._calling("updating a task"):
                try:
                    stored = await kv.update(task_id, encode(new), last=revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    found = None  # someone else changed it: read again and re-apply
                    continue
            self._remember(task_id, (new, stored))
            return new
        raise Unavailable(f"task {task_id} is changing too often to update; retry")

    def _remember(self, task_id: str, found: tuple[TaskRecord, int]) -> None:
        """Keep a private copy (callers may change the record they were given)."""
        self._known.pop(task_id, None)
        self._known[task_id] = (found[0].model_copy(deep=True), found[1])
        if len(self._known) > KNOWN_RECORDS:
            del self._known[next(iter(self._known))]  # the oldest first: a bounded memory

    async def list(
        self,
        *,
        trace_id: str | None = None,
        agent_id: str | None = None,
        agent_type: str | None = None,
        status: TaskStatus | None = None,
        workspace_id: str | None = None,
        limit: int = 100,
    ) -> list[TaskRecord]:
        """Tasks, newest first, filtered. Without a trace this reads every task record."""
        if trace_id is not None:
            if not TRACE_ID_RE.fullmatch(trace_id):
                return []
            ids = [k.rpartition(".")[2] for k in await self._index(f"trace.{trace_id}.*")]
        else:
            ids = await self._keys("tasks", ">")
        out = []
        for task_id in ids:
            record = await self.get(task_id)
            if record is None:
                continue
            spec = record.spec
            if (
                (agent_id is not None and spec.agent_id != agent_id)
                or (agent_type is not None and spec.agent_type != agent_type)
                or (status is not None and record.status is not status)
                or (workspace_id is not None and record.workspace_id != workspace_id)
            ):
                continue
            out.append(record)
        out.sort(key=lambda r: r.created_at, reverse=True)
        return out[:limit]

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel a task: a pending one never runs; a running one's call is cancelled at its
        instance by the executor running it, which then records `canceled`.

        Raises:
            NotFound: no such task.
            Conflict: the task has finished already.
        """
        validate_task_id(task_id)
        was: list[TaskStatus] = []

        def change(record: TaskRecord) -> TaskRecord | None:
            was[:] = [record.status]
            if record.status.terminal:
                raise Conflict(
                    f"task {task_id} is {record.status.value} already",
                    details={"task_id": task_id, "status": record.status.value},
                )
            if record.status is TaskStatus.RUNNING:
                record.cancel_requested = True
                return record
            record.status = TaskStatus.CANCELED
            record.finished_at = time.time()
            return record

        record = await self.update(task_id, change)
        if record is None:
            raise NotFound(f"no task {task_id!r}", details={"task_id": task_id})
        if record.status is TaskStatus.CANCELED:
            await self.append_event(
                TaskEvent(task_id=task_id, kind=TaskEventKind.STATUS, status=record.status)
            )
        else:
            with self._calling("cancelling a task"):
                await self.nc.publish(self.subjects.task_cancel(task_id), b"")
        return record
