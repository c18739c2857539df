"""Settings of a mesh participant, read from `AGENTMESH_*` environment variables."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "mesh"


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the mesh is and how its participants behave.

    Every field can be set from the environment as `AGENTMESH_<FIELD>` (upper case), e.g.
    `AGENTMESH_NATS_URL`, `AGENTMESH_PREFIX`, `AGENTMESH_HEARTBEAT_INTERVAL`.
    """

    nats_url: str = DEFAULT_NATS_URL
    redis_url: str = DEFAULT_REDIS_URL
    # Subject and key prefix: two meshes with different prefixes share servers unseen.
    prefix: str = DEFAULT_PREFIX
    # Presence: an instance re-announces itself every interval and is gone after timeout.
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float = 60.0
    # Calls: a responder sends keep-alives this often; a caller declares it dead after 3 missed.
    keepalive_interval: float = 5.0
    request_timeout: float = 30.0
    # A call no instance acknowledges within this long went to a frozen or overloaded one: the
    # caller cancels it there and sends it again (NATS picks a member anew), until the deadline.
    ack_timeout: float = 2.0
    # After a reconnect to NATS, other clients may not have re-subscribed yet: for this long a
    # "no responders" answer is retried rather than reported (see `Bus.settling`).
    reconnect_grace: float = 2.0
    # Bodies larger than this are refused with PAYLOAD_TOO_LARGE by callers and responders.
    max_message_bytes: int = 1024 * 1024
    # Concurrent handler calls per served subject per process.
    max_concurrency: int = 100
    # Calls acknowledged beyond those, waiting for a slot; more wait unacknowledged (and their
    # callers re-route them to another instance after `ack_timeout`).
    max_queued: int = 1000
    connect_timeout: float = 2.0
    # Durable state in JetStream: copies of each stream and bucket (1 locally, 3 on a cluster).
    jetstream_replicas: int = 1
    # Tasks: a task's record and events are kept this long after their last change (seconds).
    task_retention: float = 7 * 86400.0
    # An executor holds a task this long without renewing (every third of it) before another
    # executor may take it over.
    task_lease: float = 30.0
    # First delay before a retry of a task whose attempt failed retriably; doubles, at most 60 s.
    task_retry_backoff: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"AGENTMESH_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise ValueError(
                    f"AGENTMESH_{f.name.upper()}={raw!r} is not a valid {kind.__name__}"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def check(self) -> None:
        from agentmesh.broker.subjects import validate_token

        validate_token(self.prefix, what="prefix")
        for f in fields(self):
            value = getattr(self, f.name)
            # NaN would also slip through the comparison below (every NaN comparison is False).
            if isinstance(value, int | float) and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{f.name} must be a positive finite number, not {value!r}")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
