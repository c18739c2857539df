"""The wire models: messages and their parts, to_parts, and the Agent Card of the seed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentmesh.schemas import (
    AgentCard,
    Chunk,
    DataPart,
    FilePart,
    ImagePart,
    Message,
    Owner,
    Presence,
    PresenceStatus,
    TextPart,
    new_id,
)
from agentmesh.schemas.envelope import to_parts

SEED_CARD = {
    "agent_id": "agent-001",
    "agent_name": "Research Agent",
    "agent_type": "analyst",
    "capabilities": ["search", "analyze", "summarize"],
    "description": "专注于信息检索和分析的 Agent",
    "version": "1.0.0",
    "owner": {"user_id": "user-123", "device_id": "device-456"},
    "metadata": {"location": "PC-001", "timezone": "Asia/Shanghai"},
}


# Message ------------------------------------------------------------------------------------


def test_a_new_message_gets_an_id_and_a_timestamp() -> None:
    a, b = Message(), Message()
    assert a.message_id.startswith("msg-")
    assert a.message_id != b.message_id
    assert a.timestamp > 0
    assert a.content == [] and a.metadata == {}


def test_new_id_uses_the_given_prefix_and_is_unique() -> None:
    ids = {new_id("conv") for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("conv-") for i in ids)


def test_text_joins_every_text_part_in_order_and_skips_the_others() -> None:
    message = Message(
        content=[
            TextPart(text="Hello, "),
            DataPart(data={"x": 1}),
            FilePart(uri="file:///a.txt"),
            TextPart(text="world"),
        ]
    )
    assert message.text == "Hello, world"


def test_text_of_a_message_without_text_parts_is_empty() -> None:
    assert Message(content=[DataPart(data=1)]).text == ""
    assert Message().text == ""


def test_data_gives_the_first_data_part() -> None:
    message = Message(
        content=[TextPart(text="t"), DataPart(data={"first": True}), DataPart(data="second")]
    )
    assert message.data == {"first": True}


def test_data_of_a_message_without_data_parts_is_none() -> None:
    assert Message(content=[TextPart(text="t")]).data is None


def test_a_falsy_data_value_is_still_the_data() -> None:
    assert Message(content=[DataPart(data=0)]).data == 0
    assert Message(content=[DataPart(data=[])]).data == []


def test_a_chunk_has_the_same_text_and_data_helpers() -> None:
    chunk = Chunk(content=[TextPart(text="a"), DataPart(data=[1]), TextPart(text="b")])
    assert chunk.text == "ab"
    assert chunk.data == [1]


def test_parts_given_as_dicts_are_parsed_by_their_type() -> None:
    message = Message.model_validate(
        {
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "data", "data": {"k": "v"}},
                {"type": "file", "uri": "s3://bucket/key", "name": "key"},
                {"type": "image", "bytes": b"\x89PNG", "mime_type": "image/png"},
            ]
        }
    )
    kinds = [type(p) for p in message.content]
    assert kinds == [TextPart, DataPart, FilePart, ImagePart]


def test_a_part_of_unknown_type_is_refused() -> None:
    with pytest.raises(ValidationError):
        Message.model_validate({"content": [{"type": "nope"}]})


def test_unknown_fields_in_a_message_are_ignored_for_forward_compatibility() -> None:
    message = Message.model_validate(
        {
            "message_id": "msg-1",
            "content": [{"type": "text", "text": "hi"}],
            "priority": "high",
            "trace": {"span": "abc"},
        }
    )
    assert message.message_id == "msg-1"
    assert message.text == "hi"
    assert "priority" not in message.model_dump()
    assert not hasattr(message, "priority")


def test_message_field_names_are_those_of_the_gateway_seed() -> None:
    message = Message(conversation_id="conv-1", from_agent_id="agent-001", to_agent_id="agent-002")
    dumped = message.model_dump()
    for name in ("message_id", "conversation_id", "from_agent_id", "to_agent_id", "timestamp"):
        assert name in dumped


# FilePart / ImagePart -----------------------------------------------------------------------


def test_a_file_part_by_uri_is_accepted() -> None:
    part = FilePart(uri="https://example.com/report.pdf", mime_type="application/pdf")
    assert part.bytes is None


def test_a_file_part_with_inline_bytes_is_accepted() -> None:
    part = FilePart(bytes=b"\x00\x01", name="blob.bin")
    assert part.bytes == b"\x00\x01"
    assert part.uri is None


def test_a_file_part_with_empty_inline_bytes_is_accepted() -> None:
    assert FilePart(bytes=b"").bytes == b""


@pytest.mark.parametrize("cls", [FilePart, ImagePart])
def test_a_file_part_with_both_uri_and_bytes_is_refused(cls: type[FilePart]) -> None:
    with pytest.raises(ValidationError, match="exactly one of 'uri' or 'bytes'"):
        cls(uri="file:///x", bytes=b"x")


@pytest.mark.parametrize("cls", [FilePart, ImagePart])
def test_a_file_part_with_neither_uri_nor_bytes_is_refused(cls: type[FilePart]) -> None:
    with pytest.raises(ValidationError, match="exactly one of 'uri' or 'bytes'"):
        cls(name="nothing.txt")


def test_an_image_part_is_a_file_part_with_its_own_type() -> None:
    part = ImagePart(uri="https://example.com/cat.png", mime_type="image/png")
    assert isinstance(part, FilePart)
    assert part.type == "image"


# to_parts ------------------------------------------------------------------------------------


def test_to_parts_of_a_string_is_one_text_part() -> None:
    assert to_parts("hello") == [TextPart(text="hello")]


def test_to_parts_of_an_empty_string_is_one_empty_text_part() -> None:
    assert to_parts("") == [TextPart(text="")]


def test_to_parts_of_none_is_no_parts() -> None:
    assert to_parts(None) == []


@pytest.mark.parametrize("value", [{"answer": 42}, 42, 1.5, True, [1, 2], ["a", "b"]])
def test_to_parts_of_another_value_is_one_data_part(value: object) -> None:
    assert to_parts(value) == [DataPart(data=value)]


def test_to_parts_of_bytes_is_one_inline_file_part() -> None:
    parts = to_parts(b"\x00raw")
    assert parts == [FilePart(bytes=b"\x00raw", mime_type="application/octet-stream")]


@pytest.mark.parametrize(
    "part",
    [
        TextPart(text="t"),
        DataPart(data={"d": 1}),
        FilePart(uri="file:///f"),
        ImagePart(bytes=b"img", mime_type="image/png"),
    ],
)
def test_to_parts_of_one_part_is_that_part(part: object) -> None:
    result = to_parts(part)
    assert result == [part]
    assert result[0] is part


def test_to_parts_of_a_list_of_parts_keeps_them_in_order() -> None:
    parts = [TextPart(text="a"), DataPart(data=1), ImagePart(uri="file:///i.png")]
    result = to_parts(parts)
    assert result == parts
    assert result is not parts  # a copy: the caller's list is not shared


def test_to_parts_of_a_list_mixing_parts_and_plain_values_is_one_data_part() -> None:
    value = [TextPart(text="a"), "b"]
    assert to_parts(value) == [DataPart(data=value)]


def test_to_parts_of_an_empty_list_is_one_data_part_holding_the_empty_list() -> None:
    assert to_parts([]) == [DataPart(data=[])]


# AgentCard / Presence ------------------------------------------------------------------------


def test_the_seed_example_card_is_accepted_verbatim_and_dumps_back_equal() -> None:
    card = AgentCard.model_validate(SEED_CARD)
    assert card.agent_id == "agent-001"
    assert card.description == "专注于信息检索和分析的 Agent"
    assert card.owner == Owner(user_id="user-123", device_id="device-456")
    assert card.model_dump() == SEED_CARD
    assert card.model_dump(exclude_none=True) == SEED_CARD


def test_a_card_needs_only_an_agent_id() -> None:
    card = AgentCard(agent_id="a1")
    assert card.capabilities == [] and card.metadata == {}
    assert card.owner is None


def test_a_card_without_an_agent_id_is_refused() -> None:
    with pytest.raises(ValidationError):
        AgentCard.model_validate({"agent_name": "nameless"})


def test_unknown_card_fields_are_ignored_but_unknown_owner_fields_are_kept() -> None:
    card = AgentCard.model_validate(
        {"agent_id": "a1", "future_field": 1, "owner": {"user_id": "u", "org_id": "o"}}
    )
    assert "future_field" not in card.model_dump()
    assert card.model_dump()["owner"] == {"user_id": "u", "device_id": None, "org_id": "o"}


def test_presence_is_a_card_plus_liveness() -> None:
    presence = Presence.model_validate({**SEED_CARD, "last_heartbeat": 2.0, "connected_at": 1.0})
    assert presence.status is PresenceStatus.ONLINE
    assert presence.instances == []
    assert AgentCard.model_validate(presence.model_dump()).model_dump() == SEED_CARD
