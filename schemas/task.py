"""Durable tasks and traces: what is stored in JetStream, field names as in the agent management
seed (`task_id`, `trace_id`, `workspace_id`, `agent_type`, `task_description`, `status`).

A task is a mesh call made durable: a target (an agent id, or an agent type any agent of that
type may take), an input Message, and the record of its attempts, result or error and events.
Its status holds the seed's four values and A2A's task states: `pending` is A2A `submitted`,
`running` is A2A `working`; the others are the same word.

An agent asks for more input by replying with `metadata.task_state = "input-required"`
(`needs_input(...)` builds such a reply; `"rejected"` refuses the task): the task then waits,
not final, with the question as its result, until the caller sends the next message for it
(`TaskStore.resume`), which runs as the task's next turn in the same conversation.
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentmesh.schemas.envelope import Chunk, Message, to_parts
from agentmesh.schemas.errors import ErrorInfo


class TaskStatus(StrEnum):
    PENDING = "pending"  # stored; waiting for an instance, a slot, its start time or a retry
    RUNNING = "running"  # an attempt is running on an instance
    INPUT_REQUIRED = "input-required"  # the agent asked for more input (A2A)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"  # the agent refused the task (A2A)

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def settled(self) -> bool:
        """Final, or waiting for the caller's input: nothing will happen until someone acts."""
        return self in _TERMINAL or self is TaskStatus.INPUT_REQUIRED

    @property
    def a2a_state(self) -> str:
        """The A2A TaskState name of this status."""
        return _A2A.get(self, self.value)


_TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELED, TaskStatus.REJECTED}
)
_A2A = {TaskStatus.PENDING: "submitted", TaskStatus.RUNNING: "working"}

TASK_STATE = "task_state"  # the reply metadata key an agent sets to ask for input or refuse
_REPLY_STATES = {
    TaskStatus.INPUT_REQUIRED.value: TaskStatus.INPUT_REQUIRED,
    TaskStatus.REJECTED.value: TaskStatus.REJECTED,
}


def needs_input(content: Any, **metadata: Any) -> Message:
    """A reply that asks the caller for more input: the task waits as `input-required` and
    the caller's next message for it continues it (`return needs_input("Which city?")`)."""
    metadata[TASK_STATE] = TaskStatus.INPUT_REQUIRED.value
    return Message(content=to_parts(content), metadata=metadata)


def reply_status(reply: Message) -> TaskStatus:
    """The status a reply gives its task: `completed` unless its `task_state` says otherwise."""
    state = reply.metadata.get(TASK_STATE)
    if not isinstance(state, str):
        return TaskStatus.COMPLETED
    return _REPLY_STATES.get(state, TaskStatus.COMPLETED)


class Priority(StrEnum):
    """Three queues: an executor takes `high` before `normal` before `low`."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS_LIMIT = 100
MAX_IDEMPOTENCY_KEY_LEN = 256  # what a client may give
# Stored keys are namespaced by who gave them (`api:<key id>:`, `hook:<name>:<delivery>`).
MAX_STORED_IDEMPOTENCY_KEY_LEN = 320
TRACE_ID_RE = re.compile(r"[0-9a-f]{32}")  # a W3C trace id: the spans of its tasks carry it
TASK_ID_RE = re.compile(r"task-[0-9a-f]{32}")


class TaskSpec(BaseModel):
    """What a submitter asks for. Exactly one target: `agent_id`, `agent_type`, or neither when
    `trace_id` names a trace with an `agent_type` (the seed's `submit_task(trace_id=...)`)."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = None
    agent_type: str | None = None
    input: Message
    trace_id: str | None = None
    priority: Priority = Priority.NORMAL
    deadline: float | None = None  # Unix seconds: not started (or not finished) by then: failed
    not_before: float | None = None  # Unix seconds: earliest start
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=MAX_ATTEMPTS_LIMIT)
    # Retry also when the handler itself failed (INTERNAL and other codes), not only when the
    # instance went away (UNAVAILABLE, TIMEOUT of an attempt).
    retry_on_error: bool = False
    idempotency_key: str | None = Field(default=None, max_length=MAX_STORED_IDEMPOTENCY_KEY_LEN)
    metadata: dict[str, Any] = Field(default_factory=dict)


class Attempt(BaseModel):
    number: int  # 1, 2, ...
    executor_id: str
    instance_id: str | None = None  # the agent instance that acknowledged the call
    agent_id: str | None = None  # the agent called (for an agent_type task, the one chosen)
    started_at: float
    ended_at: float | None = None
    error: ErrorInfo | None = None


class TaskRecord(BaseModel):
    """A task as stored (JetStream KV, one entry per task, updated compare-and-set)."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    status: TaskStatus = TaskStatus.PENDING
    spec: TaskSpec
    workspace_id: str | None = None  # the trace's, copied at submit (for listing)
    attempts: list[Attempt] = Field(default_factory=list)
    result: Message | None = None
    error: ErrorInfo | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    started_at: float | None = None  # the first attempt's start
    finished_at: float | None = None
    next_attempt_at: float | None = None  # a retry waits until then
    cancel_requested: bool = False
    # Earlier turns of a task that asked for input: each input, then the agent's question. The
    # current turn is `spec.input` (and `result`); its attempts are `attempts[turn_start:]`.
    history: list[Message] = Field(default_factory=list)
    turn_start: int = 0

    @property
    def attempt(self) -> int:
        return len(self.attempts)

    @property
    def asked_by(self) -> str | None:
        """The agent that asked for input (ran the previous turn's last attempt): a later turn
        of an `agent_type` task goes to it, which holds the conversation."""
        if self.turn_start == 0 or self.turn_start > len(self.attempts):
            return None
        return self.attempts[self.turn_start - 1].agent_id

    def turn_of(self, message_id: str) -> int | None:
        """The turn (0 for the first) whose input has this message id; None: none has."""
        inputs = [*self.history[::2], self.spec.input]
        return next((n for n, m in enumerate(inputs) if m.message_id == message_id), None)

    @property
    def turn(self) -> int:
        """The current turn (0 for the first; n after n answers)."""
        return len(self.history) // 2

    @property
    def turn_attempts(self) -> int:
        """The attempts of the current turn (each turn has `max_attempts`)."""
        return len(self.attempts) - self.turn_start


class TaskEventKind(StrEnum):
    STATUS = "status"  # the status changed (also each attempt's start and end)
    CHUNK = "chunk"  # a streamed piece of the reply
    PROGRESS = "progress"  # a note the handler reported


class TaskEvent(BaseModel):
    """One entry of a task's ordered event log. `seq` is its stream sequence (set on read): a
    watcher resumes after the last `seq` it saw."""

    model_config = ConfigDict(extra="ignore")

    task_id: str
    kind: TaskEventKind
    timestamp: float = Field(default_factory=time.time)
    seq: int | None = None
    status: TaskStatus | None = None
    attempt: int | None = None
    chunk: Chunk | None = None
    note: str | None = None
    data: Any = None
    error: ErrorInfo | None = None


class Trace(BaseModel):
    """A piece of work that groups tasks (the seed's `create_trace`). Its id is a W3C trace id."""

    model_config = ConfigDict(extra="ignore")

    trace_id: str
    workspace_id: str
    agent_type: str | None = None
    name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)


class TaskInfo(BaseModel):
    """What a handler running a task sees of it (`ctx.task`)."""

    task_id: str
    attempt: int
    trace_id: str | None = None


class TaskRef(BaseModel):
    """What a submitter gets back: the id once the task is stored, and its status then."""

    task_id: str
    status: TaskStatus
    created: bool = True  # False: an earlier submit with the same idempotency key


TaskOutcome = Literal["completed", "failed", "canceled", "rejected"]
