"""The msgpack codec and error frames: what goes on the wire comes back equal, or is refused."""

from __future__ import annotations

import random

import msgpack
import pytest

from agentmesh.schemas import (
    AgentCard,
    Chunk,
    DataPart,
    ErrorCode,
    ErrorInfo,
    FilePart,
    ImagePart,
    Message,
    PresenceEvent,
    PresenceStatus,
    TextPart,
    codec,
)
from agentmesh.schemas.errors import (
    AgentNotFound,
    Cancelled,
    InvalidId,
    InvalidMessage,
    MeshError,
    MeshTimeout,
    PayloadTooLarge,
    RateLimited,
    RemoteError,
    Unauthorized,
    Unavailable,
    error_from_info,
)


def _round_trip(message: Message) -> Message:
    return codec.decode(codec.encode(message), Message)


# Round trips ---------------------------------------------------------------------------------


def test_a_text_message_round_trips() -> None:
    message = Message(
        conversation_id="conv-1",
        from_agent_id="agent-001",
        to_agent_id="agent-002",
        content=[TextPart(text="你好, world")],
        metadata={"trace_id": "t-1"},
    )
    assert _round_trip(message) == message


def test_a_data_message_round_trips_nested_values() -> None:
    data = {
        "int": -(2**63),
        "big": 2**64 - 1,
        "float": 1.25,
        "bool": False,
        "none": None,
        "list": [1, "two", [3.0], {"four": None}],
        "bytes": b"\x00\xff",
        "unicode": "专注",
    }
    message = Message(content=[DataPart(data=data)])
    decoded = _round_trip(message)
    assert decoded == message
    assert decoded.data == data


def test_a_data_part_holding_none_round_trips() -> None:
    # encode drops None values, so the receiver must treat a missing `data` as None.
    message = Message(content=[DataPart(data=None), DataPart(data=1)])
    decoded = _round_trip(message)
    assert decoded == message
    assert [p.data for p in decoded.content] == [None, 1]  # type: ignore[union-attr]


def test_a_file_message_by_uri_round_trips() -> None:
    part = FilePart(uri="s3://bucket/report.pdf", name="report.pdf", mime_type="application/pdf")
    message = Message(content=[part])
    decoded = _round_trip(message)
    assert decoded == message
    assert type(decoded.content[0]) is FilePart


def test_a_file_message_with_inline_bytes_round_trips_as_bytes() -> None:
    blob = bytes(range(256)) * 4
    message = Message(content=[FilePart(bytes=blob, name="blob.bin")])
    decoded = _round_trip(message)
    assert decoded == message
    assert decoded.content[0].bytes == blob  # type: ignore[union-attr]
    assert isinstance(decoded.content[0].bytes, bytes)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "part",
    [
        ImagePart(uri="https://example.com/cat.png", mime_type="image/png"),
        ImagePart(bytes=b"\x89PNG\r\n\x1a\n", mime_type="image/png", name="cat.png"),
    ],
)
def test_an_image_message_round_trips_as_an_image(part: ImagePart) -> None:
    decoded = _round_trip(Message(content=[part]))
    assert decoded.content == [part]
    assert type(decoded.content[0]) is ImagePart


def test_a_message_mixing_every_kind_of_part_round_trips_in_order() -> None:
    message = Message(
        content=[
            TextPart(text="a"),
            DataPart(data={"k": [1]}),
            FilePart(uri="file:///f"),
            ImagePart(bytes=b"img"),
            TextPart(text="b"),
        ]
    )
    decoded = _round_trip(message)
    assert decoded == message
    assert decoded.text == "ab"
    assert decoded.data == {"k": [1]}


def test_encode_leaves_out_none_fields() -> None:
    raw = codec.unpack(codec.encode(Message(content=[FilePart(uri="file:///f")])))
    assert "conversation_id" not in raw
    assert raw["content"] == [{"type": "file", "uri": "file:///f"}]


def test_a_chunk_round_trips() -> None:
    chunk = Chunk(content=[TextPart(text="tok")], metadata={"index": 3})
    assert codec.decode(codec.encode(chunk), Chunk) == chunk


def test_the_seed_agent_card_round_trips() -> None:
    card = AgentCard.model_validate(
        {
            "agent_id": "agent-001",
            "agent_name": "Research Agent",
            "agent_type": "analyst",
            "capabilities": ["search", "analyze", "summarize"],
            "description": "专注于信息检索和分析的 Agent",
            "version": "1.0.0",
            "owner": {"user_id": "user-123", "device_id": "device-456"},
            "metadata": {"location": "PC-001", "timezone": "Asia/Shanghai"},
        }
    )
    assert codec.decode(codec.encode(card), AgentCard) == card


def test_a_presence_event_round_trips_with_its_enum() -> None:
    event = PresenceEvent(
        event=PresenceStatus.OFFLINE,
        agent_id="agent-001",
        instance_id="inst-1",
        timestamp=1.5,
        reason="heartbeat timeout",
    )
    decoded = codec.decode(codec.encode(event), PresenceEvent)
    assert decoded == event
    assert decoded.event is PresenceStatus.OFFLINE


def test_pack_and_unpack_are_inverse_for_plain_values() -> None:
    value = {"a": [1, 2.5, None, True, b"\x00", "é"]}
    assert codec.unpack(codec.pack(value)) == value


def test_unknown_fields_from_a_newer_sender_are_ignored() -> None:
    body = codec.pack(
        {
            "message_id": "msg-1",
            "timestamp": 1.0,
            "content": [{"type": "text", "text": "hi"}],
            "new_in_v2": {"anything": [1, 2]},
        }
    )
    message = codec.decode(body, Message)
    assert message.message_id == "msg-1"
    assert message.text == "hi"


# Refused bodies ------------------------------------------------------------------------------

GARBAGE = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="never-used-byte"),
    pytest.param(msgpack.packb({"content": [{"type": "text", "text": "hi"}]})[:-3], id="truncated"),
    pytest.param(msgpack.packb({"message_id": "m"}) + b"\x00", id="trailing-bytes"),
    pytest.param(b"\xa2\xff\xfe", id="string-not-utf8"),
    pytest.param(b"\x81\x01\x02", id="int-map-key"),
    pytest.param(b"\x91" * 100_000, id="nested-too-deep"),
    pytest.param(msgpack.packb([1, 2, 3]), id="a-list"),
    pytest.param(msgpack.packb("just text"), id="a-string"),
    pytest.param(msgpack.packb(None), id="nil"),
    pytest.param(msgpack.packb({"content": [{"type": "nope"}]}), id="unknown-part-type"),
    pytest.param(msgpack.packb({"content": [{"type": "text"}]}), id="text-part-without-text"),
    pytest.param(msgpack.packb({"content": "hello"}), id="content-not-a-list"),
    pytest.param(msgpack.packb({"content": [{"type": "file"}]}), id="file-without-source"),
    pytest.param(
        msgpack.packb({"content": [{"type": "file", "uri": "u", "bytes": b"b"}]}),
        id="file-with-both-sources",
    ),
    pytest.param(msgpack.packb({"timestamp": "yesterday"}), id="bad-timestamp"),
]


@pytest.mark.parametrize("body", GARBAGE)
def test_a_garbage_body_is_refused_with_a_readable_invalid_message(body: bytes) -> None:
    with pytest.raises(InvalidMessage) as info:
        codec.decode(body, Message)
    error = info.value
    assert type(error) is InvalidMessage
    assert error.code == ErrorCode.INVALID_MESSAGE
    # Readable: says what went wrong in words, not an empty tail after a colon.
    reason = error.message.rsplit(":", 1)[-1].strip()
    assert reason, error.message
    assert error.message.isprintable()
    assert error.__cause__ is None and error.__suppress_context__


def test_the_reason_for_an_unknown_part_type_names_where_and_what() -> None:
    body = msgpack.packb({"content": [{"type": "text", "text": "ok"}, {"type": "nope"}]})
    with pytest.raises(InvalidMessage) as info:
        codec.decode(body, Message)
    assert "invalid Message" in info.value.message
    assert "content.1" in info.value.message
    assert "nope" in info.value.message


def test_the_reason_for_a_body_that_is_not_a_map_names_the_body() -> None:
    with pytest.raises(InvalidMessage, match="<body>"):
        codec.decode(msgpack.packb([1]), Message)


def test_the_reason_for_broken_msgpack_says_so() -> None:
    with pytest.raises(InvalidMessage, match="not valid msgpack"):
        codec.decode(b"\xc1", Message)


def test_random_bytes_only_ever_raise_invalid_message() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        body = rng.randbytes(rng.randint(0, 24))
        try:
            codec.decode(body, Message)
        except InvalidMessage:
            pass


def test_mutated_valid_bodies_only_ever_raise_invalid_message() -> None:
    valid = codec.encode(
        Message(content=[TextPart(text="hi"), DataPart(data={"a": [1]}), FilePart(bytes=b"x")])
    )
    rng = random.Random(11)
    for _ in range(5_000):
        body = bytearray(valid)
        for _ in range(rng.randint(1, 3)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        try:
            codec.decode(bytes(body), Message)
        except InvalidMessage:
            pass


# Error frames --------------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode))
def test_every_error_code_comes_back_as_an_exception_with_that_code(code: ErrorCode) -> None:
    info = ErrorInfo(code=code, message="what happened", details={"k": "v"})
    error = error_from_info(codec.decode(codec.encode(info), ErrorInfo))
    assert isinstance(error, MeshError)
    assert error.code == code
    assert error.message == "what happened"
    assert error.details["k"] == "v"
    assert error.to_info().code == code


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (ErrorCode.AGENT_NOT_FOUND, AgentNotFound),
        (ErrorCode.INVALID_MESSAGE, InvalidMessage),
        (ErrorCode.INVALID_ID, InvalidId),
        (ErrorCode.PAYLOAD_TOO_LARGE, PayloadTooLarge),
        (ErrorCode.TIMEOUT, MeshTimeout),
        (ErrorCode.UNAUTHORIZED, Unauthorized),
        (ErrorCode.RATE_LIMIT, RateLimited),
        (ErrorCode.UNAVAILABLE, Unavailable),
        (ErrorCode.CANCELLED, Cancelled),
        (ErrorCode.INTERNAL, RemoteError),
    ],
)
def test_each_error_code_maps_to_its_own_class(code: ErrorCode, cls: type[MeshError]) -> None:
    assert type(error_from_info(ErrorInfo(code=code, message="m"))) is cls


def test_an_exception_survives_the_trip_through_an_error_frame() -> None:
    sent = AgentNotFound("no instance serves agent-009", details={"agent_id": "agent-009"})
    received = error_from_info(codec.decode(codec.encode(sent.to_info()), ErrorInfo))
    assert type(received) is AgentNotFound
    assert received.message == sent.message
    assert received.details == sent.details
    assert str(received) == "AGENT_NOT_FOUND: no instance serves agent-009"


def test_rate_limited_keeps_retry_after_through_an_error_frame() -> None:
    sent = RateLimited("slow down", retry_after=2.5)
    assert sent.retry_after == 2.5
    assert sent.to_info().details["retry_after"] == 2.5
    received = error_from_info(codec.decode(codec.encode(sent.to_info()), ErrorInfo))
    assert isinstance(received, RateLimited)
    assert received.retry_after == 2.5


def test_rate_limited_without_retry_after_defaults_to_zero() -> None:
    received = error_from_info(ErrorInfo(code=ErrorCode.RATE_LIMIT, message="m"))
    assert isinstance(received, RateLimited)
    assert received.retry_after == 0.0


@pytest.mark.parametrize("bad", ["soon", None, [1], "nan", "inf", -3])
def test_a_malformed_retry_after_from_a_remote_does_not_crash_the_caller(bad: object) -> None:
    info = ErrorInfo(code=ErrorCode.RATE_LIMIT, message="m", details={"retry_after": bad})
    received = error_from_info(info)
    assert isinstance(received, RateLimited)
    assert received.retry_after == 0.0


def test_mesh_timeout_is_a_builtin_timeout_error() -> None:
    error = error_from_info(ErrorInfo(code=ErrorCode.TIMEOUT, message="no reply in 5s"))
    assert isinstance(error, TimeoutError)
    with pytest.raises(TimeoutError):
        raise MeshTimeout("no reply")


def test_an_unknown_code_on_the_wire_is_refused_as_an_invalid_error_body() -> None:
    body = codec.pack({"code": "NOT_A_CODE", "message": "m"})
    with pytest.raises(InvalidMessage, match="code"):
        codec.decode(body, ErrorInfo)


def test_the_text_fast_path_decodes_to_the_same_message_as_the_model_path() -> None:
    for kw in (
        {"from_agent_id": "a", "to_agent_id": "b"},
        {"from_agent_id": None, "to_agent_id": "b", "conversation_id": "c-1"},
        {"from_agent_id": "a", "to_agent_id": None, "metadata": {"k": [1, "v"]}},
    ):
        fast = codec.decode(codec.encode_message("héllo", **kw), Message)
        slow = codec.decode(
            codec.encode(
                Message(
                    content=[TextPart(text="héllo")],
                    message_id=fast.message_id,
                    timestamp=fast.timestamp,
                    **{k: v for k, v in kw.items() if k != "metadata"},
                    metadata=kw.get("metadata") or {},
                )
            ),
            Message,
        )
        assert fast == slow
        # Non-text content takes the model path and still round-trips.
        assert codec.decode(codec.encode_message({"x": 1}, **kw), Message).data == {"x": 1}
