"""The Redis presence registry: heartbeats, instances, timeouts, sweeping, prefixes."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from agentmesh.broker.connections import connect_redis
from agentmesh.broker.presence import PresenceRegistry
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.agent import AgentCard, InstanceInfo, PresenceStatus
from agentmesh.schemas.errors import ConnectionFailed

TIMEOUT = 0.5


@pytest.fixture
def registry(redis: aioredis.Redis, prefix: str) -> PresenceRegistry:
    return PresenceRegistry(redis, Subjects(prefix), heartbeat_timeout=TIMEOUT)


def card(agent_id: str = "agent-001") -> AgentCard:
    return AgentCard(agent_id=agent_id, agent_name="Research Agent", capabilities=["search"])


def instance(instance_id: str) -> InstanceInfo:
    now = time.time()
    return InstanceInfo(instance_id=instance_id, connected_at=now, last_heartbeat=now, pid=1)


async def wait_until_gone(registry: PresenceRegistry, agent_id: str) -> None:
    async with asyncio.timeout(TIMEOUT * 6):
        while await registry.get(agent_id) is not None:  # noqa: ASYNC110 - time must pass
            await asyncio.sleep(TIMEOUT / 5)


async def test_a_heartbeat_registers_the_card_and_the_instance(registry: PresenceRegistry) -> None:
    added, gone = await registry.heartbeat(card(), instance("i1"))
    assert added and gone == []
    again, _ = await registry.heartbeat(card(), instance("i1"))
    assert not again
    found = await registry.get("agent-001")
    assert found is not None
    assert found.agent_name == "Research Agent" and found.capabilities == ["search"]
    assert found.status is PresenceStatus.ONLINE
    assert [i.instance_id for i in found.instances] == ["i1"]
    assert found.last_heartbeat >= found.connected_at
    assert [p.agent_id for p in await registry.list()] == ["agent-001"]
    assert await registry.count() == 1


async def test_replicas_are_instances_of_one_agent(registry: PresenceRegistry) -> None:
    await registry.heartbeat(card(), instance("i1"))
    await registry.heartbeat(card(), instance("i2"))
    found = await registry.get("agent-001")
    assert found is not None
    assert sorted(i.instance_id for i in found.instances) == ["i1", "i2"]
    assert await registry.count() == 1


async def test_deregistering_the_last_instance_takes_the_agent_offline_at_once(
    registry: PresenceRegistry,
) -> None:
    await registry.heartbeat(card(), instance("i1"))
    await registry.heartbeat(card(), instance("i2"))
    assert await registry.deregister("agent-001", "i1")
    assert await registry.get("agent-001") is not None
    assert await registry.deregister("agent-001", "i2")
    assert await registry.get("agent-001") is None
    assert await registry.list() == []
    assert not await registry.deregister("agent-001", "i2")


async def test_an_instance_that_stops_heartbeating_drops_out_at_the_timeout(
    registry: PresenceRegistry,
) -> None:
    await registry.heartbeat(card("quiet"), instance("q1"))
    await wait_until_gone(registry, "quiet")
    assert await registry.list() == []
    # Its keys are swept by anyone's sweep, and reported once.
    assert await registry.sweep() == [("quiet", "q1")]
    assert await registry.sweep() == []


async def test_a_live_replica_reports_its_dead_sibling(registry: PresenceRegistry) -> None:
    await registry.heartbeat(card(), instance("dead"))
    async with asyncio.timeout(TIMEOUT * 6):
        while True:
            _, gone = await registry.heartbeat(card(), instance("alive"))
            if gone:
                break
            await asyncio.sleep(TIMEOUT / 5)  # noqa: ASYNC110 - a replica heartbeat interval
    assert gone == ["dead"]
    found = await registry.get("agent-001")
    assert found is not None and [i.instance_id for i in found.instances] == ["alive"]


async def test_two_prefixes_never_see_each_others_agents(redis: aioredis.Redis) -> None:
    a = PresenceRegistry(redis, Subjects("meshA" + str(free_port())), heartbeat_timeout=5)
    b = PresenceRegistry(redis, Subjects("meshB" + str(free_port())), heartbeat_timeout=5)
    await a.heartbeat(card("only-in-a"), instance("i1"))
    assert await b.list() == []
    assert await b.get("only-in-a") is None
    await a.deregister("only-in-a", "i1")


async def test_unreachable_redis_is_a_clear_connection_error(settings: Settings) -> None:
    down = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    with pytest.raises(ConnectionFailed) as err:
        await connect_redis(down)
    assert down.redis_url in err.value.message
    assert "make up" in err.value.message


async def test_served_counts_add_up_across_instances(registry: PresenceRegistry) -> None:
    await registry.heartbeat(card(), instance("i1"), served=3)
    await registry.heartbeat(card(), instance("i2"), served=4)
    await registry.add_served(2)
    await registry.add_served(0)
    assert await registry.messages() == 9
