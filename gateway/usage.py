"""LLM usage per API key and model: one JetStream event per call, totals cached in Redis.

The record is the stream `agentmesh_usage`: every call a gateway replica settles is one JSON event
on `agentmesh.usage.<p>.<key id>.<escaped model>` (`key_id`, `model`, and the counts `requests`,
`prompt_tokens`, `completion_tokens`, `total_tokens`, `errors`), acked by JetStream before the
call's reply goes out. Calls made without a key (auth off) count under `anonymous`.

Redis holds the totals only as a cache, folded from the stream when they are read: the HASH
`<p>:usage:<key_id>:<escaped model>` with the five counts, the SET `<p>:usage` of those pairs
(so a reader need not scan), and the HASH `<p>:usage:seq`: `seq`, the last stream sequence folded
in, and `stream`, the creation time of the stream it counts (a stream made again starts over).
`read` folds what is new first, in one Lua script per batch that applies only events above `seq`,
so readers on any number of replicas never count an event twice; after a Redis loss the totals
are folded again from the first event, exactly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from contextlib import aclosing
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

from agentmesh.broker.durable import USAGE_STREAM, DurableState, Event, StreamState
from agentmesh.broker.subjects import Subjects, escape_token, unescape_token, validate_id
from agentmesh.schemas.errors import InvalidId, Unavailable

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
FIELDS = ("requests", *TOKEN_FIELDS, "errors")
_CATCH_UP_ATTEMPTS = 5  # a Redis loss during a read restarts the fold; more in a row is an outage

# KEYS: the marker, the set of pairs. ARGV: the counters' key prefix, the stream's identity, the
# marker the batch continues from, the sequence the reader has seen every event up to (or 0),
# then per event: seq, pair ("" to pass over it), and the five counts in FIELDS order. Returns
# the events applied, or -1 when the marker is below where the batch continues from: Redis lost
# what came between, and the reader must start again from the marker.
_FOLD = """
local stored = redis.call('HGET', KEYS[1], 'stream')
if stored and stored ~= ARGV[2] then
  for _, pair in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    redis.call('DEL', ARGV[1] .. pair)
  end
  redis.call('DEL', KEYS[1], KEYS[2])
end
local last = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if last < tonumber(ARGV[3]) then return -1 end
local fields = {'requests', 'prompt_tokens', 'completion_tokens', 'total_tokens', 'errors'}
local applied = 0
for i = 5, #ARGV, 7 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    if ARGV[i + 1] ~= '' then  -- '': a malformed event, passed over
      local key = ARGV[1] .. ARGV[i + 1]
      for f = 1, 5 do
        local n = tonumber(ARGV[i + 1 + f])
        if n ~= 0 then redis.call('HINCRBY', key, fields[f], n) end
      end
      redis.call('SADD', KEYS[2], ARGV[i + 1])
      applied = applied + 1
    end
    last = seq
  end
end
if tonumber(ARGV[4]) > last then last = tonumber(ARGV[4]) end
redis.call('HSET', KEYS[1], 'seq', last, 'stream', ARGV[2])
return applied
"""


@dataclass(frozen=True, slots=True)
class Usage:
    """What one key spent on one model alias, since its counters began."""

    key_id: str  # or "anonymous"
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    errors: int = 0


def tokens_of(usage: object) -> dict[str, int]:
    """The token counts of an OpenAI `usage` object; missing or malformed fields are left out
    (an upstream's answer is not trusted to be well formed)."""
    if not isinstance(usage, Mapping):
        return {}
    out = {}
    for name in TOKEN_FIELDS:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            out[name] = value
    if "total_tokens" not in out and {"prompt_tokens", "completion_tokens"} <= out.keys():
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


class UsageStore:
    """Record calls in the usage stream and read the totals (through the Redis cache)."""

    def __init__(self, durable: DurableState, redis: aioredis.Redis, subjects: Subjects) -> None:
        self._durable = durable
        self._redis = redis
        self._subjects = subjects
        self._fold = redis.register_script(_FOLD)

    async def add(
        self, key_id: str | None, model: str, tokens: Mapping[str, int], *, error: bool
    ) -> None:
        """Count one call: one request, its tokens, and an error if it failed. Returns once
        JetStream has stored it (one round trip).

        Raises:
            Unavailable: JetStream did not ack the event (callers log it; a call never fails
                because its usage could not be counted).
        """
        counts = {field: tokens.get(field, 0) for field in TOKEN_FIELDS}
        await self.record(
            Usage(key_id or ANONYMOUS, model, requests=1, errors=int(error), **counts)
        )

    async def record(self, usage: Usage, *, msg_id: str | None = None) -> None:
        """Add `usage`'s counts to its key and model (`msg_id`: see `DurableState.append`)."""
        subject = self._subjects.usage(usage.key_id, usage.model)
        data = json.dumps(asdict(usage)).encode()
        await self._durable.append(USAGE_STREAM, subject, data, msg_id=msg_id)

    async def read(self, key_id: str | None = None) -> list[Usage]:
        """The totals of every (key, model) pair, or of `key_id`'s, by key then model; exact as
        of the call (every event stored before it is counted).

        Raises:
            Unavailable: JetStream cannot be reached to catch up.
            RedisError, OSError: Redis cannot be reached.
        """
        await self.catch_up()
        members = sorted(
            m.decode() for m in await self._redis.smembers(self._subjects.key("usage"))
        )
        if key_id is not None:
            members = [m for m in members if m.partition(":")[0] == key_id]
        if not members:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hgetall(self._subjects.key("usage", member))
            raws = await pipe.execute()
        out = []
        for member, raw in zip(members, raws, strict=True):
            owner, _, escaped = member.partition(":")
            counts = {k.decode(): int(v) for k, v in raw.items() if k.decode() in FIELDS}
            out.append(Usage(key_id=owner, model=unescape_token(escaped), **counts))
        return out

    async def catch_up(self) -> int:
        """Fold the events the cache lacks into it; returns how many were applied."""
        marker = self._subjects.key("usage", "seq")
        applied = 0
        for _ in range(_CATCH_UP_ATTEMPTS):
            state = await self._durable.stream_state(USAGE_STREAM)
            if state is None:  # no call was ever counted (or the stream was deleted)
                return applied
            seq, stream = await self._redis.hmget(marker, ["seq", "stream"])
            same = stream is not None and stream.decode() == state.created
            start = int(seq or 0) if same else 0
            if same and start >= state.last_seq:
                return applied
            done, count = await self._fold_from(start, state)
            applied += count
            if done:
                return applied
            logger.info("usage: the Redis cache changed during a fold (lost?); folding again")
        raise Unavailable("cannot read usage: Redis keeps losing its cache while it is folded")

    async def _fold_from(self, start: int, state: StreamState) -> tuple[bool, int]:
        """Fold from after `start` up to `state.last_seq`; False if a gap ended it."""
        keys = [self._subjects.key("usage", "seq"), self._subjects.key("usage")]
        head = [self._subjects.key("usage", ""), state.created]
        prev, applied = start, 0
        events = self._durable.events(
            USAGE_STREAM, self._subjects.usage(), after=start, until=state.last_seq
        )
        async with aclosing(events):  # its consumer is deleted even if a fold fails
            async for batch in events:
                args = [arg for event in batch for arg in _fold_args(event)]
                result = int(await self._fold(keys=keys, args=[*head, prev, 0, *args]))
                if result < 0:
                    return False, applied
                applied += result
                prev = batch[-1].seq if batch else prev
        # Every event up to last_seq is in: later readers need not look below it.
        result = int(await self._fold(keys=keys, args=[*head, prev, state.last_seq]))
        return result >= 0, applied


def _fold_args(event: Event) -> list[str | int]:
    """seq, pair and counts of an event; a malformed one (not from a gateway) counts nothing."""
    try:
        body = json.loads(event.data)
        key_id = validate_id(body["key_id"], what="key id")
        pair = f"{key_id}:{escape_token(body['model'], what='model')}"
        counts = [body.get(field, 0) for field in FIELDS]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            raise ValueError("counts must be integers of at least 0")
    except (ValueError, KeyError, TypeError, InvalidId) as exc:
        logger.warning("usage: event %d is malformed (%s); not counted", event.seq, exc)
        return [event.seq, "", 0, 0, 0, 0, 0]
    return [event.seq, pair, *counts]
