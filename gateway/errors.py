"""The gateway's error format, `{"error": {"code", "message"}}`, and HTTP statuses per code."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from broker.errors import Forbidden, MeshError, RateLimited
from schemas.errors import ErrorCode

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
}

_HTTP_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMIT,
}


def error_body(
    code: ErrorCode | str, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": str(code), "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def error_response(exc: MeshError) -> JSONResponse:
    status = 403 if isinstance(exc, Forbidden) else STATUS.get(exc.code, 500)
    headers = {}
    details = exc.details
    if isinstance(exc, RateLimited):
        if math.isfinite(exc.retry_after):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        else:  # can never pass: no Retry-After, and JSON has no infinity
            details = {**details, "retry_after": None}
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc.code, exc.message, details or None), status, headers=headers)


def install(app: FastAPI) -> None:
    """Every error the gateway returns, in one format."""

    @app.exception_handler(MeshError)
    async def mesh_error(request: Request, exc: MeshError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        reasons = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'] if x != 'body') or 'body'}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse(
            error_body(ErrorCode.INVALID_MESSAGE, reasons or "invalid request"), 422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_MESSAGE)
        if exc.status_code == 404:
            message = f"no route {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(code, message), exc.status_code, headers=exc.headers)
