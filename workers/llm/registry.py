"""Which model aliases are served right now: workers announce theirs in Redis every heartbeat.

p:llm:models               ZSET alias → last announcement by any worker (Unix seconds)
p:llm:workers:<alias~>     ZSET worker id → its last announcement
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from agentmesh.broker.subjects import Subjects, escape_token

# KEYS: workers-key prefix, models, then each alias escaped; ARGV: worker id, then each alias
_WITHDRAW = """
for i, alias in ipairs(ARGV) do
  if i > 1 then
    local workers = KEYS[1] .. ':' .. KEYS[i + 1]
    redis.call('ZREM', workers, ARGV[1])
    if redis.call('ZCARD', workers) == 0 then redis.call('ZREM', KEYS[2], alias) end
  end
end
return 1
"""


class ModelRegistry:
    def __init__(self, redis: aioredis.Redis, subjects: Subjects, *, timeout: float) -> None:
        self.redis = redis
        self.subjects = subjects
        self.timeout = timeout
        self._models = subjects.key("llm", "models")
        self._withdraw = redis.register_script(_WITHDRAW)

    def _workers(self, alias: str) -> str:
        return self.subjects.key("llm", "workers", escape_token(alias, what="model"))

    async def announce(self, worker_id: str, aliases: list[str]) -> None:
        now = time.time()
        ttl = int(self.timeout * 2 * 1000)
        async with self.redis.pipeline(transaction=False) as pipe:
            for alias in aliases:
                pipe.zadd(self._workers(alias), {worker_id: now})
                pipe.pexpire(self._workers(alias), ttl)
                pipe.zadd(self._models, {alias: now})
            await pipe.execute()

    async def withdraw(self, worker_id: str, aliases: list[str]) -> None:
        prefix = self.subjects.key("llm", "workers")
        escaped = [escape_token(a, what="model") for a in aliases]
        await self._withdraw(keys=[prefix, self._models, *escaped], args=[worker_id, *aliases])

    async def list(self) -> list[str]:
        """Aliases at least one worker announced within the timeout, sorted."""
        cutoff = time.time() - self.timeout
        found = await self.redis.zrangebyscore(self._models, f"({cutoff}", "+inf")
        return sorted(a.decode() for a in found)
