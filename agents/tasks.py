"""Durable tasks and traces from Python: `mesh.tasks.submit("analyst", "Analyse the sales")`.

A task is stored in JetStream before `submit` returns, and an executor (`agentmesh worker
executor`, started by `agentmesh up`) runs it as an ordinary call to the agent, retrying when
the instance running it dies. See PROTOCOL.md, section "Tasks".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from agentmesh.broker.bus import Bus
from agentmesh.broker.tasks import TaskStore
from agentmesh.schemas.envelope import Message, to_parts
from agentmesh.schemas.errors import NotFound
from agentmesh.schemas.task import (
    DEFAULT_MAX_ATTEMPTS,
    Priority,
    TaskEvent,
    TaskRecord,
    TaskRef,
    TaskSpec,
    TaskStatus,
    Trace,
)


class Tasks:
    """The mesh's durable tasks. Get it as `MeshClient.tasks`."""

    def __init__(self, bus: Bus, sender_id: str | None) -> None:
        self.store = TaskStore(bus.nc, bus.settings)
        self.sender_id = sender_id

    async def submit(
        self,
        agent_id: str | None = None,
        content: Any = None,
        *,
        agent_type: str | None = None,
        trace_id: str | None = None,
        input: Message | None = None,  # noqa: A002 - the seed's and A2A's word
        priority: Priority | str = Priority.NORMAL,
        deadline: float | None = None,
        not_before: float | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_on_error: bool = False,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> TaskRef:
        """Store a task for `agent_id` (or any agent of `agent_type`, or the trace's type) and
        return its id once JetStream has it. `content` is what `ask` takes (text, parts, data);
        `input` a whole Message instead.

        Raises:
            InvalidId, InvalidMessage: a bad target, no target, a deadline in the past.
            NotFound: an unknown trace.
            PayloadTooLarge: the input does not fit.
            Unavailable: JetStream cannot be reached (the task was not stored).
        """
        if input is None:
            input = Message(content=to_parts(content), from_agent_id=self.sender_id)
        spec = TaskSpec(
            agent_id=agent_id,
            agent_type=agent_type,
            input=input,
            trace_id=trace_id,
            priority=Priority(priority),
            deadline=deadline,
            not_before=not_before,
            max_attempts=max_attempts,
            retry_on_error=retry_on_error,
            idempotency_key=idempotency_key,
            metadata=metadata or {},
        )
        return await self.store.submit(spec)

    async def get(self, task_id: str) -> TaskRecord:
        """The task's record. Raises NotFound."""
        record = await self.store.get(task_id)
        if record is None:
            raise NotFound(f"no task {task_id!r}", details={"task_id": str(task_id)[:80]})
        return record

    async def list(self, **filters: Any) -> list[TaskRecord]:
        """Tasks, newest first; filters `trace_id`, `agent_id`, `agent_type`, `status`,
        `workspace_id`, `limit`."""
        if filters.get("status") is not None:
            filters["status"] = TaskStatus(filters["status"])
        return await self.store.list(**filters)

    async def cancel(self, task_id: str) -> TaskRecord:
        """Cancel: a pending task never runs; a running one is cancelled at its instance.
        Raises NotFound, or Conflict if it has finished."""
        return await self.store.cancel(task_id)

    async def answer(
        self,
        task_id: str,
        content: Any = None,
        *,
        input: Message | None = None,  # noqa: A002
    ) -> TaskRecord:
        """Answer a task that asked for input (`input-required`): it runs its next turn in its
        conversation. Raises NotFound, or Conflict if it is not waiting for input."""
        record = await self.get(task_id)
        if input is None:
            input = Message(content=to_parts(content), from_agent_id=self.sender_id)
        input.conversation_id = record.spec.input.conversation_id
        input.to_agent_id = record.spec.agent_id or record.asked_by
        return await self.store.resume(task_id, input)

    async def wait(self, task_id: str, *, timeout: float | None = None) -> TaskRecord:
        """The record once the task has finished or asks for input (or as it is at `timeout`)."""
        return await self.store.wait(task_id, timeout=timeout)

    async def events(
        self, task_id: str, *, after: int = 0, follow: bool = True
    ) -> AsyncIterator[TaskEvent]:
        """The task's events after sequence `after`; `follow`: until the final status."""
        async for event in self.store.events(task_id, after=after, follow=follow):
            yield event


class Traces:
    """Traces group the tasks of one piece of work. Get it as `MeshClient.traces`."""

    def __init__(self, bus: Bus) -> None:
        self.store = TaskStore(bus.nc, bus.settings)

    async def create(
        self,
        workspace_id: str,
        *,
        agent_type: str | None = None,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Trace:
        return await self.store.create_trace(
            workspace_id, agent_type=agent_type, name=name, metadata=metadata
        )

    async def get(self, trace_id: str) -> Trace:
        trace = await self.store.get_trace(trace_id)
        if trace is None:
            raise NotFound(f"no trace {trace_id!r}", details={"trace_id": str(trace_id)[:80]})
        return trace

    async def list(self, workspace_id: str | None = None) -> list[Trace]:
        return await self.store.list_traces(workspace_id)

    async def tasks(self, trace_id: str) -> list[TaskRecord]:
        await self.get(trace_id)
        return await self.store.list(trace_id=trace_id, limit=10_000)

    async def workspaces(self) -> dict[str, int]:
        return await self.store.workspaces()
