"""The HTTP bodies of tasks, traces and workspaces (`/v1/tasks`, `/v1/traces`, `/v1/workspaces`).

Field names are the agent management seed's (`task_id`, `trace_id`, `workspace_id`, `agent_type`,
`task_description`, `status`); a task is its TaskRecord with the spec flattened into it. Times are
Unix seconds, as stored (PROTOCOL §12); the record's own `*_at` times also come as `*_at_iso`,
the gateway's ISO 8601 form (`/gateway/agents`, `/gateway/keys`).
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field

from agentmesh.broker.subjects import ID_PATTERN, MAX_NAME_LEN
from agentmesh.schemas.envelope import Message, Part, TextPart, iso_utc
from agentmesh.schemas.errors import ErrorInfo
from agentmesh.schemas.task import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_ATTEMPTS_LIMIT,
    MAX_IDEMPOTENCY_KEY_LEN,
    Attempt,
    Priority,
    TaskEvent,
    TaskRecord,
    TaskStatus,
    Trace,
)

TASK_ID_PATTERN = "^task-[0-9a-f]{32}$"
TRACE_ID_PATTERN = "^[0-9a-f]{32}$"
_ID = {"pattern": ID_PATTERN}  # documented; the store answers 400 INVALID_ID, not FastAPI's 422


def _iso(ts: float | None) -> str | None:
    return None if ts is None else iso_utc(ts)


# Requests ------------------------------------------------------------------------------------
class TraceRequest(BaseModel):
    """`POST /v1/traces`: the seed's `create_trace(workspace_id=..., agent_type=...)`."""

    model_config = ConfigDict(extra="forbid")

    workspace_id: str = Field(json_schema_extra=_ID)
    agent_type: str | None = Field(
        None,
        json_schema_extra=_ID,
        description="The agent type that takes the trace's tasks that name no agent.",
    )
    name: str | None = Field(None, max_length=MAX_NAME_LEN)
    metadata: dict[str, Any] = Field(default_factory=dict)


class TaskInput(BaseModel):
    """A whole mesh Message as a task's input (PROTOCOL §2); the gateway sets what is absent,
    and `metadata.sender_key` from the caller's key."""

    model_config = ConfigDict(extra="forbid")

    content: list[Part] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    message_id: str | None = Field(None, min_length=1, max_length=MAX_NAME_LEN)
    conversation_id: str | None = None
    from_agent_id: str | None = Field(
        None, json_schema_extra=_ID, description="Checked against the key's agent patterns."
    )
    to_agent_id: str | None = Field(None, description="Ignored: the executor sets it.")
    timestamp: float | None = None


def _given(name: str, kind: str) -> dict[str, Any]:
    return {"required": [name], "properties": {name: {"type": kind}}}  # a null is not given


def _task_rules(schema: dict[str, Any]) -> None:
    # What the store checks, for JSON Schema readers: exactly one input; a target, not two.
    schema["allOf"] = [
        {"oneOf": [_given("task_description", "string"), _given("input", "object")]},
        {"anyOf": [_given(n, "string") for n in ("agent_id", "agent_type", "trace_id")]},
        {"not": {"allOf": [_given("agent_id", "string"), _given("agent_type", "string")]}},
    ]


class TaskRequest(BaseModel):
    """`POST /v1/tasks`. The target: `agent_id` or `agent_type` (not both), or neither with a
    `trace_id` whose trace has an `agent_type` (the seed's `submit_task(trace_id=...,
    task_description=...)`). A deadline in the past is a 400."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_task_rules)

    trace_id: str | None = Field(None, description="An unknown trace is a 404.")
    task_description: str | None = Field(
        None, min_length=1, description="Shorthand for an input of one text part."
    )
    input: TaskInput | None = None
    agent_id: str | None = Field(None, json_schema_extra=_ID)
    agent_type: str | None = Field(None, json_schema_extra=_ID)
    from_agent_id: str | None = Field(
        None,
        json_schema_extra=_ID,
        description="The input's sender, as on /gateway/send: the key's agent patterns must "
        "match it (else 403).",
    )
    priority: Priority = Priority.NORMAL
    deadline: float | None = Field(None, description="Unix seconds; must be in the future.")
    not_before: float | None = Field(None, description="Unix seconds: the earliest start.")
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_ATTEMPTS_LIMIT)
    retry_on_error: bool = Field(
        False, description="Retry on the handler's own errors too, not only on a lost instance."
    )
    idempotency_key: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_LEN,
        description="Or the Idempotency-Key header: a repeat answers 200 with the first task.",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)


class TaskAnswer(BaseModel):
    """`POST /v1/tasks/{task_id}/input`: the caller's next message for a task that asked for
    input (`input-required`), in the task's conversation."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [_given("task_description", "string"), _given("input", "object")]
        },
    )

    task_description: str | None = Field(
        None, min_length=1, description="Shorthand for an input of one text part."
    )
    input: TaskInput | None = Field(
        None, description="Its `message_id` makes a retry safe: the same answer again is a no-op."
    )
    from_agent_id: str | None = Field(
        None, json_schema_extra=_ID, description="As on POST /v1/tasks."
    )


# Answers -------------------------------------------------------------------------------------
class AttemptBody(BaseModel):
    number: int
    executor_id: str
    instance_id: str | None = None
    agent_id: str | None = None
    started_at: float
    ended_at: float | None = None
    error: ErrorInfo | None = None

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptBody:
        return cls(**attempt.model_dump())


class TaskBody(BaseModel):
    """A task: its record, the spec flattened into it."""

    task_id: str
    status: TaskStatus
    trace_id: str | None
    workspace_id: str | None
    agent_id: str | None
    agent_type: str | None
    task_description: str | None = Field(description="The input's text parts joined.")
    input: Message
    priority: Priority
    deadline: float | None
    not_before: float | None
    max_attempts: int
    retry_on_error: bool
    idempotency_key: str | None
    metadata: dict[str, Any]
    attempt: int = Field(description="How many attempts started.")
    attempts: list[AttemptBody]
    result: Message | None = Field(
        description="The reply, once completed; the agent's question while input-required."
    )
    history: list[Message] = Field(
        description="Earlier turns of a task that asked for input: each input, then the "
        "agent's question. `input` is the current turn's."
    )
    result_text: str | None = Field(description="The result's text parts joined.")
    error: ErrorInfo | None
    cancel_requested: bool
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    next_attempt_at: float | None
    created_at_iso: str
    updated_at_iso: str
    started_at_iso: str | None
    finished_at_iso: str | None

    @classmethod
    def of(cls, record: TaskRecord, **extra: Any) -> Self:
        spec = record.spec
        return cls(
            task_id=record.task_id,
            status=record.status,
            trace_id=spec.trace_id,
            workspace_id=record.workspace_id,
            agent_id=spec.agent_id,
            agent_type=spec.agent_type,
            task_description=_text(spec.input),
            input=spec.input,
            priority=spec.priority,
            deadline=spec.deadline,
            not_before=spec.not_before,
            max_attempts=spec.max_attempts,
            retry_on_error=spec.retry_on_error,
            idempotency_key=_given_key(spec.idempotency_key),
            metadata=spec.metadata,
            attempt=record.attempt,
            attempts=[AttemptBody.of(a) for a in record.attempts],
            result=record.result,
            history=record.history,
            result_text=None if record.result is None else _text(record.result),
            error=record.error,
            cancel_requested=record.cancel_requested,
            created_at=record.created_at,
            updated_at=record.updated_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            next_attempt_at=record.next_attempt_at,
            created_at_iso=iso_utc(record.created_at),
            updated_at_iso=iso_utc(record.updated_at),
            started_at_iso=_iso(record.started_at),
            finished_at_iso=_iso(record.finished_at),
            **extra,
        )


def _text(message: Message) -> str | None:
    if not any(isinstance(p, TextPart) for p in message.content):
        return None
    return message.text


class SubmitResponse(TaskBody):
    created: bool = Field(description="False: an earlier submit with the same idempotency key.")


class TasksResponse(BaseModel):
    tasks: list[TaskBody]


class TaskSummary(BaseModel):
    """A trace's task: id, status and timings."""

    task_id: str
    status: TaskStatus
    agent_id: str | None
    agent_type: str | None
    attempt: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    created_at_iso: str
    started_at_iso: str | None
    finished_at_iso: str | None

    @classmethod
    def of(cls, record: TaskRecord) -> TaskSummary:
        return cls(
            task_id=record.task_id,
            status=record.status,
            agent_id=record.spec.agent_id,
            agent_type=record.spec.agent_type,
            attempt=record.attempt,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            created_at_iso=iso_utc(record.created_at),
            started_at_iso=_iso(record.started_at),
            finished_at_iso=_iso(record.finished_at),
        )


class TraceBody(BaseModel):
    trace_id: str
    workspace_id: str
    agent_type: str | None
    name: str | None
    metadata: dict[str, Any]
    created_at: float
    created_at_iso: str

    @classmethod
    def of(cls, trace: Trace, **extra: Any) -> Self:
        return cls(**trace.model_dump(), created_at_iso=iso_utc(trace.created_at), **extra)


class TraceDetail(TraceBody):
    tasks: list[TaskSummary] = Field(description="Its tasks, newest first.")


class TracesResponse(BaseModel):
    traces: list[TraceBody]


class WorkspaceBody(BaseModel):
    workspace_id: str
    trace_count: int


class WorkspaceDetail(WorkspaceBody):
    traces: list[TraceBody] = Field(description="Its traces, newest first.")


class WorkspacesResponse(BaseModel):
    workspaces: list[WorkspaceBody]


class EventData(TaskEvent):
    """The `data` of one SSE event: the TaskEvent (PROTOCOL §12; absent fields left out), plus
    its time in ISO form."""

    timestamp_iso: str


def event_body(event: TaskEvent) -> dict[str, Any]:
    body = event.model_dump(mode="json", exclude_none=True)
    body["timestamp_iso"] = iso_utc(event.timestamp)
    return body


def _given_key(stored: str | None) -> str | None:
    """The idempotency key as its caller gave it: without the `api:<key id>:` namespace."""
    if stored is not None and stored.startswith("api:"):
        return stored.split(":", 2)[-1]
    return stored
