"""Settings.from_env: defaults, every AGENTMESH_* variable, overrides and refused values."""

from __future__ import annotations

import dataclasses

import pytest

from agentmesh.broker.settings import Settings
from agentmesh.schemas.errors import InvalidId


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.prefix == "mesh"
    assert settings.heartbeat_interval == 30
    assert settings.heartbeat_timeout == 60
    assert settings == Settings()


def test_an_explicit_environ_is_used_instead_of_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENTMESH_PREFIX", "fromprocess")
    assert Settings.from_env({}).prefix == "mesh"
    assert Settings.from_env().prefix == "fromprocess"


def test_every_field_can_be_set_from_its_own_variable() -> None:
    env = {
        "AGENTMESH_NATS_URL": "nats://nats.example:4223",
        "AGENTMESH_REDIS_URL": "redis://redis.example:6380/2",
        "AGENTMESH_PREFIX": "prod-eu_1",
        "AGENTMESH_HEARTBEAT_INTERVAL": "2.5",
        "AGENTMESH_HEARTBEAT_TIMEOUT": "7",
        "AGENTMESH_KEEPALIVE_INTERVAL": "0.5",
        "AGENTMESH_REQUEST_TIMEOUT": "12.25",
        "AGENTMESH_ACK_TIMEOUT": "0.75",
        "AGENTMESH_RECONNECT_GRACE": "3.5",
        "AGENTMESH_MAX_MESSAGE_BYTES": "2048",
        "AGENTMESH_MAX_CONCURRENCY": "8",
        "AGENTMESH_MAX_QUEUED": "16",
        "AGENTMESH_CONNECT_TIMEOUT": "1.5",
        "AGENTMESH_JETSTREAM_REPLICAS": "3",
        "AGENTMESH_TASK_RETENTION": "3600",
        "AGENTMESH_TASK_LEASE": "12",
        "AGENTMESH_TASK_RETRY_BACKOFF": "0.5",
    }
    # Keep this test honest when a field is added: every field must be covered above.
    assert {f"AGENTMESH_{f.name.upper()}" for f in dataclasses.fields(Settings)} == set(env)

    settings = Settings.from_env(env)

    assert settings == Settings(
        nats_url="nats://nats.example:4223",
        redis_url="redis://redis.example:6380/2",
        prefix="prod-eu_1",
        heartbeat_interval=2.5,
        heartbeat_timeout=7.0,
        keepalive_interval=0.5,
        request_timeout=12.25,
        ack_timeout=0.75,
        reconnect_grace=3.5,
        max_message_bytes=2048,
        max_concurrency=8,
        max_queued=16,
        connect_timeout=1.5,
        jetstream_replicas=3,
        task_retention=3600.0,
        task_lease=12.0,
        task_retry_backoff=0.5,
    )


def test_numbers_from_the_environment_get_the_field_types() -> None:
    settings = Settings.from_env(
        {"AGENTMESH_HEARTBEAT_TIMEOUT": "90", "AGENTMESH_MAX_CONCURRENCY": "4"}
    )
    assert type(settings.heartbeat_timeout) is float and settings.heartbeat_timeout == 90.0
    assert type(settings.max_concurrency) is int and settings.max_concurrency == 4
    assert type(settings.max_message_bytes) is int


def test_an_empty_variable_means_the_default() -> None:
    settings = Settings.from_env({"AGENTMESH_PREFIX": "", "AGENTMESH_HEARTBEAT_INTERVAL": ""})
    assert settings.prefix == "mesh"
    assert settings.heartbeat_interval == 30.0


def test_variables_without_the_agentmesh_prefix_are_ignored() -> None:
    assert Settings.from_env({"PREFIX": "x", "NATS_URL": "nats://elsewhere:1"}) == Settings()


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env(
        {"AGENTMESH_PREFIX": "fromenv", "AGENTMESH_NATS_URL": "nats://env:1"},
        prefix="fromarg",
    )
    assert settings.prefix == "fromarg"
    assert settings.nats_url == "nats://env:1"


def test_an_override_of_none_leaves_the_environment_value() -> None:
    # CLI options default to None; an option not given must not erase the variable.
    settings = Settings.from_env({"AGENTMESH_PREFIX": "fromenv"}, prefix=None)
    assert settings.prefix == "fromenv"


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("AGENTMESH_HEARTBEAT_INTERVAL", "soon"),
        ("AGENTMESH_HEARTBEAT_TIMEOUT", "1m"),
        ("AGENTMESH_REQUEST_TIMEOUT", "30s"),
        ("AGENTMESH_KEEPALIVE_INTERVAL", "five"),
        ("AGENTMESH_CONNECT_TIMEOUT", "2,5"),
        ("AGENTMESH_MAX_MESSAGE_BYTES", "1MB"),
        ("AGENTMESH_MAX_MESSAGE_BYTES", "1.5"),
        ("AGENTMESH_MAX_CONCURRENCY", "1e3"),
    ],
)
def test_a_bad_number_is_a_value_error_naming_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({variable: raw})
    assert variable in str(info.value)
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("AGENTMESH_HEARTBEAT_INTERVAL", "nan"),
        ("AGENTMESH_HEARTBEAT_TIMEOUT", "nan"),
        ("AGENTMESH_HEARTBEAT_TIMEOUT", "inf"),
        ("AGENTMESH_HEARTBEAT_INTERVAL", "-5"),
        ("AGENTMESH_HEARTBEAT_INTERVAL", "0"),
        ("AGENTMESH_KEEPALIVE_INTERVAL", "0"),
        ("AGENTMESH_REQUEST_TIMEOUT", "-1"),
        ("AGENTMESH_CONNECT_TIMEOUT", "inf"),
        ("AGENTMESH_MAX_MESSAGE_BYTES", "0"),
        ("AGENTMESH_MAX_CONCURRENCY", "-1"),
    ],
)
def test_a_number_that_parses_but_is_not_positive_and_finite_is_refused(
    variable: str, raw: str
) -> None:
    # float("nan") parses, and NaN compares False with everything, so it would otherwise pass
    # the heartbeat ordering check and leave presence records that never expire.
    field = variable.removeprefix("AGENTMESH_").lower()
    with pytest.raises(ValueError, match=field):
        Settings.from_env({variable: raw})


@pytest.mark.parametrize("prefix", ["a.b", "*", ">", "a b", "mesh\n", "-mesh", "é"])
def test_a_hostile_prefix_from_the_environment_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidId, match="prefix"):
        Settings.from_env({"AGENTMESH_PREFIX": prefix})


@pytest.mark.parametrize("prefix", ["a.b", "*"])
def test_a_hostile_prefix_given_as_an_override_is_refused(prefix: str) -> None:
    with pytest.raises(InvalidId, match="prefix"):
        Settings.from_env({}, prefix=prefix)


@pytest.mark.parametrize(("interval", "timeout"), [("30", "30"), ("30", "10"), ("5", "4.99")])
def test_a_heartbeat_timeout_not_longer_than_the_interval_is_refused(
    interval: str, timeout: str
) -> None:
    env = {"AGENTMESH_HEARTBEAT_INTERVAL": interval, "AGENTMESH_HEARTBEAT_TIMEOUT": timeout}
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        Settings.from_env(env)


def test_a_heartbeat_interval_raised_past_the_default_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        Settings.from_env({"AGENTMESH_HEARTBEAT_INTERVAL": "60"})


def test_settings_are_immutable_and_with_returns_a_changed_copy() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.prefix = "other"  # type: ignore[misc]
    changed = settings.with_(prefix="other")
    assert changed.prefix == "other"
    assert settings.prefix == "mesh"


def test_the_defaults_pass_their_own_check() -> None:
    Settings().check()
