"""The OpenAI-compatible LLM API: `POST /v1/chat/completions` and `GET /v1/models`.

The body goes to the alias's LLM workers over the bus unchanged (unknown fields pass through);
a stream is relayed as OpenAI's server-sent events ending in `data: [DONE]`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from agentmesh.agents.llm import LLM
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.bodies import read_json
from agentmesh.gateway.errors import AUTH_STATUSES, STATUS, responses
from agentmesh.gateway.llm_limits import Meter
from agentmesh.gateway.llm_requests import ChatRequest, check
from agentmesh.gateway.openapi import request_body
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.schemas.errors import InvalidMessage, MeshError

router = APIRouter(tags=["llm"], responses=responses(*AUTH_STATUSES, api="openai"))
# With `"stream": true`; a stream that fails after its first chunk ends in an `error` event.
STREAM = {"content": {"text/event-stream": {"schema": {"type": "string"}}}}


async def read_json_object(request: Request) -> dict[str, Any]:
    """The request's body, which must be a JSON object (else INVALID_MESSAGE)."""
    try:
        body = await read_json(request)
    except ValueError as exc:
        raise InvalidMessage(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidMessage("the body must be a JSON object")
    return body


async def read_chat_request(request: Request) -> dict[str, Any]:
    """The JSON body of a chat request, checked just enough to route it."""
    body = await read_json_object(request)
    check(ChatRequest, body)
    return body


@router.post(
    "/v1/chat/completions",
    openapi_extra=request_body(ChatRequest),
    responses={
        200: STREAM,
        **responses(400, 413, 404, 502, 504, api="openai"),
    },
)
async def chat_completions(
    request: Request,
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> Any:
    body = await read_chat_request(request)
    if not body.get("stream"):
        return JSONResponse(await complete(state, principal, body))
    chunks = await start_stream(state, principal, body)
    return StreamingResponse(
        _sse(chunks), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


async def complete(
    state: GatewayState, principal: Principal, body: dict[str, Any]
) -> dict[str, Any]:
    """One chat completion from the alias's workers: the seam every LLM API of the gateway
    calls (the caller's token budget and usage are metered here).

    Args:
        body: an OpenAI chat-completions request with `model` and `messages`, already checked
            by `read_chat_request` (or built by another API's adapter); other fields pass through.

    Raises:
        RateLimited: the caller's token budget cannot cover the call's estimate.
        MeshError: what the mesh or the worker reports (MODEL_NOT_FOUND, UNAVAILABLE, ...).
    """
    llm, messages, params = _call(state, body)
    meter = await Meter.start(state, principal, body)
    try:
        reply = await llm.chat(messages, **params)
    except MeshError:
        meter.fail()
        raise
    await meter.finish(reply.get("usage") if isinstance(reply, dict) else None)
    return reply


async def start_stream(
    state: GatewayState, principal: Principal, body: dict[str, Any]
) -> AsyncIterator[dict[str, Any]]:
    """A streamed chat completion's chunks. The first chunk is awaited here, so a failure
    before any token raises here (a plain HTTP error), not from the iterator.

    The iterator must be closed (`aclosing`) or run to its end; a `MeshError` it raises is a
    failure after the first chunk. `body` and the errors raised are as for `complete`.
    """
    llm, messages, params = _call(state, body)
    meter = await Meter.start(state, principal, body)
    try:
        chunks = await llm.chat(messages, stream=True, **params)
        first = await anext(chunks, None)
    except MeshError:
        meter.fail()
        raise
    return meter.relay(first, chunks)


def _call(
    state: GatewayState, body: dict[str, Any]
) -> tuple[LLM, list[dict[str, Any]], dict[str, Any]]:
    params = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
    return LLM(state.bus, body["model"]), body["messages"], params


async def _sse(chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async with aclosing(chunks):  # type: ignore[type-var]
        try:
            async for chunk in chunks:
                yield _event(chunk)
        except MeshError as exc:
            # Headers are gone: OpenAI's clients read an `error` event as the failure.
            yield _event(
                {
                    "error": {
                        "message": exc.message,
                        "type": "api_error",
                        "code": str(exc.code).lower(),
                        "status": STATUS.get(exc.code, 500),
                    }
                }
            )
            return
    yield b"data: [DONE]\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), default=_default).encode() + b"\n\n"


def _default(value: object) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@router.get("/v1/models")
async def list_models(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> dict[str, Any]:
    """The aliases that live LLM workers serve now."""
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": alias, "object": "model", "created": created, "owned_by": "agentmesh"}
            for alias in await state.registry.names("models")
        ],
    }
