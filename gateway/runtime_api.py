"""Inference over HTTP, the Agent Service seed's routes: `POST /v1/infer` (the assembled
answer as JSON), `POST /v1/infer/stream` (server-sent events) and `POST /v1/infer/abort`.

The gateway runs no inference itself: it hands the request to the runtime workers on
`<p>.runtime.infer` as a streamed bus call (chunk frames keep a long inference alive; the
deadline is the request's `timeout`, else `MAX_WAIT`) and relays the events. `/v1/infer`
assembles them with `InferenceResult.assemble`, which is what a client of the stream gets from
the same events. An abort is a core NATS publish on `<p>.runtime.abort`: whichever worker runs
the session cancels it, whichever replica relays its stream.

Scope `send` for all three. Errors use the mesh's own format. Before the first event they are
plain HTTP statuses (400 INVALID_MESSAGE / INVALID_ID, 404 MODEL_NOT_FOUND / TOOL_NOT_FOUND /
NOT_FOUND, 503 UNAVAILABLE when no runtime worker runs, 504 TIMEOUT); after it, a stream ends
with one `{"type": "error", "error": {...}}` event. A key with a token budget pays for an
inference as for a chat completion (gateway/llm_limits.py): an estimate up front, corrected by
the usage the inference reports.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Literal, TypeVar

import nats.errors
from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from agentmesh.broker.bus import Bus
from agentmesh.broker.subjects import ID_PATTERN, ID_RE, validate_id
from agentmesh.broker.types import Frame
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, responses
from agentmesh.gateway.llm_limits import Meter
from agentmesh.gateway.openapi import inline_schema
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.gateway.streams import PING, relay
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import (
    Forbidden,
    MeshError,
    NoResponders,
    RemoteError,
    Unavailable,
)
from agentmesh.schemas.runtime import (
    DEFAULT_MAX_TOOL_ROUNDS,
    MAX_TOOL_ROUNDS_LIMIT,
    EventType,
    InferenceRequest,
    InferenceResult,
    Message,
    StreamEvent,
    Usage,
)

router = APIRouter(tags=["runtime"], responses=responses(*AUTH_STATUSES))

MAX_WAIT = 3600.0  # seconds the gateway waits for an inference that sets no `timeout`
_MARGIN = 5.0  # seconds beyond the request's own `timeout` (the worker enforces that one)
NO_RUNTIME_WORKER = (
    "no runtime worker is running to serve inferences (start one: `agentmesh worker runtime`)"
)
SESSION_ID_PATTERN = f"^(new|{ID_RE.pattern})$"
# Errors of an inference, before its first event (after it, an `error` event of the stream).
INFER_STATUSES = (*BODY_STATUSES, 404, 499, 502, 504)
_T = TypeVar("_T")


class InferBody(BaseModel):
    """An inference request (the seed's, field for field). `delegation` and
    `parent_session_id`, which runtimes set for their sub-agents, are not taken from HTTP
    callers: like any unknown field they are ignored."""

    model_config = ConfigDict(extra="ignore")

    model_id: str | None = Field(
        None, description="The model (a mesh model alias); optional with `agent_id`."
    )
    tool_ids: list[str] = Field(
        default_factory=list,
        description="Tools the model may call: function/HTTP/skill tool ids, `delegate`, "
        "`bash`, `fetch`, `<server>_<tool>` or `mcp:<server>` for MCP tools.",
    )
    messages: list[Message] = Field(default_factory=list)
    text: str | None = Field(None, description="A shortcut for one last user message.")
    stream: bool = Field(False, description="Ignored: the path says whether to stream.")
    max_tool_rounds: int = Field(DEFAULT_MAX_TOOL_ROUNDS, ge=0, le=MAX_TOOL_ROUNDS_LIMIT)
    session_id: str | None = Field(
        None,
        description='"new" starts a session, a session id continues one; none is stateless.',
        json_schema_extra={"pattern": SESSION_ID_PATTERN},  # checked here: 400 INVALID_ID
    )
    system_prompt: str | None = None
    agent_id: str | None = Field(
        None,
        description="Run a saved agent's definition (model, tools, prompt, limits).",
        json_schema_extra={"pattern": ID_PATTERN},
    )
    temperature: float | None = None
    max_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["low", "medium", "high"] | None = Field(
        None, description="Turn a thinking model's reasoning on."
    )
    timeout: float | None = Field(None, gt=0, description="Seconds for the whole inference.")

    def request(self) -> InferenceRequest:
        """The runtime's request, with the fields the caller set (unset ones stay unset: a
        saved agent's limits apply unless the caller overrode them).

        Raises:
            InvalidId: `session_id` or `agent_id` is not an id.
        """
        if self.session_id is not None and self.session_id != "new":
            validate_id(self.session_id, what="session id")
        if self.agent_id is not None:
            validate_id(self.agent_id, what="agent id")
        return InferenceRequest.model_validate(self.model_dump(exclude_unset=True))


class AbortRequest(BaseModel):
    session_id: str = Field(json_schema_extra={"pattern": ID_PATTERN})


class AbortResponse(BaseModel):
    session_id: str
    aborted: bool = True


# Each event of a stream, as OpenAPI describes a server-sent event: `data` holds one
# StreamEvent as JSON (an `error` event's `error` is the mesh's error object).
_SSE = {
    "description": "Server-sent events: one `data: <StreamEvent JSON>` per event, the last one "
    "`done` (or `error`); `: ping` comments while the model is quiet.",
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": inline_schema(StreamEvent),
                    }
                },
            }
        }
    },
}


# Routes -----------------------------------------------------------------------------------------
@router.post(
    "/v1/infer",
    response_model=InferenceResult,
    response_model_exclude_none=True,
    responses=responses(*INFER_STATUSES),
)
async def infer(
    body: InferBody,
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> InferenceResult:
    """Run one inference to its end and answer the result: the request's messages (templates
    rendered), then every message the inference added; `messages[-1].content` is the answer."""
    events = await start_inference(state, principal, body)
    async with aclosing(events):
        return InferenceResult.assemble([event async for event in events])


@router.post(
    "/v1/infer/stream",
    response_class=StreamingResponse,
    responses={200: _SSE, **responses(*INFER_STATUSES)},
)
async def infer_stream(
    body: InferBody,
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> StreamingResponse:
    """The inference's events as server-sent events, from `start` to `done`. Assembled with
    `InferenceResult.assemble`, they are what `/v1/infer` answers. Leaving the stream cancels
    the inference."""
    events = await start_inference(state, principal, body)
    return StreamingResponse(
        _sse(events),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@router.post(
    "/v1/infer/abort", response_model=AbortResponse, responses=responses(*BODY_STATUSES, 404)
)
async def abort(
    body: AbortRequest,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.SEND)),
) -> AbortResponse:
    """Abort the inference running for a session, on whichever worker runs it (its stream, on
    whichever replica, ends with a CANCELLED error event). A session with nothing running is
    left as it is."""
    session_id = validate_id(body.session_id, what="session id")
    await state.sessions.require(session_id)
    await publish_abort(state.bus, session_id)
    return AbortResponse(session_id=session_id)


# The inference ----------------------------------------------------------------------------------
async def start_inference(
    state: GatewayState, principal: Principal, body: InferBody
) -> AsyncIterator[StreamEvent]:
    """The inference's events, its first one awaited here: a failure before any event raises
    here (a plain HTTP error), later ones from the iterator, which must be closed (`aclosing`)
    or run to its end.

    Raises:
        Unavailable: no runtime worker runs (or NATS is unreachable).
        RateLimited: the caller's token budget cannot cover the estimate.
        MeshError: what the runtime reports (INVALID_MESSAGE, MODEL_NOT_FOUND, ...).
    """
    request = body.request()
    if request.agent_id is not None:  # a saved agent is a mesh agent: to_agents apply
        principal.check_reach(request.agent_id)
    await _check_tools(state, principal, request.tool_ids)
    meter = await Meter.start(state, principal, _estimate(request))
    bus = state.bus
    payload = pack(request.model_dump(mode="json", exclude_none=True, exclude_unset=True))
    frames = bus.stream(bus.subjects.runtime_infer(), payload, timeout=_deadline(request))
    try:
        first = await _next_event(frames)
        if first is None:
            raise RemoteError("the runtime worker ended the inference without any event")
    except BaseException as exc:
        meter.fail()
        await frames.aclose()
        if isinstance(exc, NoResponders):
            raise Unavailable(
                NO_RUNTIME_WORKER, details={"subject": bus.subjects.runtime_infer()}
            ) from None
        raise
    return _metered(meter, first, frames)


async def _check_tools(state: GatewayState, principal: Principal, tool_ids: list[str]) -> None:
    """A key limited to some MCP tools (`tools` patterns) may name only those in `tool_ids`,
    as on `/mcp` and `/v1/tools/call` (a saved agent's own tools are the agent's business)."""
    if principal.tools is None or not tool_ids:
        return
    catalog = await state.tools.catalog()
    for tool in catalog.tools():
        named = tool.federated_name in tool_ids or f"mcp:{tool.server}" in tool_ids
        if named and not principal.may_use_tool(tool.server, tool.name):
            raise Forbidden(
                f"key '{principal.key_id}' may not use the tool {tool.server}/{tool.name}",
                details={"tool": f"{tool.server}/{tool.name}", "key_id": principal.key_id},
            )


async def publish_abort(bus: Bus, session_id: str) -> None:
    """Ask every runtime worker to cancel the inference running for `session_id`.

    Raises:
        Unavailable: NATS cannot take the message.
    """
    data = json.dumps({"session_id": session_id}).encode()
    try:
        await bus.publish(bus.subjects.runtime_abort(), data)
    except (nats.errors.Error, OSError) as exc:
        raise Unavailable(f"cannot publish the abort: {exc or type(exc).__name__}") from None


async def _next_event(frames: AsyncIterator[Frame]) -> StreamEvent | None:
    async for frame in frames:
        if frame.data:  # a chunk: one event; the terminal result frame is empty
            return StreamEvent.model_validate(unpack(frame.data))
    return None


async def _metered(
    meter: Meter, first: StreamEvent, frames: AsyncIterator[Frame]
) -> AsyncIterator[StreamEvent]:
    """`first`, then the rest of the events; the meter is settled from the inference's total
    usage when they end (each item relayed carries the usage so far)."""
    total = Usage()
    seen = False

    def item(event: StreamEvent) -> dict[str, Any]:
        nonlocal seen
        # Every model call counts, a sub-agent's too (the answer's `usage` is the root's own).
        if event.type is EventType.USAGE and event.usage is not None:
            total.add(event.usage)
            seen = True
        return {"event": event, "usage": total.model_dump() if seen else None}

    async def rest() -> AsyncIterator[dict[str, Any]]:
        async with aclosing(frames):  # type: ignore[type-var]
            # Run to the stream's end, past `done`: the worker records the session's turn
            # after its last event, and leaving earlier would cancel that.
            while (event := await _next_event(frames)) is not None:
                yield item(event)

    async with aclosing(meter.relay(item(first), rest())) as items:  # type: ignore[type-var]
        async for relayed in items:
            yield relayed["event"]


def _estimate(request: InferenceRequest) -> dict[str, Any]:
    """What the token budget estimates an inference's cost from: its messages and limit (one
    model call's worth; the reported usage corrects it)."""
    label = request.model_id or (f"agent:{request.agent_id}" if request.agent_id else "runtime")
    messages = [m.model_dump(mode="json", exclude_defaults=True) for m in request.conversation()]
    return {"model": label, "messages": messages, "max_tokens": request.max_tokens}


def _deadline(request: InferenceRequest) -> float:
    return MAX_WAIT if request.timeout is None else request.timeout + _MARGIN


async def _sse(events: AsyncIterator[StreamEvent]) -> AsyncIterator[bytes]:
    try:
        async for event in relay(events, ping=PING):
            if event is None:
                yield b": ping\n\n"
            else:
                yield b"data: " + event.model_dump_json(exclude_none=True).encode() + b"\n\n"
    except MeshError as exc:
        # Headers are gone: the failure is the stream's last event.
        error: dict[str, Any] = {"code": str(exc.code), "message": exc.message}
        if exc.details:
            error["details"] = exc.details
        data = json.dumps({"type": EventType.ERROR.value, "error": error}, default=str)
        yield f"data: {data}\n\n".encode()
