"""The gateway's errors: HTTP statuses per code, in each API's own format.

The mesh's own routes answer `{"error": {"code", "message", "details"?}}`; the OpenAI-compatible
routes (`/v1/...`) answer OpenAI's `{"error": {"message", "type", "param", "code"}}` and the
Anthropic-compatible `/v1/messages` answers `{"type": "error", "error": {"type", "message"}}`,
so each API's own SDK raises its own exceptions. `responses(...)` documents a route's error
statuses in the OpenAPI document, with those bodies as models.

Every 503 (`UNAVAILABLE`: Redis unreachable, NATS reconnecting, an instance gone mid-call)
carries `Retry-After`; a Redis error no route handled is such a 503, never a 500.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from agentmesh.schemas.errors import (
    ErrorCode,
    ErrorInfo,
    Forbidden,
    MeshError,
    RateLimited,
    Unavailable,
)

logger = logging.getLogger(__name__)

RETRY_AFTER = 1  # seconds, on every 503: Redis restarts and NATS reconnects take about that

STATUS: dict[ErrorCode, int] = {
    ErrorCode.AGENT_NOT_FOUND: 404,
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.INVALID_ID: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.RATE_LIMIT: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.CANCELLED: 499,
    ErrorCode.INTERNAL: 502,  # the agent (upstream of the gateway) failed
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.TOOL_NOT_FOUND: 404,
    ErrorCode.TOOL_ERROR: 422,  # the MCP server refused the call
    ErrorCode.REPLAYED: 409,  # a webhook signature seen before with another delivery id
    ErrorCode.CONFLICT: 409,  # the resource's state forbids it (cancel a finished task)
}

_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMIT,
}


class ErrorBody(BaseModel):
    """The mesh's error body (`details` only when there are any)."""

    error: ErrorInfo


class OpenAIErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """The error body of the OpenAI-compatible routes."""

    error: OpenAIErrorInfo


class AnthropicErrorInfo(BaseModel):
    type: str
    message: str


class AnthropicErrorBody(BaseModel):
    """The error body of the Anthropic-compatible `/v1/messages`."""

    type: Literal["error"] = "error"
    error: AnthropicErrorInfo


ERROR_BODIES: dict[str, type[BaseModel]] = {
    "mesh": ErrorBody,
    "openai": OpenAIErrorBody,
    "anthropic": AnthropicErrorBody,
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}
_DESCRIPTIONS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("INVALID_MESSAGE or INVALID_ID: a value the mesh cannot carry or route.", {}),
    401: ("UNAUTHORIZED: no credentials, or wrong ones (API key, admin token, signature).", {}),
    403: ("UNAUTHORIZED: the key lacks the scope or permission.", {}),
    404: ("Not found: AGENT_NOT_FOUND, MODEL_NOT_FOUND, TOOL_NOT_FOUND or NOT_FOUND.", {}),
    409: (
        "CONFLICT: the resource's state forbids it (cancel a finished task); or REPLAYED: "
        "a webhook signature seen before with another delivery id.",
        {},
    ),
    413: ("PAYLOAD_TOO_LARGE: the body exceeds the gateway's limit.", {}),
    422: ("INVALID_MESSAGE (the request does not match its schema) or TOOL_ERROR.", {}),
    429: ("RATE_LIMIT: the key's request or token budget is spent.", _RETRY_AFTER),
    499: ("CANCELLED: the call was aborted (an abort, a revoke) before it ended.", {}),
    502: ("INTERNAL: the agent or worker behind the gateway failed.", {}),
    503: ("UNAVAILABLE: NATS, Redis or the serving instance is unreachable.", _RETRY_AFTER),
    504: ("TIMEOUT: no reply before the deadline.", {}),
}
# What any route that takes `require(...)` may answer, and any route that reads a body.
AUTH_STATUSES = (401, 403, 429, 503)
BODY_STATUSES = (400, 413, 422)


def responses(*statuses: int, api: str = "mesh") -> dict[int | str, dict[str, Any]]:
    """FastAPI `responses=` documenting error `statuses` with `api`'s error body model."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, headers = _DESCRIPTIONS[status]
        out[status] = {"model": ERROR_BODIES[api], "description": description}
        if headers:
            out[status]["headers"] = headers
    return out


def error_body(
    code: ErrorCode | str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": str(code), "message": message}
    if details:
        error["details"] = details
    return {"error": error}


_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}
_OPENAI_CODES = {
    ErrorCode.MODEL_NOT_FOUND: "model_not_found",
    ErrorCode.RATE_LIMIT: "rate_limit_exceeded",
    ErrorCode.UNAUTHORIZED: "invalid_api_key",
}
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


# The mesh's own routes under /v1/ (the others there are OpenAI's; /v1/models, writes included).
_MESH_V1 = (
    "/v1/tools",
    "/v1/tasks",
    "/v1/traces",
    "/v1/workspaces",
    "/v1/agents",
    "/v1/prompt-templates",
    "/v1/skills",
    "/v1/mcp-servers",
    "/v1/env",
    "/v1/infer",
    "/v1/sessions",
)


def api_of(path: str) -> str:
    """Which API's error format a path speaks: "mesh", "openai" or "anthropic"."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/v1/") and not path.startswith(_MESH_V1):
        return "openai"
    return "mesh"


def render(
    path: str,
    status: int,
    code: ErrorCode | str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    api = api_of(path)
    if api == "openai":
        body: dict[str, Any] = {
            "error": {
                "message": message,
                "type": _OPENAI_TYPES.get(status, "api_error"),
                "param": None,
                "code": _OPENAI_CODES.get(code, str(code).lower()),  # type: ignore[call-overload]
            }
        }
    elif api == "anthropic":
        body = anthropic_error(status, message)
    else:
        body = error_body(code, message, details)
    return JSONResponse(body, status, headers=headers)


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body, also the data of an `error` event in a broken stream."""
    return {
        "type": "error",
        "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
    }


def error_response(exc: MeshError, path: str = "") -> JSONResponse:
    status = 403 if isinstance(exc, Forbidden) else STATUS.get(exc.code, 500)
    headers = {}
    details = exc.details
    if isinstance(exc, RateLimited):
        if math.isfinite(exc.retry_after):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        else:  # can never pass: no Retry-After, and JSON has no infinity
            details = {**details, "retry_after": None}
    elif status == 503:
        headers["Retry-After"] = str(RETRY_AFTER)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return render(path, status, exc.code, exc.message, details or None, headers)


def reasons(errors: Sequence[Any]) -> str:
    """Pydantic's validation errors in one line: `field.path: why; ...`."""
    text = "; ".join(
        f"{'.'.join(str(x) for x in e['loc'] if x != 'body') or 'body'}: {e['msg']}" for e in errors
    )
    return text or "invalid request"


def redis_unavailable(exc: RedisError) -> Unavailable:
    """A Redis failure as the caller sees it: retry later (the raw error is only logged)."""
    logger.warning("Redis is unreachable: %s", exc)
    return Unavailable("the mesh's state (Redis) is unreachable; retry shortly")


def install(app: FastAPI) -> None:
    """Every error the gateway returns, in one format."""

    @app.exception_handler(MeshError)
    async def mesh_error(request: Request, exc: MeshError) -> JSONResponse:
        return error_response(exc, request.url.path)

    @app.exception_handler(RedisError)
    async def redis_error(request: Request, exc: RedisError) -> JSONResponse:
        return error_response(redis_unavailable(exc), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(request.url.path, 422, ErrorCode.INVALID_MESSAGE, reasons(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_MESSAGE)
        headers = exc.headers
        if exc.status_code == 404:
            message = f"no route {request.url.path}"
        else:
            message = str(exc.detail)
        if exc.status_code == 405:
            # Starlette's Allow names the first route of the path only (GET and POST
            # /gateway/keys are two routes): name every method the path serves.
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        return render(request.url.path, exc.status_code, code, message, headers=headers)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app serves at the request's path.

    Asked of each route with `matches`, the one question every route answers, whether FastAPI
    flattens included routers or keeps them nested.
    """
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    ]
