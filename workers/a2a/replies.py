"""What an outside agent answered, as the mesh reply of the bridged call (pure conversions).

A2A answers with a Message (no task), or a Task that ends in a state:

    completed        the reply: every artifact's parts (the status message's when it has none)
    input-required   the reply is the agent's question (its status message), with
                     `metadata.task_state = "input-required"`; the next message of the
                     conversation continues the task
    failed           error INTERNAL     (details: a2a_task_id, a2a_state, the agent's message)
    rejected         error INTERNAL     (the same, a2a_state "rejected")
    canceled         error CANCELLED
    auth-required    error UNAUTHORIZED (the mesh cannot authenticate to it on a user's behalf)

A reply from a task carries `metadata.a2a_task_id` (and `a2a_context_id`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from a2a.types.a2a_pb2 import Message, Task, TaskState, TaskStatus
from a2a.utils.errors import A2AError

from agentmesh.schemas.a2a import metadata_in, part_in
from agentmesh.schemas.envelope import Chunk, TextPart, merge_text
from agentmesh.schemas.errors import Cancelled, MeshError, RemoteError, Unauthorized
from agentmesh.schemas.task import TASK_STATE
from agentmesh.schemas.task import TaskStatus as MeshStatus

TASK_ID = "a2a_task_id"  # the reply metadata key naming the outside agent's task
CONTEXT_ID = "a2a_context_id"
INPUT_REQUIRED = MeshStatus.INPUT_REQUIRED.value

SETTLED = frozenset(
    {
        TaskState.TASK_STATE_COMPLETED,
        TaskState.TASK_STATE_FAILED,
        TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
        TaskState.TASK_STATE_INPUT_REQUIRED,
        TaskState.TASK_STATE_AUTH_REQUIRED,
    }
)


def state_name(state: TaskState) -> str:
    """`TASK_STATE_INPUT_REQUIRED` → `input-required`."""
    return TaskState.Name(state).removeprefix("TASK_STATE_").lower().replace("_", "-")


def parts_in(parts: Any) -> list[Any]:
    """A2A parts as mesh parts; one the mesh cannot carry is an error of the outside agent."""
    try:
        return [part_in(p) for p in parts]
    except (A2AError, ValueError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        raise RemoteError(
            f"the outside agent sent a part the mesh cannot carry: {message}"
        ) from None


@dataclass(slots=True)
class Answer:
    """One exchange's outcome: the reply's parts and metadata, and the task it ran as."""

    content: list[Any] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    context_id: str = ""
    input_required: bool = False


def message_answer(message: Message) -> Answer:
    """A plain Message reply (the agent made no task)."""
    return Answer(
        content=merge_text(parts_in(message.parts)),
        metadata=metadata_in(message.metadata),
        context_id=message.context_id,
    )


def _status_parts(status: TaskStatus) -> list[Any]:
    return parts_in(status.message.parts) if status.HasField("message") else []


def _status_text(status: TaskStatus) -> str:
    parts = _status_parts(status)
    return "".join(p.text for p in parts if isinstance(p, TextPart))


def task_error(task_id: str, status: TaskStatus, *, url: str) -> MeshError:
    """The mesh error for a task that ended failed, rejected, canceled or auth-required."""
    state = state_name(status.state)
    said = _status_text(status)
    details = {TASK_ID: task_id, "a2a_state": state, "url": url}
    text = f"the outside agent's task {task_id} is {state}" + (f": {said}" if said else "")
    if status.state == TaskState.TASK_STATE_CANCELED:
        return Cancelled(text, details=details)
    if status.state == TaskState.TASK_STATE_AUTH_REQUIRED:
        return Unauthorized(text, details=details)
    return RemoteError(text, details=details)


def settled_answer(
    task_id: str, context_id: str, status: TaskStatus, parts: list[Any], *, url: str
) -> Answer:
    """The answer of a task in a settled state (`parts`: its artifacts', as mesh parts).

    Raises:
        MeshError: the task failed, was rejected or canceled, or wants authentication.
    """
    meta = {TASK_ID: task_id, CONTEXT_ID: context_id}
    if status.state == TaskState.TASK_STATE_COMPLETED:
        return Answer(
            content=merge_text(parts or _status_parts(status)),
            metadata=meta,
            task_id=task_id,
            context_id=context_id,
        )
    if status.state == TaskState.TASK_STATE_INPUT_REQUIRED:
        return Answer(
            content=merge_text(_status_parts(status) or parts),
            metadata=meta | {TASK_STATE: INPUT_REQUIRED},
            task_id=task_id,
            context_id=context_id,
            input_required=True,
        )
    raise task_error(task_id, status, url=url)


def task_answer(task: Task, *, url: str) -> Answer:
    """A Task the agent answered with, once settled (its artifacts are the reply)."""
    parts = [p for artifact in task.artifacts for p in parts_in(artifact.parts)]
    return settled_answer(task.id, task.context_id, task.status, parts, url=url)


def closing_chunk(
    task_id: str, context_id: str, status: TaskStatus, *, streamed: bool, url: str
) -> Chunk:
    """A stream's last chunk, for a task settled after its artifacts were streamed: the
    metadata a plain reply would carry, and what the stream lacks (an input-required question;
    the status message of a task that completed without artifacts).

    Raises:
        MeshError: the task failed, was rejected or canceled, or wants authentication.
    """
    answer = settled_answer(task_id, context_id, status, [], url=url)
    content = answer.content if (answer.input_required or not streamed) else []
    return Chunk(content=content, metadata=answer.metadata)
