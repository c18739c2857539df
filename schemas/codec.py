"""msgpack encoding of the wire models. Only the transport edge calls these."""

from __future__ import annotations

from typing import Any, TypeVar

import msgpack
from pydantic import BaseModel, ValidationError

from broker.errors import InvalidMessage

M = TypeVar("M", bound=BaseModel)

_packb = msgpack.Packer(use_bin_type=True).pack


def encode(model: BaseModel) -> bytes:
    return _packb(model.model_dump(exclude_none=True))


def pack(value: Any) -> bytes:
    return _packb(value)


def unpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        # Some msgpack errors (FormatError, StackError) carry no text; name them instead.
        raise InvalidMessage(
            f"body is not valid msgpack: {str(exc) or type(exc).__name__}"
        ) from None


def decode(data: bytes, model: type[M]) -> M:
    """Decode and validate; any failure is an `InvalidMessage` with a readable reason."""
    obj = unpack(data)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidMessage(f"invalid {model.__name__}: {reasons}") from None
