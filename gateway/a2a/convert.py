"""Mesh ⇄ A2A types: messages and parts both ways, a task record as an A2A `Task`, and the status
and artifact update events of a task's stream.

The mapping (issue 13): the A2A task id is the mesh task id; `contextId` is the input message's
`conversation_id` (a task submitted outside A2A without one is its own context: its task id);
the reply Message's parts are one artifact, `<task id>-result`; a failed or rejected task's error
is its status message. Parts: `text` ⇄ TextPart, `data` ⇄ DataPart, `raw` ⇄ a FilePart with
`bytes` (an ImagePart when its media type is `image/*`), `url` ⇄ a FilePart with `uri`.
"""

from __future__ import annotations

from typing import Any

from a2a.types.a2a_pb2 import (
    Artifact,
    Message,
    Part,
    Role,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from google.protobuf.timestamp_pb2 import Timestamp

from agentmesh.schemas import envelope

# The part and message conversions the bridge to outside agents shares (workers/a2a).
from agentmesh.schemas.a2a import (  # noqa: F401 - part_in, message_in, metadata_in: handler.py
    message_in,
    message_out,
    metadata_in,
    part_in,
    part_out,
    parts_out,
)
from agentmesh.schemas.a2a import metadata_struct as _struct
from agentmesh.schemas.envelope import DataPart, TextPart
from agentmesh.schemas.errors import ErrorInfo
from agentmesh.schemas.task import TaskRecord
from agentmesh.schemas.task import TaskStatus as MeshStatus

# Mesh status → A2A state (TaskStatus.a2a_state names them; these are the proto enum values).
_STATES = {
    MeshStatus.PENDING: TaskState.TASK_STATE_SUBMITTED,
    MeshStatus.RUNNING: TaskState.TASK_STATE_WORKING,
    MeshStatus.INPUT_REQUIRED: TaskState.TASK_STATE_INPUT_REQUIRED,
    MeshStatus.COMPLETED: TaskState.TASK_STATE_COMPLETED,
    MeshStatus.FAILED: TaskState.TASK_STATE_FAILED,
    MeshStatus.CANCELED: TaskState.TASK_STATE_CANCELED,
    MeshStatus.REJECTED: TaskState.TASK_STATE_REJECTED,
}
_STATUSES = {state: status for status, state in _STATES.items()}


def state_of(status: MeshStatus) -> TaskState:
    """The A2A state of a mesh status (`TASK_STATE_` + `status.a2a_state`, upper-cased)."""
    return _STATES[status]


def status_of(state: TaskState) -> MeshStatus | None:
    """The mesh status of an A2A state; None for one the mesh has no tasks in (auth-required)."""
    return _STATUSES.get(state)


def result_id(task_id: str) -> str:
    """The id of the artifact holding a task's reply."""
    return f"{task_id}-result"


def context_of(record: TaskRecord) -> str:
    return record.spec.input.conversation_id or record.task_id


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


# Mesh → A2A ----------------------------------------------------------------------------------
def _agent_note(text: str, record: TaskRecord, data: Any = None) -> Message:
    content: list[Any] = [TextPart(text=text)]
    if data is not None:
        content.append(DataPart(data=data))
    note = envelope.Message(content=content)
    return message_out(
        note, role=Role.ROLE_AGENT, task_id=record.task_id, context_id=context_of(record)
    )


def error_note(error: ErrorInfo, record: TaskRecord) -> Message:
    """A failed task's error as its status message: `CODE: message`."""
    return _agent_note(f"{error.code}: {error.message}", record)


def progress_note(note: str | None, data: Any, record: TaskRecord) -> Message:
    return _agent_note(note or "", record, data)


def status_out(
    record: TaskRecord,
    status: MeshStatus | None = None,
    *,
    message: Message | None = None,
    at: float | None = None,
) -> TaskStatus:
    status = record.status if status is None else status
    out = TaskStatus(state=state_of(status), timestamp=_timestamp(at or record.updated_at))
    if message is None and status.terminal and record.error is not None:
        message = error_note(record.error, record)
    if message is None and status is MeshStatus.INPUT_REQUIRED and record.result is not None:
        message = agent_message(record.result, record)  # the agent's question
    if message is not None:
        out.message.CopyFrom(message)
    return out


def result_artifact(record: TaskRecord) -> Artifact | None:
    """The reply's parts as the task's one artifact (None before there is a reply)."""
    result = record.result
    if result is None or record.status is MeshStatus.INPUT_REQUIRED:
        return None  # no reply yet; or a question, which is the status message
    parts = parts_out(result.content) or [Part(text="")]  # an artifact needs a part
    artifact = Artifact(artifact_id=result_id(record.task_id), name="result", parts=parts)
    metadata = _struct({k: v for k, v in result.metadata.items() if k != "sender_key"})
    if metadata is not None:
        artifact.metadata.CopyFrom(metadata)
    return artifact


def agent_message(message: envelope.Message, record: TaskRecord) -> Message:
    return message_out(
        message, role=Role.ROLE_AGENT, task_id=record.task_id, context_id=context_of(record)
    )


def task_out(record: TaskRecord) -> Task:
    """The record as an A2A Task: its status, the reply as an artifact, as history the inputs
    (and the agent's questions of earlier turns, if it asked for input)."""
    context_id = context_of(record)
    task = Task(id=record.task_id, context_id=context_id, status=status_out(record))
    artifact = result_artifact(record)
    if artifact is not None:
        task.artifacts.append(artifact)
    for turn, message in enumerate([*record.history, record.spec.input]):
        role = Role.ROLE_USER if turn % 2 == 0 else Role.ROLE_AGENT
        task.history.append(
            message_out(message, role=role, task_id=record.task_id, context_id=context_id)
        )
    return task


def status_update(record: TaskRecord, status: TaskStatus) -> TaskStatusUpdateEvent:
    return TaskStatusUpdateEvent(
        task_id=record.task_id, context_id=context_of(record), status=status
    )


def artifact_update(
    record: TaskRecord, artifact: Artifact, *, append: bool, last_chunk: bool
) -> TaskArtifactUpdateEvent:
    return TaskArtifactUpdateEvent(
        task_id=record.task_id,
        context_id=context_of(record),
        artifact=artifact,
        append=append,
        last_chunk=last_chunk,
    )


def chunk_artifact(record: TaskRecord, chunk: envelope.Chunk) -> Artifact:
    """A streamed chunk as a piece of the result artifact."""
    return Artifact(
        artifact_id=result_id(record.task_id), name="result", parts=parts_out(chunk.content)
    )
