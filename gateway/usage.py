"""LLM usage per API key and model, counted in Redis by every gateway replica.

Each (key, model) pair has the HASH `<p>:usage:<key_id>:<escaped model>` with the fields
`requests`, `prompt_tokens`, `completion_tokens`, `total_tokens` and `errors`, and a member
`<key_id>:<escaped model>` in the SET `<p>:usage`, so a reader need not scan. Calls made without
a key (auth off) count under `anonymous`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from agentmesh.broker.subjects import Subjects, escape_token, unescape_token

ANONYMOUS = "anonymous"
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
FIELDS = ("requests", *TOKEN_FIELDS, "errors")


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
    """Add to and read the usage counters of a mesh's Redis."""

    def __init__(self, redis: aioredis.Redis, subjects: Subjects) -> None:
        self._redis = redis
        self._subjects = subjects

    async def add(
        self, key_id: str | None, model: str, tokens: Mapping[str, int], *, error: bool
    ) -> None:
        """Count one call: one request, its tokens, and an error if it failed. One round trip.

        Raises:
            RedisError, OSError: Redis cannot be reached (callers log it; a call never fails
                because its usage could not be counted).
        """
        member = f"{key_id or ANONYMOUS}:{escape_token(model, what='model')}"
        name = self._subjects.key("usage", member)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hincrby(name, "requests", 1)
            for field, value in tokens.items():
                if value:
                    pipe.hincrby(name, field, value)
            if error:
                pipe.hincrby(name, "errors", 1)
            pipe.sadd(self._subjects.key("usage"), member)
            await pipe.execute()

    async def read(self, key_id: str | None = None) -> list[Usage]:
        """The counters of every (key, model) pair, or of `key_id`'s, by key then model."""
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
