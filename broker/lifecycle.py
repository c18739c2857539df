"""`MeshService`: the one lifecycle of every process of the mesh.

start (connect to Redis and NATS) → serve (`on_start` subscribes its subjects) → announce (the
registry record, every heartbeat) → drain (`stop` leaves the registry at once, then `on_stop`
and closing the bus finish the calls in flight) → stop. Agents, gateways, LLM workers and MCP
workers are subclasses; a kind added later is one more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from typing import Any, ClassVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentmesh.broker.announcer import Announcer
from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.registry import Registry
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import validate_id
from agentmesh.schemas.agent import AgentCard
from agentmesh.schemas.errors import ConnectionFailed
from agentmesh.schemas.service import Load, Serves, ServiceKind, ServiceRecord
from agentmesh.schemas.version import __version__

logger = logging.getLogger(__name__)

HOST = socket.gethostname()


class MeshService:
    """One instance of a service of the mesh. Subclasses set `kind` and override the hooks.

    Args:
        service_id: the service's name in the registry (an agent's id; a worker's name).
    """

    kind: ClassVar[str] = "service"

    def __init__(self, service_id: str) -> None:
        self.service_id = validate_id(service_id, what="service id")
        self.instance_id: str | None = None  # a new one at every start
        self.started_at = 0.0
        self.settings: Settings | None = None
        self._bus: Bus | None = None
        self._redis: aioredis.Redis | None = None
        self._announcer: Announcer | None = None
        self._stopped: asyncio.Event | None = None

    # Hooks ---------------------------------------------------------------------------------
    async def on_start(self) -> None:
        """Serve subjects (connections are open; the instance is not announced yet)."""

    async def on_stop(self) -> None:
        """Take no new work and finish what is in flight (the registry entry is gone)."""

    def serves(self) -> Serves:
        return Serves()

    def card(self) -> AgentCard | None:
        return None

    def detail(self) -> dict[str, Any]:
        return {}

    def load(self) -> Load:
        """Calls running in this instance's served subjects now, and taken since it started."""
        bus = self._bus
        if bus is None:
            return Load()
        return Load(in_flight=sum(s.in_flight for s in bus.services), served=bus.served)

    # Lifecycle -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._bus is not None

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError(f"{self.kind} {self.service_id!r} is not running")
        return self._bus

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise RuntimeError(f"{self.kind} {self.service_id!r} is not running")
        return self._redis

    async def start(self, settings: Settings | None = None) -> None:
        """Connect, serve, announce; returns once the instance is in the registry.

        Raises:
            ConnectionFailed: NATS or Redis cannot be reached (nothing is left open).
        """
        settings = settings or Settings.from_env()
        self.settings = settings
        self._stopped = asyncio.Event()
        self.instance_id = uuid.uuid4().hex[:16]
        redis = await connect_redis(settings)  # fail before touching NATS if Redis is down
        try:
            self._bus = await Bus.connect(
                settings,
                name=f"agentmesh-{self.kind}:{self.service_id}",
                instance_id=self.instance_id,
            )
        except BaseException:
            await redis.aclose()
            raise
        self._redis = redis
        self.started_at = time.time()
        try:
            await self.on_start()
            registry = Registry(redis, self._bus.subjects, timeout=settings.heartbeat_timeout)
            self._announcer = Announcer(
                registry, self._bus, self.record, interval=settings.heartbeat_interval
            )
            await self._announcer.start()
        except BaseException:
            announcer, self._announcer = self._announcer, None
            try:
                if announcer is not None:  # it may have registered before failing
                    with contextlib.suppress(Exception):
                        await announcer.stop()
                await self.on_stop()  # whatever on_start opened before it failed
            finally:
                await self._close()
            raise

    async def stop(self) -> None:
        """Leave the registry at once, finish the calls in flight, close the connections."""
        if self._bus is None:
            return
        announcer, self._announcer = self._announcer, None
        try:
            if announcer is not None:
                await announcer.stop()
            await self.on_stop()
            if announcer is not None and self.kind == ServiceKind.AGENT:
                # Calls that finished while draining count too (after deregistration).
                with contextlib.suppress(RedisError, OSError):
                    await announcer.registry.add_messages(
                        self.load().served - announcer.reported_served
                    )
        finally:
            await self._close()
            if self._stopped is not None:
                self._stopped.set()

    async def _close(self) -> None:
        bus, self._bus = self._bus, None
        redis, self._redis = self._redis, None
        if bus is not None:
            await bus.close()  # drains: unsubscribes, then waits for the handlers in flight
        if redis is not None:
            await redis.aclose()

    def announce_now(self) -> None:
        """Re-announce soon (what the instance serves changed), without waiting."""
        if self._announcer is not None:
            self._announcer.poke()

    async def announce(self) -> None:
        """Re-announce now, returning once Redis has the record (errors are logged)."""
        if self._announcer is not None:
            await self._announcer.beat_now()

    def record(self) -> ServiceRecord:
        """The registry record as of now."""
        return ServiceRecord(
            kind=self.kind,
            service_id=self.service_id,
            instance_id=self.instance_id or "",
            host=HOST,
            pid=os.getpid(),
            version=__version__,
            started_at=self.started_at,
            serves=self.serves(),
            load=self.load(),
            card=self.card(),
            detail=self.detail(),
        )

    async def serve(self, settings: Settings | None = None) -> None:
        """Run until `stop()` is called (or the task is cancelled)."""
        await self.start(settings)
        try:
            assert self._stopped is not None
            await self._stopped.wait()
        finally:
            await self.stop()

    def run(self, settings: Settings | None = None) -> None:
        """Block running the service; SIGINT or SIGTERM drains and stops it.

        For a program's main: logs like the `agentmesh` CLI (unless logging is configured
        already), and a mesh that cannot be reached exits with one line, not a traceback.
        """
        if not logging.getLogger().handlers:
            configure_logging()
        try:
            asyncio.run(run_until_signal(self, settings))
        except ConnectionFailed as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            raise SystemExit(1) from None
        except KeyboardInterrupt:
            raise SystemExit(130) from None

    async def __aenter__(self) -> MeshService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def agent_record(
    card: AgentCard,
    *,
    instance_id: str,
    started_at: float,
    via: str,
    service: Any = None,
    detail: dict[str, Any] | None = None,
) -> ServiceRecord:
    """The registry record of an agent instance that shares its process's connection (a
    WebSocket agent on a gateway, a saved agent on a runtime worker): its own instance id and
    card, the load of its one served subject (`service`, a broker `Service`)."""
    return ServiceRecord(
        kind=ServiceKind.AGENT,
        service_id=card.agent_id,
        instance_id=instance_id,
        host=HOST,
        pid=os.getpid(),
        version=__version__,
        started_at=started_at,
        via=via,
        serves=Serves(
            agents=[card.agent_id], agent_types=[card.agent_type] if card.agent_type else []
        ),
        load=Load(
            in_flight=service.in_flight if service else 0,
            served=service.served if service else 0,
        ),
        card=card,
        detail=detail or {},
    )


def configure_logging(verbose: bool = False) -> None:
    """The log format of every AgentMesh process (the CLI and `MeshService.run`)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:  # nats-py is chatty at INFO
        logging.getLogger("nats").setLevel(logging.WARNING)


async def run_until_signal(service: Any, settings: Settings | None = None) -> None:
    """Start `service` (anything with `start(settings)` and `stop()`), then return once SIGINT
    or SIGTERM has stopped it. A failed start closes what did open and raises.

    The handlers are installed first: a signal that comes while the service is starting stops it
    as soon as it has started, instead of killing the process half-way.
    """
    loop = asyncio.get_running_loop()
    asked = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, asked.set)
    try:
        try:
            await service.start(settings)
        except BaseException:
            await service.stop()
            raise
        await asked.wait()
        await service.stop()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
