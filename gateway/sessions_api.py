"""The runtime's sessions over HTTP, the Agent Service seed's routes: list, a live feed of
status changes (server-sent events), details with the messages, delete, mark read, revoke and
generate a title.

Sessions live in JetStream (broker/sessions.py), so any replica answers for any session; the
feed relays the core NATS subject `<p>.sessions.events` every status change is published on,
whichever worker or replica made it.

Scopes: `agents:read` to list, read and follow; `send` to change (delete, read, revoke, title).
Errors use the mesh's own format: 400 INVALID_ID (a session id that is not an id), 404
NOT_FOUND, 409 CONFLICT (a title for a session without a user message yet), 503 UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

import nats.errors
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.convertors import StringConvertor, register_url_convertor

from agentmesh.broker.subjects import ID_PATTERN, validate_id
from agentmesh.gateway import openai_api
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, responses
from agentmesh.gateway.openapi import inline_schema
from agentmesh.gateway.runtime_api import publish_abort
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.gateway.streams import PING, relay
from agentmesh.schemas.errors import Conflict, InvalidMessage, NotFound, Unavailable
from agentmesh.schemas.runtime import Message, SessionInfo, SessionStatus

logger = logging.getLogger(__name__)

router = APIRouter(tags=["sessions"], responses=responses(*AUTH_STATUSES))


class _SessionIdSegment(StringConvertor):
    """A session id in a path: any segment but `events`. `/v1/sessions/events` is the feed,
    so another method there is 405 (its `Allow` says GET), not a call on a session "events"."""

    regex = "(?!events$)[^/]+"


register_url_convertor("session_id", _SessionIdSegment())
_SESSION_ID = Path(json_schema_extra={"pattern": ID_PATTERN})  # checked: 400 INVALID_ID
FEED_BUFFER = 1000  # status changes a slow feed client may lag behind before some are dropped
TITLE_INPUT_CHARS = 2000  # of the first user message, sent to the model for a title
TITLE_MAX_CHARS = 80
TITLE_PROMPT = (
    "Write a short title (at most 8 words) for a chat that begins with the user's message "
    "below. Answer with the title only: no quotes, no trailing punctuation."
)


class SessionsResponse(BaseModel):
    sessions: list[SessionInfo]


class SessionDetail(SessionInfo):
    """A session's record and the messages of its completed turns, in order."""

    messages: list[Message] = Field(default_factory=list)


class SessionEvent(BaseModel):
    """One status change, as the feed relays it."""

    session_id: str
    status: SessionStatus
    unread: bool = False
    title: str | None = None
    turns: int = 0


class FeedReady(BaseModel):
    """The feed's first event (`event: ready`): subscribed, every later change is relayed."""

    ready: Literal[True] = True


class DeletedSession(BaseModel):
    session_id: str
    deleted: bool = True


class TitleRequest(BaseModel):
    model_id: str | None = Field(
        None, min_length=1, description="The model to ask (default: the session's)."
    )


class TitleResponse(BaseModel):
    session_id: str
    title: str


_FEED = {
    "description": "Server-sent events: first `event: ready` once subscribed, then one "
    "`data: <SessionEvent JSON>` per status change of any session, and `: ping` comments while "
    "quiet. The stream ends when the replica shuts down: reconnect, to any replica.",
    "content": {
        "text/event-stream": {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "event": {"enum": ["ready"]},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {
                            "anyOf": [inline_schema(SessionEvent), inline_schema(FeedReady)]
                        },
                    },
                },
            }
        }
    },
}


# Routes (the feed first; `{session_id}` never matches "events" either) -----------------------
@router.get("/v1/sessions", response_model=SessionsResponse, responses=responses(400))
async def list_sessions(
    parent_id: str | None = Query(
        None,
        description="A session's sub-agent sessions, instead of the top-level ones.",
        json_schema_extra={"pattern": ID_PATTERN},
    ),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> SessionsResponse:
    """Sessions, most recently changed first."""
    if parent_id is not None:
        validate_id(parent_id, what="session id")
    return SessionsResponse(sessions=await state.sessions.list(parent_id=parent_id))


@router.get("/v1/sessions/events", response_class=StreamingResponse, responses={200: _FEED})
async def session_events(
    request: Request,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> StreamingResponse:
    """Every session's status changes (streaming, success, error, revoked; read; title) as
    server-sent events, live: nothing is replayed, so read `/v1/sessions` after the `ready`
    event for the state the changes apply to."""
    feed = await _subscribe(state)
    return StreamingResponse(
        _sse(feed, request.app.state.draining),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


@router.get(
    "/v1/sessions/{session_id:session_id}",
    response_model=SessionDetail,
    response_model_exclude_none=True,
    responses=responses(400, 404),
)
async def get_session(
    session_id: str = _SESSION_ID,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> SessionDetail:
    info = await _require(state, session_id)
    messages = await state.sessions.history(session_id)
    return SessionDetail(**info.model_dump(), messages=messages)


@router.delete(
    "/v1/sessions/{session_id:session_id}",
    response_model=DeletedSession,
    responses=responses(400, 404),
)
async def delete_session(
    session_id: str = _SESSION_ID,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.SEND)),
) -> DeletedSession:
    """Delete the session, its turns and its sub-agents' sessions; an inference running for it
    is aborted."""
    await _require(state, session_id)
    await publish_abort(state.bus, session_id)
    if not await state.sessions.delete(session_id):
        raise _not_found(session_id)
    return DeletedSession(session_id=session_id)


@router.post(
    "/v1/sessions/{session_id:session_id}/read",
    response_model=SessionInfo,
    response_model_exclude_none=True,
    responses=responses(400, 404),
)
async def mark_read(
    session_id: str = _SESSION_ID,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.SEND)),
) -> SessionInfo:
    """Mark the session read (`unread: false`)."""
    await _require(state, session_id)
    return await state.sessions.change(session_id, unread=False)


@router.post(
    "/v1/sessions/{session_id:session_id}/revoke",
    response_model=SessionInfo,
    response_model_exclude_none=True,
    responses=responses(400, 404),
)
async def revoke_session(
    session_id: str = _SESSION_ID,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.SEND)),
) -> SessionInfo:
    """Revoke the session: its running inference is aborted and it can never be continued
    (an inference that names it is refused with 400). It stays listed until deleted."""
    await _require(state, session_id)
    # Revoked first: the aborted inference's own last status change leaves it revoked.
    info = await state.sessions.change(session_id, status=SessionStatus.REVOKED)
    await publish_abort(state.bus, session_id)
    return info


@router.post(
    "/v1/sessions/{session_id:session_id}/generate-title",
    response_model=TitleResponse,
    responses=responses(*BODY_STATUSES, 404, 409, 502, 504),
)
async def generate_title(
    session_id: str = _SESSION_ID,
    body: TitleRequest | None = Body(None),
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> TitleResponse:
    """Ask the session's model (or `model_id`) for a short title of its first user message,
    and store it (the feed announces it). One non-streaming chat completion, paid from the
    key's token budget like any."""
    info = await _require(state, session_id)
    model = (body.model_id if body is not None else None) or info.model_id
    if not model:
        raise InvalidMessage(
            f"session {session_id!r} names no model: give 'model_id'",
            details={"field": "model_id"},
        )
    first = next(
        (
            m.content
            for m in await state.sessions.history(session_id)
            if m.role == "user" and m.content and m.content.strip()
        ),
        None,
    )
    if first is None:
        raise Conflict(
            f"session {session_id!r} has no user message to title yet",
            details={"session_id": session_id},
        )
    reply = await openai_api.complete(
        state,
        principal,
        {
            "model": model,
            "messages": [
                {"role": "system", "content": TITLE_PROMPT},
                {"role": "user", "content": first[:TITLE_INPUT_CHARS]},
            ],
        },
    )
    title = clean_title(_reply_text(reply)) or clean_title(first) or first.strip()[:TITLE_MAX_CHARS]
    await state.sessions.change(session_id, title=title)
    return TitleResponse(session_id=session_id, title=title)


# Helpers ----------------------------------------------------------------------------------------
async def _require(state: GatewayState, session_id: str) -> SessionInfo:
    info = await state.sessions.get(validate_id(session_id, what="session id"))
    if info is None:
        raise _not_found(session_id)
    return info


def _not_found(session_id: str) -> NotFound:
    return NotFound(f"no session {session_id!r}", details={"session_id": session_id})


def _reply_text(reply: Any) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


_MARKUP = "#*_`\"'“”‘’ "
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)


def clean_title(text: str) -> str:
    """The model's answer as a title: its first non-empty line, without reasoning, markup,
    surrounding quotes or trailing punctuation, at most `TITLE_MAX_CHARS` characters."""
    text = _THINK.sub("", text)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    for _ in range(2):  # markup around "Title: ...", or inside it
        line = line.strip(_MARKUP)
        if line[:6].lower() == "title:":
            line = line[6:]
    line = line.strip(_MARKUP).rstrip(".!?,;: ")
    line = " ".join(line.split())
    if len(line) > TITLE_MAX_CHARS:
        line = line[: TITLE_MAX_CHARS - 1].rstrip() + "…"
    return line


async def _subscribe(state: GatewayState) -> _Feed:
    """A subscription to the session events, live at the server once this returns."""
    feed = _Feed()
    nc = state.bus.nc
    try:
        feed.sub = await nc.subscribe(state.bus.subjects.session_events(), cb=feed.on_message)
        await nc.flush(timeout=5)  # the server has the subscription: no later change is missed
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        await feed.close()
        reason = exc or type(exc).__name__
        raise Unavailable(f"cannot follow the session events: {reason}") from None
    return feed


class _Feed:
    def __init__(self) -> None:
        self.sub: Any = None
        self.queue: asyncio.Queue[SessionEvent] = asyncio.Queue(maxsize=FEED_BUFFER)

    async def on_message(self, msg: Any) -> None:
        try:
            event = SessionEvent.model_validate_json(msg.data)  # anything else is not relayed
        except ValidationError:
            logger.debug("an unreadable session event was dropped")
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            logger.warning("a session feed client lags behind: a session event was dropped")

    async def events(self) -> AsyncIterator[SessionEvent]:
        while True:
            yield await self.queue.get()

    async def close(self) -> None:
        sub, self.sub = self.sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()


async def _sse(feed: _Feed, drain: asyncio.Event) -> AsyncIterator[bytes]:
    try:
        # Subscribed: every change from here on is relayed (named, so `onmessage` skips it).
        yield b"event: ready\ndata: " + FeedReady().model_dump_json().encode() + b"\n\n"
        async for event in relay(feed.events(), drain, ping=PING):
            if event is None:
                yield b": ping\n\n"
            else:
                yield b"data: " + event.model_dump_json().encode() + b"\n\n"
    finally:
        await feed.close()
