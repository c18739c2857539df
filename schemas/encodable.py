"""What the mesh can carry: JSON from outside, checked before it becomes mesh data.

Valid JSON may still be unencodable: msgpack (the bus's encoding) cannot carry a lone UTF-16
surrogate (`"a\\ud800"` is valid JSON but no UTF-8), nor an integer outside -2**63 .. 2**64-1,
and deep nesting exhausts the stack of every walker on the way (JSON, pydantic, msgpack). The
edges (HTTP bodies, WebSocket frames) call `loads`, or `screen`; each refusal is an
`InvalidMessage` naming the field. The codec calls `problem` to explain a value it could not pack.

The common body pays a few scans of its raw text at C speed; only a body that could hold such a
value is walked (a surrogate escape or 19 digits in a row: every value; more brackets than
`MAX_DEPTH`: its containers, level by level).
"""

from __future__ import annotations

import json
import re
from itertools import chain, compress
from typing import Any

from agentmesh.schemas.errors import InvalidMessage

MAX_DEPTH = 100  # nested objects and arrays in one JSON body or frame, the top level counted
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1

# A surrogate escape (`\\ud800`..`\\udfff`; valid pairs match too, and cost a walk, never a
# refusal), a raw surrogate (JSON of bytes is decoded with surrogatepass), 19 digits in a row (the
# shortest integer beyond 64 bits, or digits in a string: a walk again).
_ESCAPE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]")
_RAW_BYTES = re.compile(rb"\xed[\xa0-\xbf]")
_ESCAPE_TEXT = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_FOLD_BYTES = bytes.maketrans(b"123456789{", b"000000000[")
_FOLD_TEXT = str.maketrans("123456789{", "000000000[")
UNPARSED: Any = object()  # what `screen` returns when it did not need to parse
_CONTAINERS = frozenset((dict, list))


def parse(data: bytes | str) -> Any:
    """`json.loads`, with nesting too deep for the parser an `InvalidMessage` (not a crash).

    Raises:
        ValueError: not JSON (each edge words that itself).
        InvalidMessage: nested deeper than the parser's stack allows.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise InvalidMessage(f"the JSON is nested deeper than {MAX_DEPTH} levels") from None


def loads(data: bytes | str) -> Any:
    """A JSON body from outside the mesh, parsed and screened.

    Raises:
        ValueError: not JSON.
        InvalidMessage: a value the mesh cannot carry, naming the field.
    """
    value = parse(data)
    screen(data, value)
    return value


def screen(data: bytes | str, value: Any = UNPARSED) -> Any:
    """`check` the `value` parsed from `data`, walking it only if the raw text says it may fail.

    Without `value`, `data` is parsed only if it must be walked. Returns the parsed value, or
    `UNPARSED` if it was not given and not needed.

    Raises:
        InvalidMessage: as `check`.
        ValueError: `data` had to be parsed and is not JSON.
    """
    unencodable, brackets = _scan(data)
    if not unencodable and brackets <= MAX_DEPTH:
        return value
    if value is UNPARSED:
        value = parse(data)
    if unencodable or _deeper_than_max(value):
        check(value)
    return value


def check(value: Any) -> None:
    """Refuse a parsed value that msgpack cannot carry or that nests deeper than `MAX_DEPTH`.

    Raises:
        InvalidMessage: the message names the field (`content.0.text`) and the reason.
    """
    found = problem(value)
    if found is not None:
        raise InvalidMessage(found)


def problem(value: Any) -> str | None:
    """Why `value` cannot be carried, naming the field; `None` if it can."""
    found = _find(value, 1)
    if found is None:
        return None
    path, reason = found
    where = ".".join(_segment(p) for p in reversed(path)) or "the body"
    return f"{where}: {reason}"


def _find(value: Any, depth: int) -> tuple[list[Any], str] | None:
    # Recursion is bounded by MAX_DEPTH; the path is built only on the way out of a refusal.
    if isinstance(value, str):
        return ([], _surrogate(value)) if _has_surrogate(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        if MIN_INT <= value <= MAX_INT:
            return None
        return [], f"the integer is outside {MIN_INT} .. {MAX_INT} (64 bits); send it as a string"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    if depth > MAX_DEPTH:
        return [], f"nested deeper than {MAX_DEPTH} levels"
    for key, item in items:
        if isinstance(key, str) and _has_surrogate(key):
            return [key], "the key " + _surrogate(key)
        if isinstance(item, str | int | dict | list | tuple):
            found = _find(item, depth + 1)
            if found is not None:
                found[0].append(key)
                return found
    return None


def _scan(data: bytes | str) -> tuple[bool, int]:
    """(whether `data` may hold an unencodable value, an upper bound of its nesting depth)."""
    # One translate folds digits to 0 (for the run of 19) and `{` to `[` (to count openers once).
    if isinstance(data, str):
        if not data.isascii() and _SURROGATE.search(data):
            return True, 0
        escape = "\\" in data and _ESCAPE_TEXT.search(data) is not None
        folded = data.translate(_FOLD_TEXT)
        return escape or "0" * 19 in folded, folded.count("[")
    escape = (b"\\" in data and _ESCAPE_BYTES.search(data) is not None) or (
        b"\xed" in data and _RAW_BYTES.search(data) is not None
    )
    folded_bytes = data.translate(_FOLD_BYTES)
    return escape or b"0" * 19 in folded_bytes, folded_bytes.count(b"[")


def _deeper_than_max(value: Any) -> bool:
    # Level by level, the per-item filtering in C: a wide body costs little per container.
    level = [value] if value.__class__ in _CONTAINERS else []
    for _ in range(MAX_DEPTH):
        if not level:
            return False
        items = list(chain.from_iterable([v.values() if v.__class__ is dict else v for v in level]))
        level = list(compress(items, map(_CONTAINERS.__contains__, map(type, items))))
    return bool(level)


def _has_surrogate(text: str) -> bool:
    return not text.isascii() and _SURROGATE.search(text) is not None


def _surrogate(text: str) -> str:
    char = _SURROGATE.search(text)
    code = ord(char.group()) if char else 0
    return f"holds a lone surrogate (\\u{code:04x}), which is not valid Unicode text"


def _segment(key: Any) -> str:
    # Never echo the bad character itself: the error body must encode as UTF-8.
    text = str(key).encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return text if len(text) <= 64 else text[:61] + "..."
