"""Mesh ⇄ A2A messages and parts, both ways: what the gateway's A2A server (gateway/a2a) and the
bridge to outside A2A agents (workers/a2a) both convert. Pure functions over the `a2a-sdk`'s
protobuf types; no I/O.

Parts: `text` ⇄ TextPart, `data` ⇄ DataPart, `raw` ⇄ a FilePart with `bytes` (an ImagePart when
its media type is `image/*`), `url` ⇄ a FilePart with `uri`.
"""

from __future__ import annotations

import time
from typing import Any

from a2a.types.a2a_pb2 import Message, Part, Role
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from google.protobuf.struct_pb2 import Struct, Value
from pydantic import ValidationError
from pydantic_core import to_jsonable_python

from agentmesh.schemas import envelope
from agentmesh.schemas.envelope import DataPart, FilePart, ImagePart, TextPart, new_id


def metadata_struct(metadata: dict[str, Any]) -> Struct | None:
    """`metadata` as a Struct (values JSON cannot hold become their JSON form); None if empty."""
    if not metadata:
        return None
    out = Struct()
    out.update(to_jsonable_python(metadata, fallback=str, bytes_mode="base64"))
    return out


# Mesh → A2A ----------------------------------------------------------------------------------
def part_out(part: Any) -> Part:
    if isinstance(part, TextPart):
        return Part(text=part.text)
    if isinstance(part, DataPart):
        value = Value()
        ParseDict(to_jsonable_python(part.data, fallback=str, bytes_mode="base64"), value)
        return Part(data=value, media_type="application/json")
    out = Part(filename=part.name or "", media_type=part.mime_type or "")
    if part.bytes is not None:
        out.raw = part.bytes
    else:
        out.url = part.uri or ""
    return out


def parts_out(parts: list[Any]) -> list[Part]:
    return [part_out(p) for p in parts]


def message_out(
    message: envelope.Message | envelope.Chunk,
    *,
    role: Role,
    task_id: str = "",
    context_id: str = "",
    message_id: str | None = None,
) -> Message:
    out = Message(
        message_id=message_id or getattr(message, "message_id", None) or new_id(),
        role=role,
        task_id=task_id,
        context_id=context_id,
        parts=parts_out(message.content),
    )
    metadata = metadata_struct({k: v for k, v in message.metadata.items() if k != "sender_key"})
    if metadata is not None:
        out.metadata.CopyFrom(metadata)
    return out


# A2A → mesh ----------------------------------------------------------------------------------
def part_in(part: Part) -> Any:
    """Raises:
    InvalidParamsError: a part with no content.
    """
    kind = part.WhichOneof("content")
    if kind == "text":
        return TextPart(text=part.text)
    if kind == "data":
        return DataPart(data=MessageToDict(part.data))
    name, mime = part.filename or None, part.media_type or None
    cls = ImagePart if (mime or "").startswith("image/") else FilePart
    if kind == "raw":
        return cls(name=name, mime_type=mime, bytes=part.raw)
    if kind == "url":
        return cls(name=name, mime_type=mime, uri=part.url)
    raise InvalidParamsError(message="a part needs text, raw, url or data")


def message_in(message: Message, *, conversation_id: str, metadata: dict[str, Any]) -> Any:
    """The A2A message as the task's input Message (`metadata`: the mesh's own, stamped).

    Raises:
        InvalidParamsError: a part the mesh cannot carry.
    """
    try:
        return envelope.Message(
            message_id=message.message_id or new_id(),
            conversation_id=conversation_id,
            content=[part_in(p) for p in message.parts],
            metadata=metadata,
            timestamp=time.time(),
        )
    except (ValidationError, ParseError, ValueError) as exc:
        raise InvalidParamsError(message=f"a message part the mesh cannot carry: {exc}") from None


def metadata_in(struct: Struct) -> dict[str, Any]:
    return MessageToDict(struct) if struct.fields else {}
