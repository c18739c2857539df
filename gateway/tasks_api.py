"""Durable tasks and traces over HTTP, on every replica: `/v1/traces`, `/v1/workspaces`,
`/v1/tasks` (PROTOCOL §12). The routes are thin: the replica's TaskStore (JetStream) is the
truth, so any replica answers for any task, and an event stream resumes on any of them.

Scopes: `send` to create traces, submit and cancel (a task is a durable send); `agents:read` to
read. Errors are the mesh's own format: NOT_FOUND 404, CONFLICT 409 (cancel a finished task),
INVALID_ID / INVALID_MESSAGE 400, PAYLOAD_TOO_LARGE 413, UNAVAILABLE 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agentmesh.broker.subjects import ID_PATTERN, validate_id
from agentmesh.broker.tasks import validate_task_id
from agentmesh.gateway import task_events
from agentmesh.gateway.auth import Principal, Scope, require, stamp_sender
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, responses
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.gateway.task_models import (
    TASK_ID_PATTERN,
    TRACE_ID_PATTERN,
    SubmitResponse,
    TaskAnswer,
    TaskBody,
    TaskRequest,
    TasksResponse,
    TaskSummary,
    TraceBody,
    TraceDetail,
    TraceRequest,
    TracesResponse,
    WorkspaceBody,
    WorkspaceDetail,
    WorkspacesResponse,
)
from agentmesh.schemas.envelope import Message, TextPart, new_id
from agentmesh.schemas.errors import InvalidId, InvalidMessage, NotFound, Unavailable
from agentmesh.schemas.task import (
    MAX_IDEMPOTENCY_KEY_LEN,
    TRACE_ID_RE,
    TaskRecord,
    TaskSpec,
    TaskStatus,
)

router = APIRouter(tags=["tasks"], responses=responses(*AUTH_STATUSES))

MAX_WAIT = 300.0  # seconds one `wait` may hold a request; clients ask again
_TASK_ID = Path(json_schema_extra={"pattern": TASK_ID_PATTERN})


def draining(request: Request) -> asyncio.Event:
    """Set when the replica begins to stop: long answers (waits, event streams) end then, so
    shutdown does not wait for them; a client asks again, on any replica."""
    return request.app.state.draining


# Traces and workspaces -----------------------------------------------------------------------
@router.post(
    "/v1/traces",
    status_code=201,
    response_model=TraceBody,
    responses=responses(*BODY_STATUSES),
)
async def create_trace(
    body: TraceRequest,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.SEND)),
) -> TraceBody:
    """A new trace in a workspace (the seed's `create_trace`); its id is a W3C trace id."""
    trace = await state.tasks.create_trace(
        body.workspace_id, agent_type=body.agent_type, name=body.name, metadata=body.metadata
    )
    return TraceBody.of(trace)


@router.get("/v1/traces", response_model=TracesResponse, responses=responses(400))
async def list_traces(
    workspace_id: str | None = Query(None, json_schema_extra={"pattern": ID_PATTERN}),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> TracesResponse:
    """Traces, newest first; of one workspace if given."""
    traces = await state.tasks.list_traces(workspace_id)
    return TracesResponse(traces=[TraceBody.of(t) for t in traces])


@router.get("/v1/traces/{trace_id}", response_model=TraceDetail, responses=responses(404))
async def get_trace(
    trace_id: str = Path(json_schema_extra={"pattern": TRACE_ID_PATTERN}),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> TraceDetail:
    """The trace and its tasks (id, status, timings)."""
    trace = await state.tasks.get_trace(trace_id)
    if trace is None:
        raise NotFound(f"no trace {trace_id!r}", details={"trace_id": trace_id[:80]})
    tasks = await state.tasks.list(trace_id=trace_id, limit=10_000)
    return TraceDetail.of(trace, tasks=[TaskSummary.of(t) for t in tasks])


@router.get("/v1/workspaces", response_model=WorkspacesResponse)
async def list_workspaces(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> WorkspacesResponse:
    """Every workspace that has traces, with how many."""
    counts = await state.tasks.workspaces()
    return WorkspacesResponse(
        workspaces=[WorkspaceBody(workspace_id=w, trace_count=n) for w, n in counts.items()]
    )


@router.get(
    "/v1/workspaces/{workspace_id}", response_model=WorkspaceDetail, responses=responses(400, 404)
)
async def get_workspace(
    workspace_id: str = Path(json_schema_extra={"pattern": ID_PATTERN}),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> WorkspaceDetail:
    """A workspace and its traces; a workspace exists once it has a trace."""
    traces = await state.tasks.list_traces(workspace_id)
    if not traces:
        raise NotFound(f"no workspace {workspace_id!r}", details={"workspace_id": workspace_id})
    return WorkspaceDetail(
        workspace_id=workspace_id,
        trace_count=len(traces),
        traces=[TraceBody.of(t) for t in traces],
    )


# Tasks -----------------------------------------------------------------------------------------
@router.post(
    "/v1/tasks",
    status_code=201,
    response_model=SubmitResponse,
    responses={
        200: {
            "model": SubmitResponse,
            "description": "An earlier submit with the same idempotency key: that task.",
        },
        **responses(*BODY_STATUSES, 404),
    },
)
async def submit_task(
    body: TaskRequest,
    # Typed without None: the document then says "a string if present", not "or null".
    idempotency_key: str = Header(  # type: ignore[assignment]
        None, alias="Idempotency-Key", min_length=1, max_length=MAX_IDEMPOTENCY_KEY_LEN
    ),
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> JSONResponse:
    """Store a task for an agent; answered once JetStream has it (201), or with the earlier task
    of the same idempotency key (200). An executor runs it; watch it with `/wait` or `/events`.

    As on /gateway/send, the input's `from_agent_id` must match the key's agent patterns and its
    `metadata.sender_key` is the key's id, whatever the body said."""
    spec = TaskSpec(
        agent_id=body.agent_id,
        agent_type=body.agent_type,
        input=_input(body, principal, to_agent_id=body.agent_id),
        trace_id=body.trace_id,
        priority=body.priority,
        deadline=body.deadline,
        not_before=body.not_before,
        max_attempts=body.max_attempts,
        retry_on_error=body.retry_on_error,
        idempotency_key=_idempotency_key(body.idempotency_key, idempotency_key, principal),
        metadata=stamp_sender(body.metadata, principal),
    )
    principal.check_reach(spec.agent_id)  # to_agents: a limited key must name an allowed agent
    ref = await state.tasks.submit(spec)
    record = await state.tasks.get(ref.task_id) or TaskRecord(
        task_id=ref.task_id, status=ref.status, spec=spec
    )
    answer = SubmitResponse.of(record, created=ref.created)
    return JSONResponse(answer.model_dump(mode="json"), status_code=201 if ref.created else 200)


def _input(
    body: TaskRequest | TaskAnswer, principal: Principal, *, to_agent_id: str | None
) -> Message:
    if (body.task_description is None) == (body.input is None):
        raise InvalidMessage(
            "give task_description or input, exactly one", details={"field": "input"}
        )
    given = body.input
    sender = body.from_agent_id
    if given is not None and given.from_agent_id is not None:
        if sender is not None and sender != given.from_agent_id:
            raise InvalidMessage(
                "from_agent_id and input.from_agent_id differ", details={"field": "from_agent_id"}
            )
        sender = given.from_agent_id
    if sender is not None:
        validate_id(sender, what="from_agent_id")
        principal.check_act_as(sender, what="send as")
    if given is None:
        content: list[Any] = [TextPart(text=body.task_description or "")]
        return Message(
            from_agent_id=sender,
            to_agent_id=to_agent_id,
            content=content,
            metadata=stamp_sender({}, principal),
        )
    return Message(
        message_id=given.message_id or new_id(),
        conversation_id=given.conversation_id,
        from_agent_id=sender,
        to_agent_id=to_agent_id,
        content=given.content,
        metadata=stamp_sender(given.metadata, principal),
        timestamp=given.timestamp if given.timestamp is not None else time.time(),
    )


def _idempotency_key(
    in_body: str | None, in_header: str | None, principal: Principal
) -> str | None:
    """The stored key, namespaced by the API key that gave it (`api:<key id>:<key>`): one
    caller's keys can never meet another's, nor a webhook's (`hook:<name>:<delivery id>`)."""
    if in_body is not None and in_header is not None and in_body != in_header:
        raise InvalidMessage(
            "the Idempotency-Key header and the body's idempotency_key differ",
            details={"field": "idempotency_key"},
        )
    given = in_body if in_body is not None else in_header
    return None if given is None else f"api:{principal.key_id or 'anonymous'}:{given}"


@router.get("/v1/tasks", response_model=TasksResponse, responses=responses(400))
async def list_tasks(
    trace_id: str | None = Query(None, json_schema_extra={"pattern": TRACE_ID_PATTERN}),
    agent_id: str | None = Query(None, json_schema_extra={"pattern": ID_PATTERN}),
    agent_type: str | None = Query(None, json_schema_extra={"pattern": ID_PATTERN}),
    status: TaskStatus | None = None,
    workspace_id: str | None = Query(None, json_schema_extra={"pattern": ID_PATTERN}),
    limit: int = Query(100, ge=1, le=1000),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> TasksResponse:
    """Tasks, newest first, filtered."""
    if trace_id is not None and not TRACE_ID_RE.fullmatch(trace_id):
        raise InvalidId(
            f"trace_id {trace_id[:80]!r} is not a trace id (32 hex digits)",
            details={"field": "trace_id"},
        )
    for value, what in ((agent_id, "agent id"), (agent_type, "agent type")):
        if value is not None:
            validate_id(value, what=what)
    if workspace_id is not None:
        validate_id(workspace_id, what="workspace id")
    records = await state.tasks.list(
        trace_id=trace_id,
        agent_id=agent_id,
        agent_type=agent_type,
        status=status,
        workspace_id=workspace_id,
        limit=limit,
    )
    return TasksResponse(tasks=[TaskBody.of(r) for r in records])


@router.get("/v1/tasks/{task_id}", response_model=TaskBody, responses=responses(404))
async def get_task(
    task_id: str = _TASK_ID,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> TaskBody:
    return TaskBody.of(await _record(state, task_id))


async def _record(state: GatewayState, task_id: str) -> TaskRecord:
    record = await state.tasks.get(validate_task_id(task_id))
    if record is None:
        raise NotFound(f"no task {task_id!r}", details={"task_id": task_id})
    return record


@router.post("/v1/tasks/{task_id}/cancel", response_model=TaskBody, responses=responses(404, 409))
async def cancel_task(
    task_id: str = _TASK_ID,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.SEND)),
) -> TaskBody:
    """A pending task becomes `canceled` (it never runs); a running one is cancelled at its
    instance (`cancel_requested` until its executor records `canceled`). Finished: 409."""
    return TaskBody.of(await state.tasks.cancel(task_id))


@router.post(
    "/v1/tasks/{task_id}/input",
    response_model=TaskBody,
    responses=responses(*BODY_STATUSES, 404, 409),
)
async def answer_task(
    body: TaskAnswer,
    task_id: str = _TASK_ID,
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> TaskBody:
    """The caller's answer to a task that asked for input: the task runs its next turn, in its
    conversation (`pending` again; its earlier turns in `history`). A task not waiting for input
    is a 409, unless this is the same answer again (its `input.message_id`)."""
    record = await _record(state, task_id)
    agent_id = record.spec.agent_id or record.asked_by
    principal.check_reach(agent_id)  # to_agents, as when it was submitted
    answer = _input(body, principal, to_agent_id=agent_id)
    answer.conversation_id = record.spec.input.conversation_id
    return TaskBody.of(await state.tasks.resume(task_id, answer))


@router.get("/v1/tasks/{task_id}/wait", response_model=TaskBody, responses=responses(404))
async def wait_task(
    request: Request,
    task_id: str = _TASK_ID,
    timeout: float = Query(
        30.0, ge=0, le=MAX_WAIT, description=f"Seconds to wait, at most {MAX_WAIT:.0f}."
    ),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> TaskBody:
    """The task once it has finished or asks for input (`input-required`), or as it is at the
    timeout (check `status`)."""
    record = await _record(state, task_id)
    if record.status.settled or timeout <= 0:
        return TaskBody.of(record)
    waiting = asyncio.ensure_future(state.tasks.wait(task_id, timeout=timeout))
    drain = asyncio.ensure_future(draining(request).wait())
    try:
        await asyncio.wait({waiting, drain}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        drain.cancel()
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
    if waiting.done() and not waiting.cancelled():
        try:
            return TaskBody.of(waiting.result())
        except Unavailable:
            pass  # unreachable all along (or the timeout was too short to read): look once more
    return TaskBody.of(await _record(state, task_id))


@router.get(
    "/v1/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses={200: task_events.SSE_RESPONSE, **responses(404)},
)
async def events_of_task(
    request: Request,
    task_id: str = _TASK_ID,
    after: int = Query(0, ge=0, description="Replay the events after this sequence."),
    follow: bool = Query(True, description="Keep going until the final status event."),
    last_event_id: int = Header(  # type: ignore[assignment]
        None, alias="Last-Event-ID", ge=0, description="Overrides `after` (an SSE reconnect)."
    ),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> StreamingResponse:
    """The task's events as server-sent events: `id` is the event's stream sequence, `event` its
    kind (`status`, `chunk`, `progress`), `data` the TaskEvent as JSON. The stream ends after the
    final status event (or, with `follow=false`, after the last event there is)."""
    await _record(state, task_id)  # a 404 before any event
    start = last_event_id if last_event_id is not None else after
    events = state.tasks.events(task_id, after=start, follow=follow)
    return StreamingResponse(
        task_events.sse(events, draining(request)),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
