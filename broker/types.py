"""The few core shapes of the mesh, in one place: frame kinds, header names, a handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    """The `Mesh-Kind` header of every frame a responder or caller sends after a request."""

    ACK = "ack"  # first reply: the responder took the call; `Mesh-Instance` names it
    KEEPALIVE = "keepalive"  # still working; sent every keepalive interval
    CHUNK = "chunk"  # one piece of a stream, `Mesh-Seq` 1, 2, 3, ...
    RESULT = "result"  # terminal: success (body is the reply; empty after a stream).
    # A reply frame with no Mesh-Kind header is a result too: the common case costs no headers.
    ERROR = "error"  # terminal: failure (body is an ErrorInfo)
    CANCEL = "cancel"  # caller → responder's control subject: stop the call `Mesh-Call`


# Header names. Values are ASCII strings.
H_KIND = "Mesh-Kind"
H_INSTANCE = "Mesh-Instance"
H_SEQ = "Mesh-Seq"
H_STREAM = "Mesh-Stream"  # "1" on a request: the caller wants chunks as they come
H_CALL = "Mesh-Call"  # on a cancel: the reply subject of the call to stop
# On a call an executor makes for a durable task (the handler reads them as `ctx.task`).
H_TASK_ID = "Mesh-Task-Id"
H_TASK_ATTEMPT = "Mesh-Task-Attempt"
H_TRACE_ID = "Mesh-Trace-Id"
TERMINAL = frozenset({Kind.RESULT, Kind.ERROR})


@dataclass(slots=True)
class Request:
    """What a served handler receives: one call, as raw bytes and headers."""

    subject: str
    data: bytes
    headers: dict[str, str]
    reply: str
    instance_id: str
    stream: bool = False


@dataclass(slots=True)
class Frame:
    """One reply frame as a caller sees it."""

    kind: Kind
    data: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def seq(self) -> int:
        return int(self.headers.get(H_SEQ, 0))


Body = bytes
# A handler returns the reply body, or an async iterator of chunk bodies to stream.
Handler = Callable[[Request], Awaitable[Body | AsyncIterator[Body]]]

CancelledCall = asyncio.CancelledError
