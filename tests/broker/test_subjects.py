"""Subjects and tokens: no outside id may widen a subscription or add a subject token."""

from __future__ import annotations

import random
import unicodedata

import pytest

from agentmesh.broker.subjects import (
    MAX_NAME_LEN,
    Subjects,
    escape_token,
    unescape_token,
    validate_id,
)
from agentmesh.schemas.errors import ErrorCode, InvalidId, InvalidMessage

GOOD_IDS = ["agent-001", "my_agent", "A1", "a", "0", "x" * 128, "Agent_7-b", "9lives"]

HOSTILE_IDS = [
    "",
    "a.b",
    "a.>",
    ">",
    "*",
    "a*",
    "a b",
    "a\tb",
    "a\nb",
    "a\rb",
    "\x00",
    "a\x00",
    "é",
    "agént",
    "-lead",
    "_lead",
    "x" * 129,
    # `$` in a regex also matches before a final newline; the id must still be refused.
    "agent\n",
    "agent\r\n",
    " agent",
    "agent ",
    "a:b",
    "a/b",
    "a~b",
    "ａ",  # fullwidth letter
    "١",  # Arabic-Indic digit: a Unicode digit, not an ASCII one
    "a\u200bb",  # zero-width space
]

NON_STR_IDS = [None, 5, 1.5, b"agent", ["agent"], object()]


# validate_id ---------------------------------------------------------------------------------


@pytest.mark.parametrize("agent_id", GOOD_IDS)
def test_a_normal_agent_id_is_accepted_unchanged(agent_id: str) -> None:
    assert validate_id(agent_id) == agent_id


@pytest.mark.parametrize("agent_id", HOSTILE_IDS)
def test_a_hostile_agent_id_is_refused_with_invalid_id(agent_id: str) -> None:
    with pytest.raises(InvalidId) as info:
        validate_id(agent_id)
    assert info.value.code == ErrorCode.INVALID_ID


@pytest.mark.parametrize("value", NON_STR_IDS)
def test_an_agent_id_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(InvalidId):
        validate_id(value)


def test_a_refused_id_names_the_field_and_the_value() -> None:
    with pytest.raises(InvalidId) as info:
        validate_id("a.>", what="instance id")
    assert "instance id" in info.value.message
    assert "'a.>'" in info.value.message
    assert info.value.details == {"field": "instance id"}


def test_invalid_id_is_a_kind_of_invalid_message() -> None:
    # Callers that catch InvalidMessage for bad bodies also catch bad ids in them.
    with pytest.raises(InvalidMessage):
        validate_id("*")


# escape_token / unescape_token ---------------------------------------------------------------

TRICKY_NAMES = [
    "gpt-4.1",
    "a.b",
    "a~2eb",
    "a~7e2eb",
    "~",
    "~~",
    "~2e",
    "a.b.c",
    "a..b",
    ".",
    "..",
    "*",
    ">",
    "a.>",
    "a b",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\x00",
    "\x7f",
    "\x1b[31m",
    "tool:search",
    "ns/tool",
    "50%",
    "%2e",
    "A",
    "a",
    "~41",
    "\u00e9",
    "e\u0301",  # e + combining acute: a different string from the precomposed "\u00e9"
    "模型",
    "专注于信息检索",
    "🤖",
    "👩‍💻",
    "\u200b",
    "\ufeff",
    "-",
    "_",
    "_all",
    "claude-3.5-sonnet@2024",
    "x" * MAX_NAME_LEN,
    "." * MAX_NAME_LEN,
    "🤖" * MAX_NAME_LEN,
]


def _assert_safe_token(token: str) -> None:
    assert token
    for c in token:
        assert c not in ".*>", token
        assert not c.isspace(), token
        assert unicodedata.category(c)[0] != "C", token  # control, format, surrogate, ...
        assert c.isascii(), token


def test_a_model_alias_with_a_dot_round_trips() -> None:
    token = escape_token("gpt-4.1")
    assert token == "gpt-4~2e1"
    _assert_safe_token(token)
    assert unescape_token(token) == "gpt-4.1"


def test_a_name_made_only_of_safe_characters_is_left_as_it_is() -> None:
    assert escape_token("my_tool-2") == "my_tool-2"
    assert unescape_token("my_tool-2") == "my_tool-2"


@pytest.mark.parametrize("name", TRICKY_NAMES)
def test_a_tricky_name_escapes_to_a_safe_token_that_round_trips(name: str) -> None:
    token = escape_token(name)
    _assert_safe_token(token)
    assert unescape_token(token) == name


def test_escaping_is_injective_on_tricky_names() -> None:
    tokens = [escape_token(n) for n in TRICKY_NAMES]
    assert len(set(tokens)) == len(set(TRICKY_NAMES))


def test_a_dotted_name_and_its_escaped_look_alike_get_different_tokens() -> None:
    # If '~' were kept as-is, "a~2eb" would stay unchanged and collide with escaped "a.b".
    assert escape_token("a.b") == "a~2eb"
    assert escape_token("a~2eb") != escape_token("a.b")
    assert escape_token("~") == "~7e"


@pytest.mark.parametrize("name", ["", "x" * (MAX_NAME_LEN + 1), "." * (MAX_NAME_LEN + 1)])
def test_an_empty_or_overlong_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidId):
        escape_token(name)


@pytest.mark.parametrize("value", [None, 5, b"gpt-4.1"])
def test_a_name_that_is_not_a_string_is_refused(value: object) -> None:
    with pytest.raises(InvalidId):
        escape_token(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["\ud800", "a\udfffb", "gpt-\udc80"])
def test_a_name_with_a_lone_surrogate_is_refused_with_invalid_id(name: str) -> None:
    # json.loads('"\\ud800"') yields such strings, so they can arrive from the gateway.
    with pytest.raises(InvalidId):
        escape_token(name)


@pytest.mark.parametrize(
    "token",
    [
        "~",  # escape with no digits
        "a~2",  # truncated escape
        "~zz",  # not hex
        "~ff",  # not UTF-8
        "~ed~a0~80",  # UTF-8 of a surrogate
        "~41",  # "A" escaped although it is safe: not what escape_token makes
        "~2E",  # upper-case hex: not what escape_token makes
        "a.b",  # an unescaped dot
        "",
    ],
)
def test_a_token_escape_token_cannot_produce_is_refused_by_unescape(token: str) -> None:
    with pytest.raises(InvalidId):
        unescape_token(token)


def _generated_names() -> list[str]:
    # A deterministic stand-in for a property test: many random strings over an alphabet
    # rich in separators, wildcards, escapes, controls, non-ASCII and surrogates.
    alphabet = "aZ09_-.*>~ \t\n\r\x00\x01\x7f\x85\xa0:%/\\\"'é模🤖\u200b\u2028\ufeff\ud800\udfff"
    rng = random.Random(20240601)
    names = []
    for _ in range(3000):
        length = rng.choice([0, 1, 2, 3, 5, 8, 20, MAX_NAME_LEN, MAX_NAME_LEN + 1])
        names.append("".join(rng.choice(alphabet) for _ in range(length)))
    return names


def test_any_text_either_is_refused_or_escapes_to_a_safe_token_that_round_trips() -> None:
    seen: dict[str, str] = {}
    for name in _generated_names():
        try:
            token = escape_token(name)
        except InvalidId:
            continue
        _assert_safe_token(token)
        assert unescape_token(token) == name
        assert seen.setdefault(token, name) == name  # injective
    assert len(seen) > 1000  # most generated names were accepted, so the check means something


# Subjects ------------------------------------------------------------------------------------


def test_agent_subject_is_prefix_agent_id() -> None:
    assert Subjects("mesh").agent("agent-001") == "mesh.agent.agent-001"


def test_agent_queue_names_the_agent() -> None:
    assert Subjects("mesh").agent_queue("agent-001") == "mesh.agent.agent-001"


@pytest.mark.parametrize("agent_id", HOSTILE_IDS)
def test_agent_subject_with_a_hostile_id_is_refused(agent_id: str) -> None:
    subjects = Subjects("mesh")
    for build in (
        subjects.agent,
        subjects.agent_queue,
        subjects.control,
        subjects.presence_events,
    ):
        with pytest.raises(InvalidId):
            build(agent_id)


def test_agent_id_with_wildcard_is_refused() -> None:
    with pytest.raises(InvalidId):
        Subjects("mesh").agent(">")


@pytest.mark.parametrize("prefix", HOSTILE_IDS)
def test_a_hostile_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidId) as info:
        Subjects(prefix)
    assert "prefix" in info.value.message


@pytest.mark.parametrize("prefix", [None, 5])
def test_a_prefix_that_is_not_a_string_is_refused(prefix: object) -> None:
    with pytest.raises(InvalidId):
        Subjects(prefix)  # type: ignore[arg-type]


def test_control_subject_is_prefix_ctl_instance_id() -> None:
    assert Subjects("mesh").control("inst-1") == "mesh.ctl.inst-1"


@pytest.mark.parametrize("instance_id", GOOD_IDS + ["all", "ALL", "a_all", "_all"])
def test_control_all_can_never_equal_the_control_subject_of_an_instance(
    instance_id: str,
) -> None:
    subjects = Subjects("mesh")
    try:
        control = subjects.control(instance_id)
    except InvalidId:
        return
    assert control != subjects.control_all()


def test_the_instance_id_that_would_collide_with_control_all_is_refused() -> None:
    token = Subjects("mesh").control_all().rsplit(".", 1)[1]
    with pytest.raises(InvalidId):
        Subjects("mesh").control(token)


def test_presence_events_of_none_is_the_wildcard_over_all_agents() -> None:
    subject = Subjects("mesh").presence_events(None)
    assert subject == "mesh.presence.*"
    assert subject.endswith("*")


def test_presence_events_of_one_agent_has_no_wildcard() -> None:
    subject = Subjects("mesh").presence_events("x")
    assert subject == "mesh.presence.x"
    assert "*" not in subject and ">" not in subject


def test_subjects_of_two_prefixes_never_overlap() -> None:
    a, b = Subjects("mesh"), Subjects("mesh2")
    assert a.agent("x") != b.agent("x")
    assert not b.agent("x").startswith(a.prefix + ".")


def test_every_subject_has_exactly_the_expected_number_of_tokens() -> None:
    subjects = Subjects("p")
    assert subjects.agent("a").split(".") == ["p", "agent", "a"]
    assert subjects.control("i").split(".") == ["p", "ctl", "i"]
    assert subjects.control_all().split(".") == ["p", "ctl", "_all"]
    assert subjects.presence_events("a").split(".") == ["p", "presence", "a"]


def test_redis_keys_are_joined_with_colons_under_the_prefix() -> None:
    assert Subjects("mesh").key("presence", "agent-001") == "mesh:presence:agent-001"
