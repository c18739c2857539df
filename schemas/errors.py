"""Error codes and the error body that travels on the wire."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class ErrorCode(StrEnum):
    """Stable machine-readable error codes. The first five are the gateway seed's own."""

    AGENT_NOT_FOUND = "AGENT_NOT_FOUND"  # no instance serves the target right now
    INVALID_MESSAGE = "INVALID_MESSAGE"  # the body could not be decoded or validated
    TIMEOUT = "TIMEOUT"  # no terminal reply before the caller's deadline
    UNAUTHORIZED = "UNAUTHORIZED"  # missing, bad or insufficient credentials
    RATE_LIMIT = "RATE_LIMIT"  # a limit was exceeded; retry later
    INVALID_ID = "INVALID_ID"  # an id cannot become a subject token (wildcards, dots, ...)
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"  # body larger than the configured limit
    UNAVAILABLE = "UNAVAILABLE"  # the instance handling the call went silent or away
    CANCELLED = "CANCELLED"  # the caller cancelled the call
    INTERNAL = "INTERNAL"  # the handler failed; the message says how
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"  # no LLM worker serves the model alias now
    NOT_FOUND = "NOT_FOUND"  # no such route or resource (other than an agent)
    TOOL_NOT_FOUND = "TOOL_NOT_FOUND"  # no such MCP server or tool in the mesh now
    TOOL_ERROR = "TOOL_ERROR"  # the MCP server refused the call (JSON-RPC error, or isError)


class ErrorInfo(BaseModel):
    """The body of an `error` frame."""

    code: ErrorCode
    message: str
    details: dict[str, Any] = Field(default_factory=dict)
