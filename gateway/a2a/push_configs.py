"""A2A push notification configs in JetStream, and where each one's delivery stands (push.py
delivers). Every replica reads and writes the same records, so a config made on one replica is
seen, and delivered, by all.

Per mesh prefix `<p>`, one KV bucket `agentmesh_<p>_a2a_push`, whose entries expire with the
tasks (`AGENTMESH_TASK_RETENTION` after their last write):

    cfg.<task_id>.<ref>   JSON `config` (the TaskPushNotificationConfig in the SDK's JSON),
                          `owner` (the API key's id, `anonymous` without one), `created_at`
    run.<task_id>.<ref>   JSON `cursor` (the task event sequence delivered up to), `state` (the
                          A2A state last sent), `holder` and `until` (the delivery lease)

`<ref>` is 32 hex digits of the SHA-256 of the owner and the config id: the ids are the
client's, and, as in the SDK's own stores, a key reads, lists and deletes only its own configs
while every config of a task is delivered. A webhook whose host is not public (private,
loopback, link-local: the runtime's `fetch` fence decides) is refused unless the gateway's
`a2a_push_allow_private` is on.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import nats.js.errors
from a2a.server.tasks.push_notification_config_store import normalize_push_notification_config
from a2a.types.a2a_pb2 import SendMessageRequest, TaskPushNotificationConfig, TaskState
from a2a.utils.errors import InternalError, InvalidParamsError
from google.protobuf.json_format import MessageToDict, ParseDict, ParseError
from nats.js import api

from agentmesh.agents.runtime.builtins import check_public
from agentmesh.broker.durable import DurableState
from agentmesh.broker.settings import Settings
from agentmesh.gateway.a2a import convert
from agentmesh.gateway.auth import Principal
from agentmesh.gateway.state import GatewayState
from agentmesh.schemas.errors import Forbidden, InvalidMessage, MeshError
from agentmesh.schemas.task import TASK_ID_RE, TaskRecord

if TYPE_CHECKING:
    from agentmesh.gateway.a2a.handler import Call

LEASE = 30.0  # seconds a replica holds a config's delivery before another may take it over
MAX_URL = 2048
MAX_TOKEN = 4096
MAX_ID = 256
ALLOW_PRIVATE = "AGENTMESH_GATEWAY_A2A_PUSH_ALLOW_PRIVATE"


def bucket_name(prefix: str) -> str:
    return f"agentmesh_{prefix}_a2a_push"


def owner_of(principal: Principal) -> str:
    return principal.key_id or "anonymous"


def ref_of(owner: str, config_id: str) -> str:
    return hashlib.sha256(f"{owner}\n{config_id}".encode()).hexdigest()[:32]


class Held(Exception):
    """Another delivery holds the config's lease, for `left` seconds more."""

    def __init__(self, left: float) -> None:
        super().__init__(f"held for {left:.1f} s more")
        self.left = left


class LeaseLost(Exception):
    """The delivery's lease passed to another (it expired) or the config was deleted."""


class _Done(Exception):
    """The delivery is past the sequence asked for: nothing to take."""


@dataclass(frozen=True, slots=True)
class Run:
    """Where a config's delivery stands (its `run.` record)."""

    cursor: int
    state: int  # a TaskState value

    @classmethod
    def of(cls, record: dict[str, Any]) -> Run:
        return cls(cursor=int(record.get("cursor", 0)), state=int(record.get("state", 0)))


async def check_url(url: str, *, allow_private: bool) -> None:
    """Raises:
    InvalidParamsError: not an http(s) URL with a host, or its host is not a public address
        (unless `allow_private`), or the host cannot be resolved.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        parts = urlsplit("")
    if len(url) > MAX_URL or parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParamsError(
            message=f"a push notification url must be an http(s) URL with a host (at most "
            f"{MAX_URL} characters), not {url[:200]!r}"
        )
    try:
        await check_public(url, allow_private=allow_private)
    except Forbidden:
        raise InvalidParamsError(
            message=f"the push notification url's host {parts.hostname!r} is a private, "
            "loopback or link-local address: the gateway posts only to public addresses "
            f"unless {ALLOW_PRIVATE}=on"
        ) from None
    except (InvalidMessage, UnicodeError, OSError):
        raise InvalidParamsError(
            message=f"the push notification url's host {parts.hostname!r} cannot be resolved"
        ) from None


async def check(config: TaskPushNotificationConfig, *, allow_private: bool) -> None:
    """Raises:
    InvalidParamsError: an id or token too long, a URL that is not accepted (`check_url`).
    """
    if len(config.id) > MAX_ID or len(config.token) > MAX_TOKEN:
        raise InvalidParamsError(
            message=f"a push notification config's id takes at most {MAX_ID} characters, its "
            f"token at most {MAX_TOKEN}"
        )
    await check_url(config.url, allow_private=allow_private)


def normalized(task_id: str, given: TaskPushNotificationConfig) -> TaskPushNotificationConfig:
    """As the SDK stores it: for `task_id`, the id defaulting to the task's (no tenant)."""
    config = normalize_push_notification_config(task_id, given)
    config.ClearField("tenant")
    return config


async def last_seq(state: GatewayState, task_id: str) -> int:
    """The sequence of the task's last event (0: none).

    Raises:
        Unavailable: JetStream cannot be reached.
    """
    tasks = state.tasks
    stream, subject = tasks.names["task_events"], tasks.subjects.task_events(task_id)
    with state.durable.calling("reading task events"):
        try:
            msg = await state.durable.js.get_last_msg(stream, subject)
        except nats.js.errors.NotFoundError:
            return 0
    return msg.seq or 0


class PushConfigs:
    """The configs' bucket of one mesh, on a replica's DurableState."""

    def __init__(self, durable: DurableState, settings: Settings) -> None:
        self.durable = durable
        self.settings = settings
        self.name = bucket_name(settings.prefix)
        self.bucket = durable.bucket(self.name)

    async def open(self) -> None:
        """Create the bucket if it is missing (its entries expire with the tasks)."""
        if await self.bucket.open(create=False) is not None:
            return
        config = api.KeyValueConfig(
            bucket=self.name,
            history=1,
            storage=api.StorageType.FILE,
            replicas=self.settings.jetstream_replicas,
            ttl=self.settings.task_retention,
            direct=True,
        )
        with self.durable.calling(f"creating the bucket {self.name}"):
            try:
                await self.durable.js.create_key_value(config)
            except nats.js.errors.BadRequestError:
                pass  # another replica made it first
        await self.bucket.open(create=True)

    # Configs -----------------------------------------------------------------------------------
    async def save(
        self, owner: str, config: TaskPushNotificationConfig, *, cursor: int, state: int
    ) -> None:
        """Store `config` (replacing the owner's config of that id, whose delivery goes on where
        it stands); a new one is delivered from the event after `cursor`."""
        await self.open()
        key = f"{config.task_id}.{ref_of(owner, config.id)}"
        await self.bucket.create(
            f"run.{key}", {"cursor": cursor, "state": state, "holder": None, "until": 0.0}
        )
        earlier = await self.bucket.get(f"cfg.{key}")
        created = earlier.get("created_at") if earlier else None
        await self.bucket.put(
            f"cfg.{key}",
            {
                "config": MessageToDict(config),
                "owner": owner,
                "created_at": created if isinstance(created, float) else time.time(),
            },
        )

    async def owned(self, task_id: str, owner: str) -> list[TaskPushNotificationConfig]:
        """The owner's configs of the task, oldest first."""
        found = [r for r in (await self._configs(task_id)).values() if r[1] == owner]
        return [config for config, _, _ in sorted(found, key=lambda r: r[2])]

    async def of_task(self, task_id: str) -> dict[str, TaskPushNotificationConfig]:
        """Every config of the task (all owners), by ref."""
        return {ref: r[0] for ref, r in (await self._configs(task_id)).items()}

    async def config(self, task_id: str, ref: str) -> TaskPushNotificationConfig | None:
        record = await self.bucket.get(f"cfg.{task_id}.{ref}")
        parsed = _parse(record) if record else None
        return parsed[0] if parsed else None

    async def remove(self, task_id: str, owner: str, config_id: str) -> bool:
        key = f"{task_id}.{ref_of(owner, config_id)}"
        removed = await self.bucket.delete(f"cfg.{key}")
        await self.bucket.delete(f"run.{key}")
        return removed

    async def _configs(
        self, task_id: str
    ) -> dict[str, tuple[TaskPushNotificationConfig, str, float]]:
        out = {}
        for ref, record in (await self.bucket.scan(f"cfg.{task_id}")).items():
            parsed = _parse(record)
            if parsed is not None:
                out[ref] = parsed
        return out

    # Delivery leases ---------------------------------------------------------------------------
    async def take(self, task_id: str, ref: str, holder: str, *, upto: int | None) -> Run | None:
        """The delivery of the config, leased to `holder`; None if the config is gone or its
        delivery is past `upto` already.

        Raises:
            Held: another holder has it.
        """

        def change(record: dict[str, Any]) -> dict[str, Any]:
            now = time.time()
            if upto is not None and Run.of(record).cursor >= upto:
                raise _Done
            other = record.get("holder")
            if other and other != holder and float(record.get("until", 0.0)) > now:
                raise Held(float(record["until"]) - now)
            return {**record, "holder": holder, "until": now + LEASE}

        try:
            taken = await self.bucket.update(f"run.{task_id}.{ref}", change)
        except _Done:
            return None
        return Run.of(taken) if taken is not None else None

    async def keep(
        self, task_id: str, ref: str, holder: str, *, cursor: int | None = None, state: int = 0
    ) -> None:
        """Renew `holder`'s lease; with `cursor`, record the delivery up to it (and `state`).

        Raises:
            LeaseLost: another holder has it now, or the config was deleted.
        """

        def change(record: dict[str, Any]) -> dict[str, Any]:
            if record.get("holder") != holder:
                raise LeaseLost(f"the delivery of {task_id}.{ref} passed to another")
            new = {**record, "until": time.time() + LEASE}
            if cursor is not None:
                new.update(cursor=cursor, state=state)
            return new

        if await self.bucket.update(f"run.{task_id}.{ref}", change) is None:
            raise LeaseLost(f"the config {task_id}.{ref} was deleted")

    async def release(self, task_id: str, ref: str, holder: str) -> None:
        def change(record: dict[str, Any]) -> dict[str, Any]:
            if record.get("holder") != holder:
                raise LeaseLost(f"the delivery of {task_id}.{ref} passed to another")
            return {**record, "holder": None, "until": 0.0}

        try:
            await self.bucket.update(f"run.{task_id}.{ref}", change)
        except LeaseLost:
            pass


def _parse(record: dict[str, Any]) -> tuple[TaskPushNotificationConfig, str, float] | None:
    try:
        config = ParseDict(
            record["config"], TaskPushNotificationConfig(), ignore_unknown_fields=True
        )
        return config, str(record["owner"]), float(record.get("created_at", 0.0))
    except (KeyError, ParseError, TypeError, ValueError):
        return None


# The handler's side --------------------------------------------------------------------------
def configs_of(state: GatewayState) -> PushConfigs:
    return PushConfigs(state.durable, state.settings)


async def create(
    state: GatewayState, principal: Principal, record: TaskRecord, given: TaskPushNotificationConfig
) -> TaskPushNotificationConfig:
    """Store a config for `record`'s task: its webhook gets the updates after this one.

    Raises:
        InvalidParamsError: a URL that is not accepted, an id or token too long.
    """
    await check(given, allow_private=state.config.a2a_push_allow_private)
    config = normalized(record.task_id, given)
    # The updates after the record as read: one made at this very moment may count as before.
    cursor = await last_seq(state, record.task_id)
    await configs_of(state).save(
        owner_of(principal), config, cursor=cursor, state=convert.state_of(record.status)
    )
    return config


H = TypeVar("H")
Submit = Callable[[H, "Call", SendMessageRequest], Awaitable[TaskRecord]]


def registers_given(submit: Submit[H]) -> Submit[H]:
    """A push notification config given with a message (`configuration.
    taskPushNotificationConfig`): checked before the message is stored, then kept for its task,
    whose webhook so gets every update of the task (of its new turn, for a message that
    continues a task)."""

    @functools.wraps(submit)
    async def submitting(handler: H, call: Call, params: SendMessageRequest) -> TaskRecord:
        if not params.configuration.HasField("task_push_notification_config"):
            return await submit(handler, call, params)
        given = params.configuration.task_push_notification_config
        await check(given, allow_private=call.state.config.a2a_push_allow_private)
        try:
            after = 0
            if TASK_ID_RE.fullmatch(params.message.task_id):
                after = await last_seq(call.state, params.message.task_id)
            record = await submit(handler, call, params)
            await configs_of(call.state).save(
                owner_of(call.principal),
                normalized(record.task_id, given),
                cursor=after,
                state=TaskState.TASK_STATE_UNSPECIFIED,
            )
        except MeshError as exc:  # JetStream unreachable: the same message again completes it
            raise InternalError(message=f"{exc.code}: {exc.message}") from None
        return record

    return submitting
