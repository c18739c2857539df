"""The presence registry in Redis: who is online, with which instances, since when.

Each instance re-announces itself every heartbeat interval; an instance whose last heartbeat is
older than the timeout is gone. Liveness is read from heartbeat scores, never from key expiry
or keyspace notifications, and any live instance sweeps the dead ones (atomically, in Lua) and
publishes their offline events. Keys (prefix `p`):

    p:agents                 ZSET  agent_id → last heartbeat of any instance (Unix seconds)
    p:instances:<agent_id>   ZSET  instance_id → last heartbeat
    p:instance:<agent_id>    HASH  instance_id → InstanceInfo JSON (connected_at, host, pid, via)
    p:card:<agent_id>        STRING AgentCard JSON
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.agent import AgentCard, InstanceInfo, Presence, PresenceEvent, PresenceStatus
from agentmesh.schemas.codec import encode

if TYPE_CHECKING:
    from agentmesh.broker.bus import Bus

logger = logging.getLogger(__name__)

# KEYS: agents, instances, instance info, card, message counter
# ARGV: agent_id, instance_id, card JSON, info JSON, timeout seconds, key TTL ms, messages served
_HEARTBEAT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (t - tonumber(ARGV[5])))
for _, id in ipairs(stale) do
  if id ~= ARGV[2] then
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
local added = redis.call('ZADD', KEYS[2], t, ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[4])
redis.call('SET', KEYS[4], ARGV[3], 'PX', ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('ZADD', KEYS[1], t, ARGV[1])
if tonumber(ARGV[7]) > 0 then redis.call('INCRBY', KEYS[5], ARGV[7]) end
local gone = {}
for _, id in ipairs(stale) do if id ~= ARGV[2] then table.insert(gone, id) end end
return {added, gone}
"""

# KEYS: agents, instances, instance info, card; ARGV: agent_id, instance_id
_DEREGISTER = """
local removed = redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
if redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
return removed
"""

# KEYS: agents; ARGV: key prefix, timeout seconds. Removes agents with no live instance.
_SWEEP = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (t - tonumber(ARGV[2])))
local out = {}
for _, agent in ipairs(dead) do
  if redis.call('ZREM', KEYS[1], agent) == 1 then
    local inst = ARGV[1] .. ':instances:' .. agent
    for _, id in ipairs(redis.call('ZRANGE', inst, 0, -1)) do
      table.insert(out, agent)
      table.insert(out, id)
    end
    redis.call('DEL', inst, ARGV[1] .. ':instance:' .. agent, ARGV[1] .. ':card:' .. agent)
  end
end
return out
"""


class PresenceRegistry:
    """Register, heartbeat, deregister, list and get agents (SDK agents and gateway alike)."""

    def __init__(
        self, redis: aioredis.Redis, subjects: Subjects, *, heartbeat_timeout: float
    ) -> None:
        self.redis = redis
        self.subjects = subjects
        self.timeout = heartbeat_timeout
        self._ttl_ms = int(math.ceil(heartbeat_timeout * 2 * 1000))
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._deregister = redis.register_script(_DEREGISTER)
        self._sweep = redis.register_script(_SWEEP)
        self._last_sweep = -math.inf

    def _keys(self, agent_id: str) -> list[str]:
        k = self.subjects.key
        return [k("agents"), k("instances", agent_id), k("instance", agent_id), k("card", agent_id)]

    async def heartbeat(
        self, card: AgentCard, instance: InstanceInfo, *, served: int = 0
    ) -> tuple[bool, list[str]]:
        """Announce `instance` of `card.agent_id` as alive now; add `served` to the mesh count.

        Returns (whether the instance is new, instance ids of this agent found dead).
        """
        info = instance.model_dump(exclude={"last_heartbeat"}, exclude_none=True)
        added, gone = await self._heartbeat(
            keys=[*self._keys(card.agent_id), self.subjects.key("stats", "messages")],
            args=[
                card.agent_id,
                instance.instance_id,
                card.model_dump_json(exclude_none=True),
                json.dumps(info),
                self.timeout,
                self._ttl_ms,
                served,
            ],
        )
        return bool(added), [g.decode() for g in gone]

    async def deregister(self, agent_id: str, instance_id: str) -> bool:
        return bool(await self._deregister(keys=self._keys(agent_id), args=[agent_id, instance_id]))

    def sweep_due(self, interval: float) -> bool:
        """At most one sweep per interval per registry: a gateway holding a thousand sockets
        shares one registry, and a sweep per socket heartbeat is wasted work."""
        now = time.monotonic()
        if now - self._last_sweep < interval:
            return False
        self._last_sweep = now
        return True

    async def sweep(self) -> list[tuple[str, str]]:
        """Remove agents none of whose instances heartbeated in time; return (agent, instance)."""
        flat = await self._sweep(
            keys=[self.subjects.key("agents")], args=[self.subjects.prefix, self.timeout]
        )
        return [(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)]

    async def list(self) -> list[Presence]:
        cutoff = time.time() - self.timeout
        ids = await self.redis.zrangebyscore(self.subjects.key("agents"), f"({cutoff}", "+inf")
        if not ids:
            return []
        return [p for p in await self._load([i.decode() for i in ids], cutoff) if p is not None]

    async def get(self, agent_id: str) -> Presence | None:
        return (await self._load([agent_id], time.time() - self.timeout))[0]

    async def add_served(self, served: int) -> None:
        if served > 0:
            await self.redis.incrby(self.subjects.key("stats", "messages"), served)

    async def messages(self) -> int:
        """Requests served by all instances of the mesh, as of their last heartbeats."""
        return int(await self.redis.get(self.subjects.key("stats", "messages")) or 0)

    async def count(self) -> int:
        cutoff = time.time() - self.timeout
        return int(await self.redis.zcount(self.subjects.key("agents"), f"({cutoff}", "+inf"))

    async def _load(self, agent_ids: list[str], cutoff: float) -> list[Presence | None]:
        k = self.subjects.key
        async with self.redis.pipeline(transaction=False) as pipe:
            for agent_id in agent_ids:
                pipe.get(k("card", agent_id))
                pipe.zrangebyscore(k("instances", agent_id), f"({cutoff}", "+inf", withscores=True)
                pipe.hgetall(k("instance", agent_id))
            raw = await pipe.execute()
        out: list[Presence | None] = []
        for i in range(len(agent_ids)):
            card_json, scores, infos = raw[3 * i : 3 * i + 3]
            if not card_json or not scores:
                out.append(None)
                continue
            instances = []
            for iid, score in scores:
                info = json.loads(infos.get(iid, b"{}") or b"{}")
                info.update(instance_id=iid.decode(), last_heartbeat=score)
                info.setdefault("connected_at", score)
                instances.append(InstanceInfo.model_validate(info))
            card = AgentCard.model_validate_json(card_json)
            out.append(
                Presence(
                    **card.model_dump(),
                    status=PresenceStatus.ONLINE,
                    last_heartbeat=max(x.last_heartbeat for x in instances),
                    connected_at=min(x.connected_at for x in instances),
                    instances=instances,
                )
            )
        return out


class Heartbeat:
    """Keeps one instance present: heartbeats, sweeps the dead, publishes presence events.

    Redis being down is logged and retried at the next tick; after a Redis restart the next
    heartbeat rebuilds the record, so presence is back within one interval.
    """

    def __init__(
        self,
        registry: PresenceRegistry,
        bus: Bus,
        card: AgentCard,
        instance: InstanceInfo,
        *,
        interval: float,
    ) -> None:
        self.registry = registry
        self.bus = bus
        self.card = card
        self.instance = instance
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._failing = False

    async def start(self) -> None:
        await self.beat()  # present before start() returns; errors surface to the caller
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        try:
            await self.registry.add_served(self.bus.take_handled())
            if await self.registry.deregister(self.card.agent_id, self.instance.instance_id):
                await self._publish(
                    self.card.agent_id,
                    self.instance.instance_id,
                    PresenceStatus.OFFLINE,
                    "deregistered",
                )
        except (RedisError, OSError) as exc:
            logger.warning("could not deregister %s: %s", self.card.agent_id, exc)

    async def beat(self) -> None:
        served = self.bus.take_handled()
        try:
            added, gone = await self.registry.heartbeat(self.card, self.instance, served=served)
        except BaseException:
            self.bus.handled += served  # counted at the next heartbeat instead
            raise
        if added:
            await self._publish(
                self.card.agent_id, self.instance.instance_id, PresenceStatus.ONLINE
            )
        dead = [(self.card.agent_id, i) for i in gone]
        if self.registry.sweep_due(self.interval):
            dead += await self.registry.sweep()
        for agent_id, instance_id in dead:
            await self._publish(agent_id, instance_id, PresenceStatus.OFFLINE, "heartbeat timeout")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
                if self._failing:
                    logger.info("presence of %s restored", self.card.agent_id)
                self._failing = False
            except (RedisError, OSError) as exc:
                if not self._failing:
                    logger.warning("heartbeat of %s failed (%s); retrying", self.card.agent_id, exc)
                self._failing = True

    async def _publish(
        self, agent_id: str, instance_id: str, event: PresenceStatus, reason: str | None = None
    ) -> None:
        body = encode(
            PresenceEvent(
                event=event,
                agent_id=agent_id,
                instance_id=instance_id,
                timestamp=time.time(),
                reason=reason,
            )
        )
        try:
            await self.bus.publish(self.bus.subjects.presence_events(agent_id), body)
        except Exception:  # noqa: BLE001 - an event lost to a NATS outage must not stop heartbeats
            logger.debug("could not publish presence event for %s", agent_id)
