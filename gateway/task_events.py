"""A task's events as server-sent events (`GET /v1/tasks/{task_id}/events`): `id` is the event's
stream sequence, so `Last-Event-ID` resumes on any replica; `event` is its kind; `data` the
TaskEvent as JSON. A comment every `PING` seconds keeps a quiet stream open through proxies.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from agentmesh.gateway.errors import ErrorBody, error_body
from agentmesh.gateway.openapi import inline_schema
from agentmesh.gateway.streams import PING, relay
from agentmesh.gateway.task_models import EventData, event_body
from agentmesh.schemas.errors import MeshError
from agentmesh.schemas.task import TaskEvent

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
    try:
        async for event in relay(events, drain, ping=PING):
            if event is None:
                yield b": ping\n\n"
                continue
            data = json.dumps(event_body(event), separators=(",", ":"))
            yield f"id: {event.seq}\nevent: {event.kind.value}\ndata: {data}\n\n".encode()
    except MeshError as exc:
        # Headers are gone: the failure is an `error` event; the client resumes from the last
        # id it saw.
        data = json.dumps(error_body(exc.code, exc.message, exc.details or None))
        yield f"event: error\ndata: {data}\n\n".encode()
