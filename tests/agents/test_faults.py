"""Crashes and restarts: a replica SIGKILLed mid-call, Redis restarted, NATS restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.servers import NatsServer, RedisServer
from agentmesh.broker.settings import Settings
from agentmesh.schemas.agent import PresenceEvent, PresenceStatus
from agentmesh.schemas.codec import decode
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.errors import MeshError, Unavailable
from tests.conftest import StartAgent
from tests.waiting import until

AGENTMESH = str(Path(sys.executable).parent / "agentmesh")


@pytest.fixture
async def events(mesh: MeshClient) -> AsyncIterator[asyncio.Queue[PresenceEvent]]:
    """Presence events of this test's mesh, as they are published."""
    queue: asyncio.Queue[PresenceEvent] = asyncio.Queue()

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        queue.put_nowait(decode(msg.data, PresenceEvent))

    sub = await mesh.bus.nc.subscribe(mesh.bus.subjects.presence_events(), cb=on_event)
    yield queue
    await sub.unsubscribe()


async def spawn_replica(env: dict[str, str]) -> asyncio.subprocess.Process:
    """`agentmesh agent run tests.agents.replica:agent` as a process of its own."""
    return await asyncio.create_subprocess_exec(
        AGENTMESH,
        "agent",
        "run",
        "tests.agents.replica:agent",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def next_event(queue: asyncio.Queue[PresenceEvent], **match: object) -> PresenceEvent:
    while True:
        event = await queue.get()
        if all(getattr(event, k) == v for k, v in match.items()):
            return event


async def test_a_replica_killed_mid_call_fails_the_call_and_drops_out_of_presence(
    settings: Settings,
    env_for: dict[str, str],
    mesh: MeshClient,
    start_agent: StartAgent,
    events: asyncio.Queue[PresenceEvent],
) -> None:
    probe = Agent("probe")
    blocked_on: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    @probe.handler
    async def on_probe(msg: Message, ctx: Context) -> str:
        blocked_on.set_result(msg.text)
        return "ok"

    await start_agent(probe)
    proc = await spawn_replica(env_for)
    try:
        async with asyncio.timeout(15):
            online = await next_event(events, agent_id="replica", event=PresenceStatus.ONLINE)
            call = asyncio.create_task(mesh.ask("replica", "block", timeout=30))
            assert await blocked_on == online.instance_id
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            # Three missed keep-alives (0.6 s here), not the 30 s timeout.
            with pytest.raises(Unavailable) as err:
                await call
            assert err.value.details["instance_id"] == online.instance_id
            # The live probe's heartbeat sweeps the dead instance once its timeout passes.
            gone = await next_event(
                events, instance_id=online.instance_id, event=PresenceStatus.OFFLINE
            )
            assert gone.reason == "heartbeat timeout"
        assert await mesh.agent("replica") is None
        # A new replica takes over and the same call succeeds.
        survivor = Agent("replica")
        survivor.handler(lambda msg, ctx: f"survivor:{msg.text}")
        await start_agent(survivor)
        assert (await mesh.ask("replica", "again")).text == "survivor:again"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
def on_own_servers(settings: Settings, own_nats: NatsServer, own_redis: RedisServer) -> Settings:
    return settings.with_(nats_url=own_nats.url, redis_url=own_redis.url)


async def test_presence_comes_back_within_a_heartbeat_after_redis_restarts(
    on_own_servers: Settings,
    own_redis: RedisServer,
    start_agent: StartAgent,
) -> None:
    settings = on_own_servers
    agent = Agent("steady", capabilities=["x"])
    agent.handler(lambda msg, ctx: "ok")
    await start_agent(agent, settings_=settings)
    async with MeshClient.connect(settings) as mesh:
        came_back = asyncio.Event()

        async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
            if decode(msg.data, PresenceEvent).event is PresenceStatus.ONLINE:
                came_back.set()

        sub = await mesh.bus.nc.subscribe(mesh.bus.subjects.presence_events("steady"), cb=on_event)
        assert await mesh.agent("steady") is not None
        await asyncio.to_thread(own_redis.stop)
        await asyncio.to_thread(own_redis.start)  # empty: no persistence
        # The next heartbeat re-creates the record and announces the instance as new again.
        async with asyncio.timeout(settings.heartbeat_interval * 10):
            await came_back.wait()
        found = await mesh.agent("steady")
        assert found is not None and found.capabilities == ["x"]
        assert (await mesh.ask("steady", "hi")).text == "ok"
        await sub.unsubscribe()


async def test_agents_reconnect_and_serve_after_nats_restarts(
    on_own_servers: Settings,
    own_nats: NatsServer,
    start_agent: StartAgent,
) -> None:
    settings = on_own_servers
    agent = Agent("phoenix")
    agent.handler(lambda msg, ctx: f"up:{msg.text}")
    await start_agent(agent, settings_=settings)
    async with MeshClient.connect(settings) as mesh:
        assert (await mesh.ask("phoenix", "1")).text == "up:1"
        await asyncio.to_thread(own_nats.stop)
        await asyncio.to_thread(own_nats.start)
        # Both sides reconnect on their own; retry until the call goes through.
        async with asyncio.timeout(15):
            while True:
                try:
                    reply = await mesh.ask("phoenix", "2", timeout=0.5)
                    break
                except MeshError:
                    continue
        assert reply.text == "up:2"


async def test_a_sigkilled_replicas_served_calls_stay_counted_within_one_interval(
    settings: Settings,
    env_for: dict[str, str],
    mesh: MeshClient,
    start_agent: StartAgent,
    events: asyncio.Queue[PresenceEvent],
) -> None:
    """Each heartbeat carries the instance's running count, so a SIGKILL loses at most the calls
    of its last interval; the sweep keeps what its last record said."""
    sweeper = Agent("sweeper")  # a live Python instance sweeps the dead one
    sweeper.handler(lambda msg, ctx: "ok")
    await start_agent(sweeper)
    proc = await spawn_replica(env_for)
    registry = await mesh.registry()

    async def counted() -> bool:
        return await registry.messages() >= 50

    try:
        async with asyncio.timeout(20):
            online = await next_event(events, agent_id="replica", event=PresenceStatus.ONLINE)
            for i in range(50):
                assert (await mesh.ask("replica", str(i))).text.endswith(f":{i}")
            await until(  # the calls reach the registry within one heartbeat interval
                counted,
                timeout=20,
                what="50 calls counted in the registry",
                every=settings.heartbeat_interval / 4,
            )
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            gone = await next_event(
                events, instance_id=online.instance_id, event=PresenceStatus.OFFLINE
            )
            assert gone.reason == "heartbeat timeout"
        assert await registry.messages() == 50  # counted once, after the sweep too
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_calls_succeed_while_one_of_two_replicas_is_frozen(
    settings: Settings,
    env_for: dict[str, str],
    events: asyncio.Queue[PresenceEvent],
) -> None:
    """A SIGSTOPped replica keeps its NATS subscription (the server drops it only at its ping
    timeout, minutes later) and so keeps getting its share. Its calls are never acknowledged:
    after the ack timeout the caller cancels each there and sends it again, until a live
    replica takes it."""
    ack_timeout = 0.5
    frozen, live = await spawn_replica(env_for), await spawn_replica(env_for)
    try:
        async with (
            MeshClient.connect(settings.with_(ack_timeout=ack_timeout)) as mesh,
            asyncio.timeout(30),
        ):
            ids = set()
            while len(ids) < 2:
                ids.add((await next_event(events, agent_id="replica")).instance_id)
            # Both serve (each answers with its instance id) before one is frozen.
            serving: set[str] = set()
            while len(serving) < 2:
                serving.add((await mesh.ask("replica", "who")).text.split(":")[0])
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                started = asyncio.get_running_loop().time()
                replies = await asyncio.gather(
                    *(mesh.ask("replica", f"m{i}", timeout=10) for i in range(20))
                )
                elapsed = asyncio.get_running_loop().time() - started
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            answered_by = {r.text.split(":")[0] for r in replies}
            assert [r.text.split(":")[1] for r in replies] == [f"m{i}" for i in range(20)]
            assert len(answered_by) == 1  # all by the live replica
            # Some calls went to the frozen one first (20 picks of 2), and none waited for the
            # 10 s deadline: each hop to the frozen replica costs one ack timeout.
            assert ack_timeout <= elapsed < 8
            # Thawed, the frozen replica serves again.
            while len(answered_by) < 2:
                answered_by.add((await mesh.ask("replica", "again")).text.split(":")[0])
    finally:
        for proc in (frozen, live):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
