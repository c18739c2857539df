"""Mesh ⇄ A2A types: messages and parts both ways, a task record as an A2A `Task`, and the status
and artifact update events of a task's stream.

The mapping (issue 13): the A2A task id is the mesh task id; `contextId` is the input message's
`conversation_id` (a task submitted outside A2A without one is its own context: its task id);
the reply Message's parts are one artifact, `<task id>-result`; a failed or rejected task's error
is its status message. Parts: `text` ⇄ TextPart, `data` ⇄ DataPart, `raw` ⇄ a FilePart with
`bytes` (an ImagePart when its media type is `image/*`), `url` ⇄ a FilePart with `uri`.
"""

from __future__ import annotations

import time
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
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.struct_pb2 import Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from agentmesh.schemas import envelope
from agentmesh.schemas.envelope import DataPart, FilePart, ImagePart, TextPart, new_id
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


def _struct(metadata: dict[str, Any]) -> Struct | None:
    """`metadata` as a Struct (values JSON cannot hold become their JSON form); None if empty."""
    if not metadata:
        return None
    out = Struct()
    out.update(to_jsonable_python(metadata, fallback=str, bytes_mode="base64"))
    return out


# Mesh → A2A ----------------------------------------------------------------------------------
def part_out(part: Any) -> Part:
    if isinstance(part, TextPart):
        return Part(text=part.text)
    if isinstance(part, DataPart):
        value = Value()
        ParseDict(to_jsonable_python(part.data, fallback=str, bytes_mode="base64"), value)
        return Part(data=value, media_type="application/json")
    out = Part(filename=part.name or "", media_type=part.mime_type or "")
    if part.bytes is not None:
        out.raw = part.bytes
    else:
        out.url = part.uri or ""
    return out


def parts_out(parts: list[Any]) -> list[Part]:
    return [part_out(p) for p in parts]


def message_out(
    message: envelope.Message | envelope.Chunk,
    *,
    role: Role,
    task_id: str = "",
    context_id: str = "",
    message_id: str | None = None,
) -> Message:
    out = Message(
        message_id=message_id or getattr(message, "message_id", None) or new_id(),
        role=role,
        task_id=task_id,
        context_id=context_id,
        parts=parts_out(message.content),
    )
    metadata = _struct({k: v for k, v in message.metadata.items() if k != "sender_key"})
    if metadata is not None:
        out.metadata.CopyFrom(metadata)
    return out


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
    if message is not None:
        out.message.CopyFrom(message)
    return out


def result_artifact(record: TaskRecord) -> Artifact | None:
    """The reply's parts as the task's one artifact (None before there is a reply)."""
    result = record.result
    if result is None:
        return None
    parts = parts_out(result.content) or [Part(text="")]  # an artifact needs a part
    artifact = Artifact(artifact_id=result_id(record.task_id), name="result", parts=parts)
    metadata = _struct({k: v for k, v in result.metadata.items() if k != "sender_key"})
    if metadata is not None:
        artifact.metadata.CopyFrom(metadata)
    return artifact


def task_out(record: TaskRecord) -> Task:
    """The record as an A2A Task: its status, the reply as an artifact, the input as history."""
    context_id = context_of(record)
    task = Task(id=record.task_id, context_id=context_id, status=status_out(record))
    artifact = result_artifact(record)
    if artifact is not None:
        task.artifacts.append(artifact)
    task.history.append(
        message_out(
            record.spec.input, role=Role.ROLE_USER, task_id=record.task_id, context_id=context_id
        )
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


# A2A → mesh ----------------------------------------------------------------------------------
def part_in(part: Part) -> Any:
    """Raises:
    InvalidParamsError: a part with no content.
    """
    kind = part.WhichOneof("content")
    if kind == "text":
        return TextPart(text=part.text)
    if kind == "data":
        return DataPart(data=MessageToDict(part.data))
    name, mime = part.filename or None, part.media_type or None
    cls = ImagePart if (mime or "").startswith("image/") else FilePart
    if kind == "raw":
        return cls(name=name, mime_type=mime, bytes=part.raw)
    if kind == "url":
        return cls(name=name, mime_type=mime, uri=part.url)
    raise InvalidParamsError(message="a part needs text, raw, url or data")


def message_in(message: Message, *, conversation_id: str, metadata: dict[str, Any]) -> Any:
    """The A2A message as the task's input Message (`metadata`: the mesh's own, stamped).

    Raises:
        InvalidParamsError: a part the mesh cannot carry.
    """
    try:
        return envelope.Message(
            message_id=message.message_id or new_id(),
            conversation_id=conversation_id,
            content=[part_in(p) for p in message.parts],
            metadata=metadata,
            timestamp=time.time(),
        )
    except (ValidationError, ParseError, ValueError) as exc:
        raise InvalidParamsError(message=f"a message part the mesh cannot carry: {exc}") from None


def metadata_in(struct: Struct) -> dict[str, Any]:
    return MessageToDict(struct) if struct.fields else {}
