"""Per-agent task limits shared by every executor: a Redis sorted set of leases per agent.

`<p>:tasks:running:<agent_id>` holds the ids of the agent's tasks running now, each scored with
the Redis time its lease ends (three task leases from its last renewal). A lease that ran out (its
executor died) is dropped at the next admission, so a dead executor's place comes back. Redis
unreachable: nobody is admitted (a limit that cannot be checked is not ignored).
"""

from __future__ import annotations

import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentmesh.broker.subjects import Subjects, validate_id

logger = logging.getLogger(__name__)

# KEYS[1]: the agent's running set; ARGV: task id, limit, lease seconds. A task already holding
# a place keeps it.
_ADMIT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], t + 3 * tonumber(ARGV[3]), ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(3 * tonumber(ARGV[3])) + 60)
  return 1
end
return 0
"""
_RENEW = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
return redis.call('ZADD', KEYS[1], 'XX', t + 3 * tonumber(ARGV[2]), ARGV[1])
"""


class AgentLimits:
    """At most `limits[agent_id]` tasks of that agent at once, mesh-wide (give every executor
    the same limits)."""

    def __init__(self, limits: dict[str, int] | None = None) -> None:
        self.limits = {validate_id(k): int(v) for k, v in (limits or {}).items()}
        if any(v < 1 for v in self.limits.values()):
            raise ValueError("an agent limit must be at least 1")
        self._held: dict[str, str] = {}  # task id → agent id, for the places this process holds

    def limited(self, agent_id: str) -> bool:
        return agent_id in self.limits

    async def admit(
        self, redis: aioredis.Redis, subjects: Subjects, agent_id: str, task_id: str, lease: float
    ) -> bool:
        """Take one of the agent's places; False if all are taken (or Redis is away)."""
        key = subjects.key("tasks", "running", agent_id)
        limit = str(self.limits[agent_id])
        try:
            admitted = bool(await redis.eval(_ADMIT, 1, key, task_id, limit, str(lease)))
        except (RedisError, OSError) as exc:
            logger.warning("cannot check the task limit of %s (%s); waiting", agent_id, exc)
            return False
        if admitted:
            self._held[task_id] = agent_id
        return admitted

    async def renew(
        self, redis: aioredis.Redis, subjects: Subjects, task_id: str, lease: float
    ) -> None:
        agent_id = self._held.get(task_id)
        if agent_id is not None:
            key = subjects.key("tasks", "running", agent_id)
            with contextlib.suppress(RedisError, OSError):
                await redis.eval(_RENEW, 1, key, task_id, str(lease))

    async def release(self, redis: aioredis.Redis, subjects: Subjects, task_id: str) -> None:
        agent_id = self._held.pop(task_id, None)
        if agent_id is not None:
            with contextlib.suppress(RedisError, OSError):
                await redis.zrem(subjects.key("tasks", "running", agent_id), task_id)
