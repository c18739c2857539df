"""A task's event log (`<p>.tasks.events.<task_id>` in the `agentmesh_<p>_task_events` stream):
appending, reading and following it, and waiting on it for the task to settle. Part of
`TaskStore` (tasks.py), which provides the connection, names and records it uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext, api

from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.codec import decode, encode
from agentmesh.schemas.errors import NotFound, Unavailable
from agentmesh.schemas.task import TASK_ID_RE, TaskEvent, TaskEventKind, TaskRecord

WAIT_RECHECK = 5.0  # seconds a waiter follows events before it reads the record again
WAIT_RETRY = 0.2  # seconds between tries while NATS is unreachable
_UNREACHABLE = (nats.errors.Error, OSError, TimeoutError)


def validate_task_id(task_id: object) -> str:
    if isinstance(task_id, str) and TASK_ID_RE.fullmatch(task_id):
        return task_id
    raise NotFound(f"no task {task_id!r}", details={"task_id": str(task_id)[:80]})


class TaskLog:
    """The event-log half of `TaskStore`."""

    js: JetStreamContext
    subjects: Subjects
    names: dict[str, str]
    _calling: Callable[[str], AbstractContextManager[Any]]

    async def ensure(self) -> None:
        raise NotImplementedError

    async def get(self, task_id: str) -> TaskRecord | None:
        raise NotImplementedError

    async def append_event(self, event: TaskEvent) -> int:
        """Append to the task's event log; its sequence once JetStream has it."""
        await self.ensure()
        with self._calling("writing a task event"):
            ack = await self.js.publish(
                self.subjects.task_events(event.task_id),
                encode(event),
                stream=self.names["task_events"],
            )
        return ack.seq

    async def events(
        self, task_id: str, *, after: int = 0, follow: bool = False
    ) -> AsyncIterator[TaskEvent]:
        """The task's events with a sequence above `after`, in order. `follow`: keep going as
        new ones come, until the task's final status event.

        Raises:
            NotFound: no such task.
        """
        validate_task_id(task_id)
        if await self.get(task_id) is None:
            raise NotFound(f"no task {task_id!r}", details={"task_id": task_id})
        subject = self.subjects.task_events(task_id)
        stream = self.names["task_events"]
        ended = False  # the last event is the final status: nothing more will come
        with self._calling("reading task events"):
            try:
                newest = await self.js.get_last_msg(stream, subject)
                last = newest.seq or 0
                ended = _is_final(decode(newest.data or b"", TaskEvent))
            except nats.js.errors.NotFoundError:
                last = 0
        if last <= after and (ended or not follow):
            return  # a watcher that saw the end already (an SSE resume) is not held forever
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
        )
        with self._calling("reading task events"):
            sub = await self.js.subscribe(
                subject, stream=stream, ordered_consumer=True, config=config
            )
        try:
            while True:
                with self._calling("reading task events"):
                    msg = await sub.next_msg(timeout=None)
                event = decode(msg.data, TaskEvent)
                event.seq = msg.metadata.sequence.stream
                yield event
                if _is_final(event) or (not follow and event.seq >= last):
                    return
        finally:
            with contextlib.suppress(*_UNREACHABLE):
                await sub.unsubscribe()

    async def wait(self, task_id: str, *, timeout: float | None = None) -> TaskRecord:
        """The record once the task has finished or asks for input (or as it is at `timeout`).
        Rides out a NATS reconnect: the events are followed again from the last one seen.

        Raises:
            NotFound: no such task.
            Unavailable: JetStream could not be reached at `timeout`, so nothing is known.
        """
        after = 0
        record: TaskRecord | None = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        record = await self.get(task_id)
                        if record is None:
                            raise NotFound(f"no task {task_id!r}", details={"task_id": task_id})
                        if record.status.settled:
                            return record
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(WAIT_RECHECK):
                                async for event in self.events(task_id, after=after, follow=True):
                                    after = event.seq or after
                                    if event.status is not None and event.status.settled:
                                        break  # read the record again
                    except Unavailable:
                        await asyncio.sleep(WAIT_RETRY)  # reconnecting: look again shortly
        if record is None:
            raise Unavailable(f"NATS JetStream is unreachable (waiting for {task_id})")
        return await self.get(task_id) or record


def _is_final(event: TaskEvent) -> bool:
    return event.kind is TaskEventKind.STATUS and event.status is not None and event.status.terminal
