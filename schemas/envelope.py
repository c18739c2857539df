"""The message envelope: what one participant sends another, and the chunks of a stream."""

from __future__ import annotations

import base64
import builtins
import itertools
import os
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator


def _reseed() -> None:
    global _ID_BASE, _ID_COUNTER
    _ID_BASE = os.urandom(8).hex()
    _ID_COUNTER = itertools.count(1)


_reseed()
os.register_at_fork(after_in_child=_reseed)  # a forked child must not repeat its parent's ids


def new_id(prefix: str = "msg") -> str:
    """A unique id: 64 random bits per process plus a counter (a syscall per id is measurable)."""
    return f"{prefix}-{_ID_BASE}{next(_ID_COUNTER):x}"


def iso_utc(ts: float) -> str:
    """Unix seconds as the gateway seed's ISO 8601 form, in UTC: 2026-03-04T12:00:00Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# Canonical standard base64 (padded, no stray bits), a form every decoder takes.
BASE64_PATTERN = (
    "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$"
)


def _tagged(schema: dict[str, Any]) -> None:
    # A part is read through the `Part` union, whose discriminator needs the `type` it defaults.
    schema["required"] = ["type", *schema.get("required", [])]


class TextPart(BaseModel):
    model_config = ConfigDict(json_schema_extra=_tagged)

    type: Literal["text"] = "text"
    text: str


class DataPart(BaseModel):
    """Structured data (any msgpack/JSON value)."""

    model_config = ConfigDict(json_schema_extra=_tagged)

    type: Literal["data"] = "data"
    # Defaulted: `encode` drops None values, so a null datum arrives without the key.
    data: Any = None


def _file_schema(schema: dict[str, Any]) -> None:
    _tagged(schema)
    # The one-source rule of `_one_source`, for JSON Schema readers (the gateway's OpenAPI).
    schema["oneOf"] = [
        {"required": [source], "properties": {source: {"type": "string"}}}
        for source in ("uri", "bytes")
    ]


class FilePart(BaseModel):
    """A file by reference (`uri`) or inline (`bytes`); exactly one of the two.

    On msgpack `bytes` is binary; in JSON (the gateway's HTTP and WebSocket APIs) it is base64.
    """

    model_config = ConfigDict(val_json_bytes="base64", json_schema_extra=_file_schema)

    type: Literal["file"] = "file"
    name: str | None = None
    mime_type: str | None = None
    uri: str | None = None
    # `builtins.`: the field's own name hides the builtin type inside the class body.
    bytes: builtins.bytes | None = Field(None, json_schema_extra={"pattern": BASE64_PATTERN})

    @field_serializer("bytes", when_used="json")
    def _standard_base64(self, value: builtins.bytes | None) -> str | None:
        # pydantic's own base64 is the URL-safe alphabet; JSON APIs expect the standard one.
        return None if value is None else base64.b64encode(value).decode("ascii")

    @model_validator(mode="after")
    def _one_source(self) -> FilePart:
        if (self.uri is None) == (self.bytes is None):
            raise ValueError("a file part needs exactly one of 'uri' or 'bytes'")
        return self


class ImagePart(FilePart):
    """An image: a file part whose consumers may render or pass it to a vision model."""

    type: Literal["image"] = "image"  # type: ignore[assignment]


Part = Annotated[TextPart | DataPart | FilePart | ImagePart, Field(discriminator="type")]


def to_parts(value: Any) -> list[Any]:
    """What a handler returns or a caller sends, as content parts.

    str → one text part; a part or list of parts → as is; bytes → an inline file part;
    `None` → no parts; anything else → one data part.
    """
    if value is None:
        return []
    if isinstance(value, str):
        return [TextPart(text=value)]
    if isinstance(value, TextPart | DataPart | FilePart):
        return [value]
    if isinstance(value, bytes):
        return [FilePart(bytes=value, mime_type="application/octet-stream")]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(p, TextPart | DataPart | FilePart) for p in value)
    ):
        return list(value)
    return [DataPart(data=value)]


def merge_text(parts: list[Any]) -> list[Any]:
    """Join runs of text parts, so a streamed reply read whole is one text."""
    out: list[Any] = []
    for part in parts:
        if isinstance(part, TextPart) and out and isinstance(out[-1], TextPart):
            out[-1] = TextPart(text=out[-1].text + part.text)
        else:
            out.append(part)
    return out


class _Content(BaseModel):
    content: list[Part] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def text(self) -> str:
        """All text parts joined; the common case of a plain text message."""
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def data(self) -> Any:
        """The first data part's value, or `None`."""
        for p in self.content:
            if isinstance(p, DataPart):
                return p.data
        return None


class Message(_Content):
    """One message between participants, field names as in the gateway API seed."""

    model_config = ConfigDict(extra="ignore")

    message_id: str = Field(default_factory=new_id)
    conversation_id: str | None = None
    from_agent_id: str | None = None
    to_agent_id: str | None = None
    timestamp: float = Field(default_factory=time.time)  # Unix seconds


class Chunk(_Content):
    """One piece of a streamed reply."""
