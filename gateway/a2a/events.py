"""A task's durable event log as an A2A stream (`SendStreamingMessage`, `SubscribeToTask`).

The stream is: the Task as it is now, then, from the log (read from its start, on whichever
replica serves the stream): a status update per change of A2A state, a `working` status update
carrying each progress note, an artifact update per streamed chunk (`append` within one
attempt; a retried attempt starts the artifact again), and at the final status the whole reply
as the result artifact (`append=false`, `lastChunk=true`, replacing the chunks) and the terminal
status update. A task that asks for input ends its stream with an `input-required` status
update carrying the agent's question; the stream of the caller's answer (the task's next turn)
skips the earlier turns' events. The stream ends there, or when the replica begins to drain
(the client subscribes again, on any replica).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from a2a.server.events import Event
from a2a.types.a2a_pb2 import TaskState

from agentmesh.broker.tasks import TaskStore
from agentmesh.gateway.a2a import convert
from agentmesh.gateway.streams import relay
from agentmesh.schemas.task import TaskEvent, TaskEventKind, TaskRecord, TaskStatus


async def follow(
    store: TaskStore, record: TaskRecord, drain: asyncio.Event
) -> AsyncIterator[Event]:
    """`record` as a Task, then its updates until a terminal state or input-required (or
    `drain`)."""
    yield convert.task_out(record)
    if record.status.settled:
        return
    state = convert.state_of(record.status)
    attempt: int | None = None  # the attempt whose chunks the artifact holds
    turn = record.turn  # earlier turns' events are skipped: this one starts at its resume
    started = turn == 0
    async for event in _until(store.events(record.task_id, follow=True), drain):
        if not started:
            started = _resumed(event, turn)
            continue
        if event.kind is TaskEventKind.CHUNK and event.chunk is not None:
            piece = convert.chunk_artifact(record, event.chunk)
            append, attempt = attempt == event.attempt, event.attempt
            yield convert.artifact_update(record, piece, append=append, last_chunk=False)
        elif event.kind is TaskEventKind.PROGRESS:
            note = convert.progress_note(event.note, event.data, record)
            status = convert.status_out(
                record, TaskStatus.RUNNING, message=note, at=event.timestamp
            )
            state = TaskState.TASK_STATE_WORKING
            yield convert.status_update(record, status)
        elif event.kind is TaskEventKind.STATUS and event.status is not None:
            if event.status.terminal:
                async for final in _end(store, record, event):
                    yield final
                return
            if event.status is TaskStatus.INPUT_REQUIRED:
                yield await _question(store, record, turn, event)
                return
            new = convert.state_of(event.status)
            if new == state or (
                event.status is TaskStatus.PENDING and state != TaskState.TASK_STATE_SUBMITTED
            ):
                continue  # no change; or a retry waiting: still working, as the client sees it
            state = new
            yield convert.status_update(
                record, convert.status_out(record, event.status, at=event.timestamp)
            )


async def _end(store: TaskStore, record: TaskRecord, event: TaskEvent) -> AsyncIterator[Event]:
    """The result artifact (if any) and the terminal status, from the settled record."""
    final = await store.get(record.task_id) or record
    artifact = convert.result_artifact(final)
    if artifact is not None:
        yield convert.artifact_update(final, artifact, append=False, last_chunk=True)
    assert event.status is not None
    yield convert.status_update(final, convert.status_out(final, event.status, at=event.timestamp))


def _resumed(event: TaskEvent, turn: int) -> bool:
    """Whether `event` is the resume that began `turn` (its `pending` event, `data.turn`
    counting from 1)."""
    data = event.data if isinstance(event.data, dict) else {}
    return event.status is TaskStatus.PENDING and data.get("turn") == turn + 1


async def _question(store: TaskStore, record: TaskRecord, turn: int, event: TaskEvent) -> Event:
    """The input-required status update of `turn`, with the agent's question (the record's
    result; or, once the caller answered, the question in its history)."""
    now = await store.get(record.task_id) or record
    asked = now.history[2 * turn + 1] if now.turn > turn else now.result
    message = None if asked is None else convert.agent_message(asked, now)
    status = convert.status_out(now, TaskStatus.INPUT_REQUIRED, message=message, at=event.timestamp)
    return convert.status_update(now, status)


async def _until(
    events: AsyncIterator[TaskEvent], drain: asyncio.Event
) -> AsyncIterator[TaskEvent]:
    """`events` until they end or `drain` is set; a MeshError of the log propagates."""
    async for event in relay(events, drain, ping=None):
        if event is not None:
            yield event
