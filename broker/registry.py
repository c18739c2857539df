"""The service registry in Redis: every instance of every kind, alive or not, and what it serves.

One liveness primitive for the whole mesh. Each instance writes its `ServiceRecord` every
heartbeat interval; an instance whose last heartbeat is older than the timeout is gone. Liveness
is read from heartbeat scores, never from key expiry, and any live instance sweeps the dead ones
(atomically, in Lua) and publishes their offline events (`broker.announcer`). Keys (prefix `p`):

    p:svc                    ZSET  instance_id → last heartbeat (Unix seconds, Redis TIME)
    p:svc:<instance_id>      STRING ServiceRecord JSON (without last_heartbeat)
    p:kind:<kind>            ZSET  instance_id → last heartbeat, the instances of one kind
    p:by:<field>:<name>      ZSET  instance_id → last heartbeat, for each name in serves.<field>
    p:names:<field>          ZSET  name → last heartbeat of any instance serving it
    p:stats:messages         INT   calls served by agent instances that have left the registry
    p:counted:<instance_id>  INT   what a swept agent added there (taken back if it returns)
    p:gone:<instance_id>     STRING a deregistered instance: its late heartbeats are refused

Every key but p:stats:messages expires after twice the timeout (garbage collection only). Readers
compare scores with Redis's clock, not their own. See docs/PROTOCOL.md §5.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agentmesh.schemas.agent import InstanceInfo, Presence, PresenceStatus
from agentmesh.schemas.service import InvalidRecord, ServiceRecord

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from agentmesh.broker.subjects import Subjects

logger = logging.getLogger(__name__)

# Removes instance ARGV[2]'s name `n` of field `f` from the indexes (shared by the scripts).
_WITHDRAW = """
local function withdraw(p, f, n, iid)
  -- the name's score becomes its newest remaining instance's, so it ages out with that one
  local by = p .. ':by:' .. f .. ':' .. n
  redis.call('ZREM', by, iid)
  local top = redis.call('ZRANGE', by, -1, -1, 'WITHSCORES')
  if top[2] then
    redis.call('ZADD', p .. ':names:' .. f, top[2], n)
  else
    redis.call('ZREM', p .. ':names:' .. f, n)
  end
end
local function names_of(rec)
  local out = {}
  if type(rec) == 'table' and type(rec.serves) == 'table' then
    for f, names in pairs(rec.serves) do
      if type(names) == 'table' then
        for _, n in ipairs(names) do
          if type(n) == 'string' then table.insert(out, {f, n}) end
        end
      end
    end
  end
  return out
end
local function decode(json)
  if not json then return nil end
  local ok, rec = pcall(cjson.decode, json)
  if ok and type(rec) == 'table' then return rec end
  return nil
end
local function forget(p, iid, final, ttl)
  -- remove one instance everywhere; returns its record JSON (or '') for the offline event.
  -- `final`: its served count now (a clean stop), else the count of its last record.
  local key = p .. ':svc:' .. iid
  local json = redis.call('GET', key)
  redis.call('ZREM', p .. ':svc', iid)
  redis.call('DEL', key)
  local rec = decode(json)
  for _, fn in ipairs(names_of(rec)) do withdraw(p, fn[1], fn[2], iid) end
  if rec and type(rec.kind) == 'string' then redis.call('ZREM', p .. ':kind:' .. rec.kind, iid) end
  if rec and rec.kind == 'agent' then
    local served = final
    if not served and type(rec.load) == 'table' then served = tonumber(rec.load.served) end
    served = math.floor(tonumber(served) or 0)
    if served > 0 then
      redis.call('INCRBY', p .. ':stats:messages', served)
      -- if it comes back (it was only slow), its heartbeat takes this back out of the total
      redis.call('SET', p .. ':counted:' .. iid, served, 'PX', ttl)
    end
  end
  return json or ''
end
"""

# The heartbeat, for any language (PROTOCOL §5): EVAL it with 0 keys and
# ARGV: prefix, instance id, record JSON, ttl ms. Returns 1 if the instance is new.
HEARTBEAT_SCRIPT = (
    _WITHDRAW
    + """
local p, iid, json, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('EXISTS', p .. ':gone:' .. iid) == 1 then return -1 end  -- it deregistered
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local key = p .. ':svc:' .. iid
local rec = decode(json)
local keep = {}
for _, fn in ipairs(names_of(rec)) do keep[fn[1] .. '\\0' .. fn[2]] = true end
for _, fn in ipairs(names_of(decode(redis.call('GET', key)))) do
  if not keep[fn[1] .. '\\0' .. fn[2]] then withdraw(p, fn[1], fn[2], iid) end
end
local added = redis.call('ZADD', p .. ':svc', t, iid)
redis.call('PEXPIRE', p .. ':svc', ttl)
if added == 1 then
  local counted = redis.call('GET', p .. ':counted:' .. iid)
  if counted then
    redis.call('DECRBY', p .. ':stats:messages', counted)
    redis.call('DEL', p .. ':counted:' .. iid)
  end
end
redis.call('SET', key, json, 'PX', ttl)
if rec and type(rec.kind) == 'string' then
  redis.call('ZADD', p .. ':kind:' .. rec.kind, t, iid)
  redis.call('PEXPIRE', p .. ':kind:' .. rec.kind, ttl)
end
for _, fn in ipairs(names_of(rec)) do
  local by, names = p .. ':by:' .. fn[1] .. ':' .. fn[2], p .. ':names:' .. fn[1]
  redis.call('ZADD', by, t, iid)
  redis.call('PEXPIRE', by, ttl)
  redis.call('ZADD', names, t, fn[2])
  redis.call('PEXPIRE', names, ttl)
end
return added
"""
)

# ARGV: prefix, instance id, its served count now, ttl ms. Returns the record JSON it removed
# ('' if none, false if it was not registered). Leaves a tombstone (`p:gone:<id>`, one ttl) so a
# heartbeat still in flight cannot register the instance again.
_DEREGISTER = (
    _WITHDRAW
    + """
local p, iid = ARGV[1], ARGV[2]
redis.call('SET', p .. ':gone:' .. iid, 1, 'PX', ARGV[4])
local registered = redis.call('ZSCORE', p .. ':svc', iid) ~= false
local json = forget(p, iid, tonumber(ARGV[3]), ARGV[4])
if not registered then return false end
return json
"""
)

# ARGV: prefix, timeout seconds, max instances, ttl ms. Returns {instance id, record JSON, ...}.
_SWEEP = (
    _WITHDRAW
    + """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local p = ARGV[1]
local dead = redis.call('ZRANGEBYSCORE', p .. ':svc', '-inf', '(' .. (t - tonumber(ARGV[2])),
  'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, iid in ipairs(dead) do
  table.insert(out, iid)
  table.insert(out, forget(p, iid, nil, ARGV[4]))
end
return out
"""
)

_SWEEP_BATCH = 1000
_CLOCK_CHECK = 60.0  # seconds between reads of Redis's clock
_MAX_LOGGED = 10_000


class Registry:
    """Announce, withdraw, sweep and read service instances of one mesh (one prefix)."""

    def __init__(self, redis: aioredis.Redis, subjects: Subjects, *, timeout: float) -> None:
        self.redis = redis
        self.subjects = subjects
        self.prefix = subjects.prefix
        self.timeout = timeout
        self._ttl_ms = int(math.ceil(timeout * 2 * 1000))
        self._heartbeat = redis.register_script(HEARTBEAT_SCRIPT)
        self._deregister = redis.register_script(_DEREGISTER)
        self._sweep = redis.register_script(_SWEEP)
        self._last_sweep = -math.inf
        self._logged: set[str] = set()  # keys of invalid records already logged
        self._offset = 0.0  # Redis clock minus ours: scores are Redis TIME
        self._offset_read = -math.inf

    async def _cutoff(self) -> float:
        """Scores older than this are dead, on Redis's clock (read again every minute)."""
        now = time.monotonic()
        if now - self._offset_read > _CLOCK_CHECK:
            seconds, micros = await self.redis.time()
            self._offset = seconds + micros / 1e6 - time.time()
            self._offset_read = now
        return time.time() + self._offset - self.timeout

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # Writing -------------------------------------------------------------------------------
    async def heartbeat(self, record: ServiceRecord) -> bool:
        """Announce `record` as alive now; True if the instance was not registered before
        (False too for an instance that deregistered: it is not registered again)."""
        body = record.model_dump_json(exclude={"last_heartbeat"}, exclude_none=True)
        added = await self._heartbeat(args=[self.prefix, record.instance_id, body, self._ttl_ms])
        return added == 1

    async def add_messages(self, served: int) -> None:
        """Count calls an agent instance served after it deregistered (while draining)."""
        if served > 0:
            await self.redis.incrby(self._key("stats", "messages"), served)

    async def deregister(
        self, instance_id: str, *, served: int | None = None
    ) -> ServiceRecord | None:
        """Remove an instance at once; its record if it was registered.

        `served`: its count of calls taken, as of now (else its last record's is kept).
        """
        final = "" if served is None else str(served)
        found = await self._deregister(args=[self.prefix, instance_id, final, self._ttl_ms])
        if found is None:
            return None
        return self._parse(instance_id, found, 0.0) if found else None

    def sweep_due(self, interval: float) -> bool:
        """At most one sweep per interval per registry: a gateway holding a thousand sockets
        shares one registry, and a sweep per socket heartbeat is wasted work."""
        now = time.monotonic()
        if now - self._last_sweep < interval:
            return False
        self._last_sweep = now
        return True

    async def sweep(self) -> list[ServiceRecord | InvalidRecord | str]:
        """Remove instances whose last heartbeat is older than the timeout.

        Returns their records (an instance id alone when its record had already expired).
        """
        flat = await self._sweep(args=[self.prefix, self.timeout, _SWEEP_BATCH, self._ttl_ms])
        out: list[ServiceRecord | InvalidRecord | str] = []
        for i in range(0, len(flat), 2):
            iid, body = flat[i].decode(errors="replace"), flat[i + 1]
            out.append(self._parse(iid, body, 0.0) if body else iid)
        return out

    # Reading -------------------------------------------------------------------------------
    async def instances(self, kind: str | None = None) -> list[ServiceRecord | InvalidRecord]:
        """Live instances (of one kind, or all), oldest first; invalid records as such."""
        cutoff = await self._cutoff()
        index = self._key("svc") if kind is None else self._key("kind", kind)
        scored = await self.redis.zrangebyscore(index, f"({cutoff}", "+inf", withscores=True)
        records = await self._records([(i.decode(errors="replace"), s) for i, s in scored])
        if kind is not None:  # an invalid record is listed under its key's index, not a kind
            records = [r for r in records if r.kind in (kind, "invalid")]
        return sorted(records, key=_started)

    async def names(self, field: str) -> list[str]:
        """Names some live instance serves in `serves.<field>` (e.g. "models"), sorted."""
        cutoff = await self._cutoff()
        found = await self.redis.zrangebyscore(self._key("names", field), f"({cutoff}", "+inf")
        return sorted(n.decode(errors="replace") for n in found)

    async def serving(self, field: str, name: str) -> list[ServiceRecord]:
        """Live, valid instances that serve `name` in `serves.<field>`."""
        cutoff = await self._cutoff()
        scored = await self.redis.zrangebyscore(
            self._key("by", field, name), f"({cutoff}", "+inf", withscores=True
        )
        records = await self._records([(i.decode(errors="replace"), s) for i, s in scored])
        return [r for r in records if isinstance(r, ServiceRecord)]

    async def agents(self) -> list[Presence]:
        """Every online agent with its card and instances, by agent id (two Redis reads)."""
        by_agent: dict[str, list[ServiceRecord]] = {}
        for record in await self.instances("agent"):
            if isinstance(record, ServiceRecord) and record.card is not None:
                by_agent.setdefault(record.service_id, []).append(record)
        return [_presence(by_agent[agent_id]) for agent_id in sorted(by_agent)]

    async def agent(self, agent_id: str) -> Presence | None:
        """One online agent, or None. The card is the newest instance's."""
        records = [r for r in await self.serving("agents", agent_id) if r.card is not None]
        return _presence(records) if records else None

    async def agent_count(self) -> int:
        """Agents online now (with at least one valid record)."""
        return len(await self.agents())

    async def messages(self) -> int:
        """Calls served by agents of the mesh: live instances' counts plus those that left."""
        left = int(await self.redis.get(self._key("stats", "messages")) or 0)
        live = await self.instances("agent")
        return left + sum(r.load.served for r in live if isinstance(r, ServiceRecord))

    async def _records(
        self, scored: list[tuple[str, float]]
    ) -> list[ServiceRecord | InvalidRecord]:
        if not scored:
            return []
        bodies = await self.redis.mget([self._key("svc", iid) for iid, _ in scored])
        out: list[ServiceRecord | InvalidRecord] = []
        for (iid, score), body in zip(scored, bodies, strict=True):
            if body is not None:  # None: deregistered or expired between the two reads
                out.append(self._parse(iid, body, score))
        return out

    def _parse(self, instance_id: str, body: bytes, score: float) -> ServiceRecord | InvalidRecord:
        try:
            record = ServiceRecord.model_validate_json(body)
            if record.instance_id != instance_id:
                raise ValueError(f"instance_id {record.instance_id!r} under another id's key")
        except (ValidationError, ValueError) as exc:
            key = self._key("svc", instance_id)
            error = _one_line(exc)
            if key not in self._logged:
                if len(self._logged) >= _MAX_LOGGED:
                    self._logged.clear()
                self._logged.add(key)
                logger.warning("skipping the invalid registry record %s: %s", key, error)
            return InvalidRecord(
                instance_id=instance_id, key=key, error=error, last_heartbeat=score
            )
        record.last_heartbeat = score
        return record


def _presence(records: list[ServiceRecord]) -> Presence:
    """An agent as the seed API shows it, from its live instances' records."""
    newest = max(records, key=_started)  # the newest instance's card: replicas may differ
    assert newest.card is not None
    instances = [
        InstanceInfo(
            instance_id=r.instance_id,
            connected_at=r.started_at,
            last_heartbeat=r.last_heartbeat,
            host=r.host,
            pid=r.pid,
            via=r.via,
        )
        for r in sorted(records, key=_started)
    ]
    return Presence(
        **newest.card.model_dump(),
        status=PresenceStatus.ONLINE,
        last_heartbeat=max(r.last_heartbeat for r in records),
        connected_at=min(r.started_at for r in records),
        instances=instances,
    )


def _started(record: ServiceRecord | InvalidRecord) -> tuple[float, str]:
    return (getattr(record, "started_at", 0.0), record.instance_id)


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'record'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)
