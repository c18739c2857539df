"""`Announcer`: keeps one service instance in the registry and tells the mesh when any come or go.

Every heartbeat interval (and at once after `poke()`) it writes the instance's current record;
at most once per interval per registry it sweeps the dead instances of every kind. Online and
offline events go to `<p>.svc.<kind>.<instance_id>` (a `ServiceEvent`), and for agents also to
`<p>.presence.<agent_id>` (a `PresenceEvent`, PROTOCOL §5).

Redis being down is logged and retried at the next tick; after a Redis restart the next
heartbeat rebuilds the record, so the instance is back within one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from agentmesh.schemas.agent import PresenceEvent, PresenceStatus
from agentmesh.schemas.codec import encode
from agentmesh.schemas.errors import InvalidId
from agentmesh.schemas.service import ServiceEvent, ServiceKind, ServiceRecord

if TYPE_CHECKING:
    from agentmesh.broker.bus import Bus
    from agentmesh.broker.registry import Registry

logger = logging.getLogger(__name__)

_STOP_WAIT = 5.0  # seconds a heartbeat in progress may take to finish when stopping


class Announcer:
    """Heartbeats one instance's record (`record()` is called at every beat)."""

    def __init__(
        self,
        registry: Registry,
        bus: Bus,
        record: Callable[[], ServiceRecord],
        *,
        interval: float,
    ) -> None:
        self.registry = registry
        self.bus = bus
        self.record = record
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._beating = asyncio.Lock()
        self._stopping = False
        self._failing = False
        self.reported_served = 0  # the served count deregistration reported

    @property
    def name(self) -> str:
        r = self.record()
        return f"{r.kind} {r.service_id}"

    async def start(self) -> None:
        self._stopping = False
        await self.beat()  # registered before start() returns; errors surface to the caller
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def poke(self) -> None:
        """Announce again now (what the instance serves changed)."""
        self._wake.set()

    async def stop(self) -> None:
        """Leave the registry at once and say so."""
        task, self._task = self._task, None
        if task is not None:
            # Asked, not cancelled: a cancel that lands inside a Redis call can be swallowed by
            # the client, leaving the loop running. A beat in progress finishes first (bounded).
            self._stopping = True
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=_STOP_WAIT)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        record = self.record()
        self.reported_served = record.load.served
        try:
            gone = await self.registry.deregister(record.instance_id, served=self.reported_served)
            if gone is not None:
                await self._publish(record, PresenceStatus.OFFLINE, "deregistered")
        except (RedisError, OSError) as exc:
            logger.warning("could not deregister %s: %s", self.name, exc)

    async def beat(self) -> None:
        """Heartbeat now (errors are raised), then sweep if one is due (errors are logged)."""
        # One beat at a time, each built when it is its turn: a periodic beat whose record was
        # built before a change (a model added) must not reach Redis after the change's own
        # beat, or the stale record would withdraw the new name.
        async with self._beating:
            record = self.record()
            registered = await self.registry.heartbeat(record)
        if registered:
            await self._publish(record, PresenceStatus.ONLINE)
        if not self.registry.sweep_due(self.interval):
            return
        try:
            swept = await self.registry.sweep()
        except (RedisError, OSError) as exc:
            logger.warning("sweeping the registry failed (%s); the next beat retries", exc)
            return
        for dead in swept:
            if isinstance(dead, ServiceRecord):
                await self._publish(dead, PresenceStatus.OFFLINE, "heartbeat timeout")
            else:
                logger.debug("swept an instance without a valid record: %s", dead)

    async def beat_now(self) -> None:
        """Re-announce at once and return when Redis has the record (errors are logged)."""
        try:
            await self.beat()
        except (RedisError, OSError) as exc:
            logger.warning("could not announce %s now (%s); the next beat retries", self.name, exc)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.beat()
                if self._failing:
                    logger.info("registration of %s restored", self.name)
                self._failing = False
            except (RedisError, OSError) as exc:
                if not self._failing:
                    logger.warning("heartbeat of %s failed (%s); retrying", self.name, exc)
                self._failing = True
            except Exception:  # the top of a loop that must outlive any one bad beat
                logger.exception("heartbeat of %s failed; retrying", self.name)

    async def _publish(
        self, record: ServiceRecord, event: PresenceStatus, reason: str | None = None
    ) -> None:
        now = time.time()
        subjects = self.bus.subjects
        out: list[tuple[str, bytes]] = []
        try:
            svc = ServiceEvent(
                event=event,
                kind=record.kind,
                service_id=record.service_id,
                instance_id=record.instance_id,
                timestamp=now,
                reason=reason,
            )
            out.append((subjects.service_events(record.kind, record.instance_id), encode(svc)))
            if record.kind == ServiceKind.AGENT:
                agent = PresenceEvent(
                    event=event,
                    agent_id=record.service_id,
                    instance_id=record.instance_id,
                    timestamp=now,
                    reason=reason,
                )
                out.append((subjects.presence_events(record.service_id), encode(agent)))
        except InvalidId:  # a foreign record whose ids cannot be subject tokens
            logger.debug("no event for the record of %s: its ids are not tokens", record.kind)
        for subject, body in out:
            try:
                await self.bus.publish(subject, body)
            except Exception:  # noqa: BLE001 - an event lost to a NATS outage must not stop beats
                logger.debug("could not publish a registry event on %s", subject)
