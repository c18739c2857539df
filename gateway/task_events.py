"""A task's events as server-sent events (`GET /v1/tasks/{task_id}/events`): `id` is the event's
stream sequence, so `Last-Event-ID` resumes on any replica; `event` is its kind; `data` the
TaskEvent as JSON. A comment every `PING` seconds keeps a quiet stream open through proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from agentmesh.gateway.errors import ErrorBody, error_body
from agentmesh.gateway.openapi import inline_schema
from agentmesh.gateway.task_models import EventData, event_body
from agentmesh.schemas.errors import MeshError
from agentmesh.schemas.task import TaskEvent

PING = 15.0  # seconds of quiet before a comment
# Each event, as OpenAPI describes a server-sent event: `data` holds JSON (an `error` event's is
# the mesh's error body).
SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"enum": ["status", "chunk", "progress", "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [inline_schema(EventData), inline_schema(ErrorBody)]},
        },
    },
}
SSE_RESPONSE = {
    "description": "Server-sent events.",
    "content": {"text/event-stream": {"schema": SSE_EVENT}},
}


async def sse(events: AsyncIterator[TaskEvent], drain: asyncio.Event) -> AsyncIterator[bytes]:
    """The body of the stream: `events` until they end, fail or `drain` is set."""
    async for event in _with_pings(events, drain):
        if isinstance(event, MeshError):
            # Headers are gone: the failure is an `error` event; the client resumes from the
            # last id it saw.
            data = json.dumps(error_body(event.code, event.message, event.details or None))
            yield f"event: error\ndata: {data}\n\n".encode()
            return
        if event is None:
            yield b": ping\n\n"
            continue
        data = json.dumps(event_body(event), separators=(",", ":"))
        yield f"id: {event.seq}\nevent: {event.kind.value}\ndata: {data}\n\n".encode()


async def _with_pings(
    events: AsyncIterator[TaskEvent], drain: asyncio.Event
) -> AsyncIterator[TaskEvent | MeshError | None]:
    """`events`, None after each `PING` seconds of quiet, the MeshError that ended them; stops
    when the replica drains. Each step runs as a task, so a quiet wait is never cancelled."""
    stop = asyncio.ensure_future(drain.wait())
    step: asyncio.Future[Any] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(events, None))
            while not step.done():
                await asyncio.wait({step, stop}, timeout=PING, return_when=asyncio.FIRST_COMPLETED)
                if stop.done():
                    return
                if not step.done():
                    yield None
            try:
                event = step.result()
            except MeshError as exc:
                yield exc
                return
            if event is None:
                return
            yield event
    finally:
        stop.cancel()
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, MeshError):
                await step
        with contextlib.suppress(MeshError, RuntimeError):
            await events.aclose()  # type: ignore[attr-defined]
