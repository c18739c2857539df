"""Webhook definitions (JetStream KV) and replay records (Redis), shared by every gateway
replica. De-duplication of deliveries is the task store's idempotency key (`gateway.webhooks`).

KV `agentmesh_webhooks`, `<p>.<name>`   JSON name, agent_id, secret, created_at, tolerance_seconds
<p>:webhook-signature:<name>:<hex>       STRING the delivery id that signature came with

The Redis keys live at most 2x the tolerance: a Redis loss forgets them, which reopens a replay
window of at most the tolerance for requests captured just before it (their timestamps then fail).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentmesh.broker.durable import WEBHOOKS_BUCKET, DurableState
from agentmesh.broker.subjects import Subjects, validate_id
from agentmesh.schemas.errors import InvalidId, InvalidMessage, Unavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TOLERANCE = 300  # seconds either side of the receiver's clock
MAX_TOLERANCE = 86400
MIN_SECRET_LEN = 16
# "webhook-" + name is the sender id on delivered messages, and ids are at most 128 characters.
SENDER_PREFIX = "webhook-"
MAX_NAME_LEN = 128 - len(SENDER_PREFIX)
# Any visible ASCII: ids from other systems (UUIDs, "msg_2Kx...", "evt:123") fit unchanged.
_DELIVERY_RE = re.compile(r"[\x21-\x7e]{1,128}")

# Bind a signature to a delivery id: set ARGV[1] if absent, else return the old value.
_BIND = """
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""


def validate_name(name: object) -> str:
    """A webhook name: an id (letters, digits, `_`, `-`) of at most 120 characters."""
    validate_id(name, what="webhook name")
    assert isinstance(name, str)
    if len(name) > MAX_NAME_LEN:
        raise InvalidId(
            f"invalid webhook name {name!r}: at most {MAX_NAME_LEN} characters",
            details={"field": "webhook name"},
        )
    return name


def validate_delivery_id(value: str) -> str:
    if not _DELIVERY_RE.fullmatch(value):
        raise InvalidMessage(
            "invalid X-Mesh-Delivery header: use 1-128 visible ASCII characters, no spaces",
            details={"header": "X-Mesh-Delivery"},
        )
    return value


@dataclass(frozen=True, slots=True)
class Webhook:
    name: str
    agent_id: str
    secret: str
    created_at: float
    tolerance_seconds: int = DEFAULT_TOLERANCE

    @property
    def sender_id(self) -> str:
        """The `from_agent_id` of the messages this webhook delivers."""
        return SENDER_PREFIX + self.name


class WebhookStore:
    """Webhook definitions and signature records. JetStream and Redis failures raise
    `Unavailable`."""

    def __init__(self, durable: DurableState, redis: aioredis.Redis, subjects: Subjects) -> None:
        self._bucket = durable.bucket(WEBHOOKS_BUCKET)
        self.redis = redis
        self.subjects = subjects
        self._bind = redis.register_script(_BIND)

    def _key(self, name: str) -> str:
        return self.subjects.record(name, what="webhook name")

    def _signature_key(self, name: str, mac: str) -> str:
        return self.subjects.key("webhook-signature", name, mac)

    # Definitions ---------------------------------------------------------------------------
    async def create(
        self,
        name: str,
        *,
        agent_id: str,
        secret: str | None = None,
        tolerance_seconds: int = DEFAULT_TOLERANCE,
    ) -> Webhook:
        """Define a webhook; a strong secret is generated when none is given.

        Raises:
            InvalidId: a bad name or agent id.
            InvalidMessage: the name is taken, the secret is too short or the tolerance invalid.
        """
        validate_name(name)
        validate_id(agent_id)
        if secret is None:
            secret = secrets.token_urlsafe(32)
        elif len(secret) < MIN_SECRET_LEN:
            raise InvalidMessage(
                f"webhook secret too short: use at least {MIN_SECRET_LEN} characters "
                "(or let one be generated)"
            )
        if not 1 <= tolerance_seconds <= MAX_TOLERANCE:
            raise InvalidMessage(f"tolerance must be 1-{MAX_TOLERANCE} seconds")
        hook = Webhook(name, agent_id, secret, time.time(), tolerance_seconds)
        if not await self.adopt(hook):
            raise InvalidMessage(
                f"webhook '{name}' already exists (delete it first)", details={"webhook": name}
            )
        return hook

    async def adopt(self, hook: Webhook) -> bool:
        """Store a definition as it is (`gateway.migration`); False if the name is taken."""
        return await self._bucket.create(self._key(hook.name), _document(hook))

    async def get(self, name: str) -> Webhook | None:
        doc = await self._bucket.get(self._key(validate_name(name)))
        return _parse(name, doc) if doc is not None else None

    async def list(self) -> list[Webhook]:
        found = await self._bucket.scan(self.subjects.prefix)
        hooks = (_parse(name, doc) for name, doc in sorted(found.items()))
        return [h for h in hooks if h is not None]

    async def delete(self, name: str) -> bool:
        """Remove a webhook; `False` if there was none. Later calls to it get 404."""
        return await self._bucket.delete(self._key(validate_name(name)))

    # Deliveries ----------------------------------------------------------------------------
    async def bind_signature(self, hook: Webhook, mac: str, delivery_id: str) -> str | None:
        """Tie a verified signature (`mac`, lower-case hex) to `delivery_id` while it can pass.

        Returns None when the signature is new or came with this delivery id before (a retry of
        the same request); otherwise the delivery id it came with first: this is a replay.
        Kept for 2x the tolerance, after which the signature's timestamp fails anyway.
        """
        old = await _redis(
            self._bind(
                keys=[self._signature_key(hook.name, mac)],
                args=[delivery_id, 2 * hook.tolerance_seconds],
            )
        )
        if old is None or old.decode() == delivery_id:
            return None
        return old.decode()


def _document(hook: Webhook) -> dict[str, Any]:
    return {
        "name": hook.name,
        "agent_id": hook.agent_id,
        "secret": hook.secret,
        "created_at": hook.created_at,
        "tolerance_seconds": hook.tolerance_seconds,
    }


def _parse(name: str, doc: dict[str, Any]) -> Webhook | None:
    agent_id, secret = doc.get("agent_id"), doc.get("secret")
    created, tolerance = doc.get("created_at", 0), doc.get("tolerance_seconds", DEFAULT_TOLERANCE)
    if not isinstance(agent_id, str) or not isinstance(secret, str) or not secret:
        logger.warning("webhook %r: its stored definition is damaged; ignored", name)
        return None
    return Webhook(
        name=name,
        agent_id=agent_id,
        secret=secret,
        created_at=float(created) if isinstance(created, int | float) else 0.0,
        tolerance_seconds=tolerance if isinstance(tolerance, int) else DEFAULT_TOLERANCE,
    )


async def _redis(op: Awaitable[T]) -> T:
    try:
        return await op
    except (RedisError, OSError) as exc:
        raise Unavailable(f"Redis is unreachable: {exc}") from None
