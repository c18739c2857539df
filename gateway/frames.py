"""The JSON frames of `WS /gateway/connect`: parsing what an agent sends, building what it gets.

The seed's `heartbeat`, `send` and `result` frames are kept field for field; everything else is
an addition (see docs/PROTOCOL.md §7). Binary file content travels as base64 in JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentmesh.broker.subjects import validate_id
from agentmesh.broker.types import H_TASK_ATTEMPT, H_TASK_ID, H_TRACE_ID
from agentmesh.schemas import encodable
from agentmesh.schemas.agent import AgentCard
from agentmesh.schemas.envelope import (
    Chunk,
    DataPart,
    FilePart,
    Message,
    Part,
    TextPart,
    iso_utc,
    to_parts,
)
from agentmesh.schemas.errors import (
    ErrorCode,
    ErrorInfo,
    InvalidMessage,
    MeshError,
    RateLimited,
    error_from_info,
)

MAX_CAPABILITIES = 64
MAX_TEXT_FIELD = 256  # agent_name, capability names, message and conversation ids

Ref = Field(default=None, min_length=1, max_length=MAX_TEXT_FIELD)


class FrameError(InvalidMessage):
    """An invalid frame; `message_id` is the frame's own when it had one, to match the error."""

    def __init__(self, message: str, *, message_id: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.message_id = message_id


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore")  # forward compatible: unknown fields are ignored


class HeartbeatFrame(_Frame):
    type: Literal["heartbeat"]
    timestamp: str | float | None = None


class SendFrame(_Frame):
    """Seed frame; `message_id`, `wait` and `timeout` are additions."""

    type: Literal["send"]
    to_agent_id: str
    conversation_id: str | None = Ref
    content: list[Part] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    message_id: str | None = Ref
    wait: bool = True
    timeout: float | None = Field(None, gt=0, le=3600)


class ResultFrame(_Frame):
    """Seed frame; `message_id`, `content` and `code` are additions."""

    type: Literal["result"]
    message_id: str | None = Ref
    conversation_id: str | None = Ref
    success: bool = True
    result: Any = None
    content: list[Part] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    code: ErrorCode | None = None  # with success=false: the error code the caller gets

    def parts(self) -> list[Any]:
        """The answer's content: `content` if given, else `result` (str → text, else data)."""
        return list(self.content) if self.content is not None else to_parts(self.result)

    def failure(self) -> MeshError:
        """What the caller gets for `success: false`: `code` (default INTERNAL), `result` text."""
        if isinstance(self.result, str):
            text = self.result
        else:
            text = "the agent failed" if self.result is None else json.dumps(self.result)
        return error_from_info(ErrorInfo(code=self.code or ErrorCode.INTERNAL, message=text))


class ChunkFrame(_Frame):
    """Addition: one piece of a streamed answer to `message_id`, before its `result`."""

    type: Literal["chunk"]
    message_id: str = Field(min_length=1, max_length=MAX_TEXT_FIELD)
    text: str | None = None
    content: list[Part] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def chunk(self) -> Chunk:
        parts: list[Any] = [TextPart(text=self.text)] if self.text is not None else []
        return Chunk(content=parts + list(self.content or []), metadata=self.metadata)


IncomingFrame = HeartbeatFrame | SendFrame | ResultFrame | ChunkFrame
_MODELS: dict[str, type[IncomingFrame]] = {
    "heartbeat": HeartbeatFrame,
    "send": SendFrame,
    "result": ResultFrame,
    "chunk": ChunkFrame,
}


# Parsing -----------------------------------------------------------------------------------
def parse_frame(text: str) -> IncomingFrame:
    """One text frame from the agent, validated.

    Raises:
        InvalidMessage: not JSON, not an object, an unknown `type`, invalid fields, or a value
            the mesh cannot carry (schemas/encodable.py).
    """
    try:
        obj = encodable.parse(text)
    except ValueError as exc:
        raise InvalidMessage(f"the frame is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise InvalidMessage(f"a frame must be a JSON object, not {type(obj).__name__}")
    mid = obj.get("message_id")
    if not (isinstance(mid, str) and 0 < len(mid) <= MAX_TEXT_FIELD):
        mid = None
    try:
        encodable.screen(text, obj)  # before anything of the frame is echoed or used
    except InvalidMessage as exc:
        mid = mid if mid is not None and encodable.problem(mid) is None else None
        raise FrameError(f"invalid frame: {exc.message}", message_id=mid) from None
    kind = obj.get("type")
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidMessage(
            f"unknown frame type {kind!r}: expected one of {', '.join(_MODELS)}",
            details={"type": kind if isinstance(kind, str | int | float | None) else None},
        )
    try:
        if isinstance(obj.get("content"), list):
            obj["content"] = [_unbase64(p) for p in obj["content"]]
        return model.model_validate(obj)
    except ValidationError as exc:
        raise FrameError(f"invalid {kind} frame: {_reasons(exc)}", message_id=mid) from None
    except InvalidMessage as exc:
        raise FrameError(f"invalid {kind} frame: {exc.message}", message_id=mid) from None


def _unbase64(part: Any) -> Any:
    if isinstance(part, dict) and isinstance(part.get("bytes"), str):
        try:
            return {**part, "bytes": base64.b64decode(part["bytes"], validate=True)}
        except (binascii.Error, ValueError):
            raise InvalidMessage("a file part's 'bytes' must be base64") from None
    return part


def _reasons(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(x) for x in e['loc']) or 'frame'}: {e['msg']}" for e in exc.errors()
    )


def card_from_query(params: Mapping[str, str]) -> AgentCard:
    """The Agent Card from the connect URL's query parameters.

    Raises:
        InvalidId: `agent_id` is missing or cannot be a subject token.
        InvalidMessage: `capabilities` is not a JSON array of strings, or a field is too long.
    """
    agent_id = validate_id(params.get("agent_id"), what="agent_id")
    fields: dict[str, Any] = {"agent_id": agent_id}
    for name in ("agent_name", "agent_type", "description", "version"):
        value = params.get(name)
        if value:
            limit = 4 * MAX_TEXT_FIELD if name == "description" else MAX_TEXT_FIELD
            if len(value) > limit:
                raise InvalidMessage(f"{name} is longer than {limit} characters")
            fields[name] = value
    fields.setdefault("agent_name", agent_id)
    fields["capabilities"] = _capabilities(params.get("capabilities"))
    return AgentCard(**fields)


def _capabilities(raw: str | None) -> list[str]:
    if raw is None or raw == "":
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not (isinstance(value, list) and all(isinstance(c, str) and c for c in value)):
        raise InvalidMessage(
            'capabilities must be a JSON array of non-empty strings, e.g. ["search","analyze"]',
            details={"field": "capabilities"},
        )
    if len(value) > MAX_CAPABILITIES or any(len(c) > MAX_TEXT_FIELD for c in value):
        raise InvalidMessage(
            f"at most {MAX_CAPABILITIES} capabilities of at most {MAX_TEXT_FIELD} characters",
            details={"field": "capabilities"},
        )
    return value


# Building ----------------------------------------------------------------------------------
def parts_json(parts: list[Any]) -> list[dict[str, Any]]:
    """Content parts as JSON values (file bytes as base64)."""
    out = []
    for part in parts:
        body = part.model_dump(exclude_none=True)
        if isinstance(part, FilePart) and part.bytes is not None:
            body["bytes"] = base64.b64encode(part.bytes).decode("ascii")
        out.append(body)
    return out


def reply_value(message: Message) -> Any:
    """The seed's `result` value of a reply: its text, else its first data value."""
    if any(isinstance(p, TextPart) for p in message.content):
        return message.text
    return message.data if any(isinstance(p, DataPart) for p in message.content) else None


def connected(
    *, agent_id: str, instance_id: str, interval: float, timeout: float, max_bytes: int
) -> dict[str, Any]:
    return {
        "type": "connected",
        "agent_id": agent_id,
        "instance_id": instance_id,
        "heartbeat_interval": interval,
        "heartbeat_timeout": timeout,
        "max_frame_bytes": max_bytes,
    }


def task_of(headers: dict[str, str]) -> dict[str, Any] | None:
    """The durable task a call runs (`task_id`, `attempt`, `trace_id`), from its headers."""
    task_id = headers.get(H_TASK_ID)
    if not task_id:
        return None
    attempt = headers.get(H_TASK_ATTEMPT, "1")
    return {
        "task_id": task_id,
        "attempt": int(attempt) if attempt.isdigit() else 1,
        "trace_id": headers.get(H_TRACE_ID),
    }


def message(msg: Message, *, stream: bool, task: dict[str, Any] | None = None) -> dict[str, Any]:
    """A message for the connected agent, from anywhere in the mesh (with `task` when it is the
    call of a durable task)."""
    frame = {
        "type": "message",
        "message_id": msg.message_id,
        "from_agent_id": msg.from_agent_id,
        "to_agent_id": msg.to_agent_id,
        "conversation_id": msg.conversation_id,
        "content": parts_json(msg.content),
        "metadata": msg.metadata,
        "timestamp": iso_utc(msg.timestamp),
        "stream": stream,
    }
    if task is not None:
        frame["task"] = task
    return frame


def result(reply: Message, *, message_id: str) -> dict[str, Any]:
    """The answer to the agent's own `send` (`message_id` is that of the message it sent)."""
    return {
        "type": "result",
        "message_id": message_id,
        "conversation_id": reply.conversation_id,
        "success": True,
        "result": reply_value(reply),
        "content": parts_json(reply.content),
        "metadata": reply.metadata,
        "from_agent_id": reply.from_agent_id,
    }


def sent(message_id: str, timestamp: float, *, task_id: str) -> dict[str, Any]:
    """A `send` with `wait: false` is stored as task `task_id`, which an executor delivers."""
    return {
        "type": "sent",
        "message_id": message_id,
        "status": "delivered",
        "timestamp": iso_utc(timestamp),
        "task_id": task_id,
    }


def cancel(message_id: str, reason: str) -> dict[str, Any]:
    """The caller of `message_id` gave up (cancelled or timed out): stop working on it."""
    return {"type": "cancel", "message_id": message_id, "reason": reason}


def heartbeat_ack(timestamp: float) -> dict[str, Any]:
    return {"type": "heartbeat_ack", "timestamp": iso_utc(timestamp)}


def error(exc: MeshError, *, message_id: str | None = None) -> dict[str, Any]:
    if message_id is None and isinstance(exc, FrameError):
        message_id = exc.message_id
    frame: dict[str, Any] = {"type": "error", "code": str(exc.code), "message": exc.message}
    if message_id is not None:
        frame["message_id"] = message_id
    details = dict(exc.details)
    if isinstance(exc, RateLimited) and not math.isfinite(exc.retry_after):
        details["retry_after"] = None  # can never pass; JSON has no infinity
    if details:
        frame["details"] = details
    return frame


def _json_default(value: object) -> Any:
    if isinstance(value, bytes):  # msgpack bin inside data or metadata
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=_json_default)
