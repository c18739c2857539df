"""Error codes, the error body on the wire, and the mesh's exceptions: the one errors module.

The lowest layer: every other module may import it; it imports nothing of the mesh. Every
exception carries a stable `ErrorCode` and a human message.

    MeshError
    ├── AgentNotFound            AGENT_NOT_FOUND
    ├── ModelNotFound            MODEL_NOT_FOUND
    ├── InvalidMessage           INVALID_MESSAGE
    │   └── InvalidId            INVALID_ID
    ├── PayloadTooLarge          PAYLOAD_TOO_LARGE
    ├── MeshTimeout              TIMEOUT  (also a builtin TimeoutError)
    ├── Unauthorized             UNAUTHORIZED
    │   └── Forbidden            UNAUTHORIZED  (authenticated, not allowed: HTTP 403)
    ├── RateLimited              RATE_LIMIT
    ├── Unavailable              UNAVAILABLE
    │   ├── ConnectionFailed     UNAVAILABLE  (NATS or Redis cannot be reached)
    │   └── NoResponders         UNAVAILABLE  (the bus: nothing subscribes the subject now)
    ├── Cancelled                CANCELLED
    ├── NotFound                 NOT_FOUND  (a task, a trace, a resource other than an agent)
    ├── Conflict                 CONFLICT  (its state forbids it: cancel a finished task)
    └── RemoteError              INTERNAL (or any code a responder sent)

A handler that raises a `MeshError` sends that code to the caller; any other exception becomes
`INTERNAL`. On the caller's side an error frame is raised again as the matching class.
`NoResponders` is the bus's own report and never travels: each caller maps it once, to what it
means for that call (`AgentNotFound`, `ModelNotFound`, `ToolNotFound`, ...).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, ClassVar

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
    REPLAYED = "REPLAYED"  # a signed webhook request came again with another delivery id
    CONFLICT = "CONFLICT"  # the resource's state does not allow it (cancel a finished task)


class ErrorInfo(BaseModel):
    """The body of an `error` frame."""

    code: ErrorCode
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class MeshError(Exception):
    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_info(self) -> ErrorInfo:
        return ErrorInfo(code=self.code, message=self.message, details=self.details)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class AgentNotFound(MeshError):
    code = ErrorCode.AGENT_NOT_FOUND


class ModelNotFound(MeshError):
    code = ErrorCode.MODEL_NOT_FOUND


class ToolNotFound(MeshError):
    code = ErrorCode.TOOL_NOT_FOUND


class ToolError(MeshError):
    """The MCP server answered with an error; `details` carry its JSON-RPC `mcp_code`."""

    code = ErrorCode.TOOL_ERROR


class InvalidMessage(MeshError):
    code = ErrorCode.INVALID_MESSAGE


class InvalidId(InvalidMessage):
    code = ErrorCode.INVALID_ID


class PayloadTooLarge(MeshError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class MeshTimeout(MeshError, TimeoutError):
    code = ErrorCode.TIMEOUT


class Unauthorized(MeshError):
    code = ErrorCode.UNAUTHORIZED


class RateLimited(MeshError):
    code = ErrorCode.RATE_LIMIT

    def __init__(self, message: str, *, retry_after: float = 0.0, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.details.setdefault("retry_after", retry_after)


class Unavailable(MeshError):
    code = ErrorCode.UNAVAILABLE


class ConnectionFailed(Unavailable):
    """NATS or Redis could not be reached; the message names the URL and how to start it."""


class NoResponders(Unavailable):
    """NATS answered "no responders": nothing subscribes the subject right now.

    Raised by the bus at once (not at the deadline); `details["subject"]` names the subject.
    Callers turn it into what it means for them: an agent that is not online, a model no worker
    serves, an unknown tool server.
    """


class Cancelled(MeshError):
    code = ErrorCode.CANCELLED


class NotFound(MeshError):
    """No such task, trace or other stored resource (agents, models, tools have their own)."""

    code = ErrorCode.NOT_FOUND


class Conflict(MeshError):
    code = ErrorCode.CONFLICT


class RemoteError(MeshError):
    """An error a responder sent with a code that has no class of its own (usually INTERNAL)."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.INTERNAL, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.code = code  # type: ignore[misc]


_BY_CODE: dict[ErrorCode, type[MeshError]] = {
    cls.code: cls
    for cls in (
        AgentNotFound,
        ModelNotFound,
        ToolNotFound,
        ToolError,
        InvalidMessage,
        InvalidId,
        PayloadTooLarge,
        MeshTimeout,
        Unauthorized,
        RateLimited,
        Unavailable,
        Cancelled,
        NotFound,
        Conflict,
    )
}


def error_from_info(info: ErrorInfo) -> MeshError:
    """Turn a received error body back into the matching exception."""
    cls = _BY_CODE.get(info.code)
    if cls is None:
        return RemoteError(info.message, code=info.code, details=info.details)
    if cls is RateLimited:
        return RateLimited(
            info.message, retry_after=_retry_after(info.details), details=dict(info.details)
        )
    return cls(info.message, details=info.details)


def _retry_after(details: dict[str, Any]) -> float:
    # A remote's malformed value must not turn a RATE_LIMIT reply into a crash of the caller.
    try:
        value = float(details.get("retry_after", 0))
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


class Forbidden(Unauthorized):
    """Authenticated, but the key lacks the scope or permission (HTTP 403; code UNAUTHORIZED)."""
