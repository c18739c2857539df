"""What the mesh can carry: JSON from outside screened, and the codec's refusals, field named."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentmesh.schemas import codec, encodable
from agentmesh.schemas.encodable import MAX_DEPTH, MAX_INT, MIN_INT
from agentmesh.schemas.errors import InvalidMessage


def nested(depth: int) -> str:
    """A JSON object `depth` levels deep (the top level counted)."""
    return '{"a":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('{"content": [{"text": "a\\ud800"}]}', "content.0.text"),
        ('{"content": [{"text": "\\udfff"}]}', "content.0.text"),
        ('{"m": {"\\ud800": 1}}', "m.\\ud800"),
        ('{"m": {"k": "a\\ud83d"}}', "m.k"),  # a high surrogate without its low half
        ('{"n": [1, 18446744073709551616]}', "n.1"),
        ('{"n": -9223372036854775809}', "n"),
        (nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH}"),
        ("[" * 5000 + "]" * 5000, f"nested deeper than {MAX_DEPTH}"),
    ],
)
def test_loads_refuses_valid_json_the_mesh_cannot_carry_and_names_the_field(
    body: str, names: str
) -> None:
    for data in (body, body.encode()):
        with pytest.raises(InvalidMessage) as raised:
            encodable.loads(data)
        assert names in raised.value.message


def test_a_raw_surrogate_in_json_bytes_is_refused_too() -> None:
    # json.loads decodes bytes with surrogatepass: the UTF-8-like bytes of U+D800 become one.
    with pytest.raises(InvalidMessage, match="text"):
        encodable.loads(b'{"text": "a\xed\xa0\x80"}')


@pytest.mark.parametrize(
    "body",
    [
        '{"text": "\\ud83d\\ude00 \\u00e9 \ud55c"}',  # a surrogate pair (an emoji), é, Hangul
        json.dumps({"n": [MIN_INT, MAX_INT], "digits": "12345678901234567890123"}),
        nested(MAX_DEPTH),
        json.dumps({"wide": [{"a": [1]} for _ in range(1000)]}),
    ],
)
def test_loads_accepts_what_the_mesh_can_carry(body: str) -> None:
    assert encodable.loads(body) == json.loads(body)
    assert encodable.loads(body.encode()) == json.loads(body)


def test_a_body_without_suspect_text_is_not_walked(monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[Any] = []
    monkeypatch.setattr(encodable, "check", walked.append)
    encodable.loads(json.dumps({"content": [{"type": "text", "text": "hello"}], "n": 2**53}))
    assert walked == []


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ({"tool": "\ud800", "arguments": {}}, "tool"),
        ({"arguments": {"n": 2**70}}, "arguments.n"),
        ({"x": {"\udc00": 1}}, "x.\\udc00"),
    ],
)
def test_the_codec_refuses_an_unencodable_value_with_invalid_message_naming_the_field(
    value: Any, names: str
) -> None:
    with pytest.raises(InvalidMessage) as raised:
        codec.pack(value)
    assert names in raised.value.message
    assert "\ud800" not in raised.value.message and "\udc00" not in raised.value.message
    # The shared packer is left clean for the next message.
    assert codec.unpack(codec.pack({"ok": 1})) == {"ok": 1}


def test_the_codec_refuses_an_unencodable_message() -> None:
    with pytest.raises(InvalidMessage, match="content.0.text"):
        codec.encode_message("a\ud800", from_agent_id="a", to_agent_id="b")
