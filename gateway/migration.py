"""Moving keys, webhooks and usage totals from the Redis layout of earlier versions into
JetStream, once, at gateway start and in `agentmesh keys` / `agentmesh webhooks`.

The old layout (read only here):

    <p>:keys, <p>:key:<id>             SET of ids, HASH name, scopes ("a,b"), rate_limit,
                                       token_limit, tools (JSON text, "" = every tool), agents
                                       (JSON text), created_at, hash
    <p>:webhooks, <p>:webhook:<name>   SET of names, HASH agent_id, secret, created_at,
                                       tolerance_seconds
    <p>:usage, <p>:usage:<pair>        SET of `<key id>:<escaped model>`, HASH of the five counts,
                                       with no `<p>:usage:seq` beside it (that is the new cache)

Each key and webhook is created in its KV bucket if absent (a KV record is never overwritten),
then its Redis keys are deleted. Each usage pair becomes one event carrying its totals (with a
message id, so a migration that dies after publishing and is run again within the stream's
duplicate window stores it once), then its hash is deleted; the next read folds the stream into
a fresh cache. A Redis lock (`<p>:migration`, SET NX with expiry) makes replicas that start at
once migrate once; the others wait for it, so none serves before the records are in place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from agentmesh.broker.durable import DurableState
from agentmesh.broker.ratelimit import Limit
from agentmesh.broker.subjects import Subjects, unescape_token
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyRecord, KeyStore
from agentmesh.gateway.usage import FIELDS, Usage, UsageStore
from agentmesh.gateway.webhook_store import DEFAULT_TOLERANCE, Webhook, WebhookStore
from agentmesh.schemas.errors import InvalidId, Unavailable

logger = logging.getLogger(__name__)

LOCK_TTL = 60  # seconds: a migration that dies holding the lock blocks others this long at most
WAIT = 0.1  # seconds between looks at a lock another process holds

# Delete the lock only if it is still ours (it may have expired and been taken).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Migrated:
    keys: int = 0
    webhooks: int = 0
    usage: int = 0  # (key, model) pairs

    def __bool__(self) -> bool:
        return bool(self.keys or self.webhooks or self.usage)


async def pending(redis: aioredis.Redis, subjects: Subjects) -> bool:
    """Whether Redis still holds records in the old layout (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.exists(subjects.key("keys"), subjects.key("webhooks"))
        pipe.exists(subjects.key("usage"))
        pipe.exists(subjects.key("usage", "seq"))
        definitions, usage, folded = await pipe.execute()
    return bool(definitions) or (bool(usage) and not folded)


async def migrate(
    durable: DurableState, redis: aioredis.Redis, subjects: Subjects, *, timeout: float = 120
) -> Migrated:
    """Move what the old layout holds into JetStream; returns what was moved (by this call).

    Raises:
        Unavailable: JetStream failed midway (what was moved stays moved; run it again), or
            another process held the lock for longer than `timeout`.
        RedisError, OSError: Redis cannot be reached.
    """
    if not await pending(redis, subjects):
        return Migrated()
    lock, token = subjects.key("migration"), uuid.uuid4().hex
    deadline = time.monotonic() + timeout
    while not await redis.set(lock, token, nx=True, ex=LOCK_TTL):
        if time.monotonic() > deadline:
            raise Unavailable("another process has been migrating keys for too long")
        await asyncio.sleep(WAIT)  # another replica migrates; serve only once it is done
    try:
        if not await pending(redis, subjects):  # the other replica did it
            return Migrated()
        moved = Migrated(
            keys=await _keys(durable, redis, subjects),
            webhooks=await _webhooks(durable, redis, subjects),
            usage=await _usage(durable, redis, subjects),
        )
    finally:
        await redis.eval(_RELEASE, 1, lock, token)
    if moved:
        logger.info(
            "moved from Redis to JetStream: %d API keys, %d webhooks, usage of %d key/model pairs",
            moved.keys,
            moved.webhooks,
            moved.usage,
        )
    return moved


async def _keys(durable: DurableState, redis: aioredis.Redis, subjects: Subjects) -> int:
    store, index, moved = KeyStore(durable, subjects), subjects.key("keys"), 0
    for raw_id in sorted(await redis.smembers(index)):
        key_id = raw_id.decode()
        fields = _text(await redis.hgetall(subjects.key("key", key_id)))
        try:
            record = _key_record(key_id, fields) if fields.get("hash") else None
        except (ValueError, InvalidId) as exc:  # such a key failed every call: drop it
            logger.warning("key %s has a damaged record (%s); not moved", key_id, exc)
            record = None
        if record is not None:
            if await store.adopt(record, fields["hash"]):
                moved += 1
            else:
                logger.warning("key %s is in JetStream already; its Redis copy is dropped", key_id)
        await redis.delete(subjects.key("key", key_id))
        await redis.srem(index, key_id)
    await redis.delete(index)
    return moved


def _key_record(key_id: str, fields: dict[str, str]) -> KeyRecord:
    scopes = frozenset(Scope(s) for s in fields.get("scopes", "").split(",") if s in _SCOPES)
    limit, tokens = fields.get("rate_limit", ""), fields.get("token_limit", "")
    tools_text = fields.get("tools", "")
    # "" or absent: every tool; damaged: no tool rather than every tool.
    tools = (_json_list(tools_text) or ()) if tools_text else None
    return KeyRecord(
        key_id=key_id,
        name=fields.get("name", ""),
        scopes=scopes,
        rate_limit=Limit.parse(limit) if limit else None,
        created_at=float(fields.get("created_at", 0) or 0),
        token_limit=Limit.parse(tokens) if tokens else None,
        tools=tools,
        agents=_json_list(fields.get("agents", "")) or (),
    )


def _json_list(text: str) -> tuple[str, ...] | None:
    """A JSON list of strings; None if `text` is something else."""
    try:
        value = json.loads(text) if text else []
    except ValueError:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    return tuple(value)


async def _webhooks(durable: DurableState, redis: aioredis.Redis, subjects: Subjects) -> int:
    store, index, moved = WebhookStore(durable, redis, subjects), subjects.key("webhooks"), 0
    for raw_name in sorted(await redis.smembers(index)):
        name = raw_name.decode()
        fields = _text(await redis.hgetall(subjects.key("webhook", name)))
        try:
            hook = Webhook(
                name=name,
                agent_id=fields["agent_id"],
                secret=fields["secret"],
                created_at=float(fields.get("created_at", 0) or 0),
                tolerance_seconds=int(fields.get("tolerance_seconds", DEFAULT_TOLERANCE)),
            )
            if await store.adopt(hook):
                moved += 1
            else:
                logger.warning(
                    "webhook %r is in JetStream already; its Redis copy is dropped", name
                )
        except (KeyError, ValueError, InvalidId) as exc:
            logger.warning("webhook %r has a damaged definition (%s); not moved", name, exc)
        await redis.delete(subjects.key("webhook", name))
        await redis.srem(index, name)
    await redis.delete(index)
    return moved


async def _usage(durable: DurableState, redis: aioredis.Redis, subjects: Subjects) -> int:
    index = subjects.key("usage")
    if await redis.exists(subjects.key("usage", "seq")):
        return 0  # the new cache: nothing old to move
    store, moved = UsageStore(durable, redis, subjects), 0
    for raw_pair in sorted(await redis.smembers(index)):
        pair = raw_pair.decode()
        counts = _text(await redis.hgetall(subjects.key("usage", pair)))
        owner, _, escaped = pair.partition(":")
        try:
            totals = Usage(
                key_id=owner,
                model=unescape_token(escaped),
                **{f: int(counts.get(f, 0) or 0) for f in FIELDS},
            )
            # The id names the pair and its totals: a re-run stores the same event once.
            msg_id = f"migrate.{subjects.prefix}.{pair}." + ".".join(
                str(getattr(totals, f)) for f in FIELDS
            )
            await store.record(totals, msg_id=msg_id)
            moved += 1
        except (InvalidId, ValueError):
            logger.warning("usage pair %r is malformed; not moved", pair)
        await redis.delete(subjects.key("usage", pair))
        await redis.srem(index, pair)
    await redis.delete(index)
    return moved


def _text(raw: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw.items()}


_SCOPES = frozenset(s.value for s in Scope)
