"""The Anthropic-compatible LLM API: `POST /v1/messages`, JSON and server-sent events.

A request is translated to the canonical (OpenAI-shaped) one and sent through the same seam as
`/v1/chat/completions` (`openai_api.complete` / `start_stream`), so any alias works whatever its
provider; the reply is translated back (`agentmesh.schemas.llm`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.errors import AUTH_STATUSES, STATUS, anthropic_error, responses
from agentmesh.gateway.llm_requests import MessagesRequest, check
from agentmesh.gateway.openai_api import STREAM, complete, read_json_object, start_stream
from agentmesh.gateway.openapi import request_body
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.schemas.errors import InvalidMessage, MeshError
from agentmesh.schemas.llm.anthropic_blocks import FormatError
from agentmesh.schemas.llm.anthropic_replies import to_anthropic_message
from agentmesh.schemas.llm.anthropic_requests import from_anthropic_request
from agentmesh.schemas.llm.anthropic_stream import Event, EventsFromChunks

router = APIRouter(tags=["llm"], responses=responses(*AUTH_STATUSES, api="anthropic"))


async def read_messages_request(request: Request) -> dict[str, Any]:
    """The JSON body of a Messages request, checked as Anthropic checks what it requires."""
    body = await read_json_object(request)
    check(MessagesRequest, body)
    return body


@router.post(
    "/v1/messages",
    openapi_extra=request_body(MessagesRequest),
    responses={200: STREAM, **responses(400, 413, 404, 502, 504, api="anthropic")},
)
async def messages(
    request: Request,
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> Any:
    body = await read_messages_request(request)
    try:
        canonical = from_anthropic_request(body)
    except FormatError as exc:
        raise InvalidMessage(str(exc)) from None
    if not canonical.get("stream"):
        reply = await complete(state, principal, canonical)
        return JSONResponse(to_anthropic_message(reply, body["model"]))
    chunks = await start_stream(state, principal, canonical)
    return StreamingResponse(
        _sse(chunks, body["model"]),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


async def _sse(chunks: AsyncIterator[dict[str, Any]], model: str) -> AsyncIterator[bytes]:
    events = EventsFromChunks(model)
    async with aclosing(chunks):  # type: ignore[type-var]
        try:
            async for chunk in chunks:
                for event in events.feed(chunk):
                    yield _event(event)
        except MeshError as exc:
            # Headers are gone: Anthropic's clients read an `error` event as the failure.
            yield _event(("error", anthropic_error(STATUS.get(exc.code, 500), exc.message)))
            return
    for event in events.finish():
        yield _event(event)


def _event(event: Event) -> bytes:
    name, data = event
    payload = json.dumps(data, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()
