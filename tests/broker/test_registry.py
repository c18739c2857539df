"""The service registry in Redis: records of every kind, indexes, timeouts, sweeping, invalid
records, prefixes."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis.asyncio as aioredis

from agentmesh.broker.connections import connect_redis
from agentmesh.broker.registry import HEARTBEAT_SCRIPT, Registry
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.agent import AgentCard, PresenceStatus
from agentmesh.schemas.errors import ConnectionFailed
from agentmesh.schemas.service import InvalidRecord, Load, Serves, ServiceRecord
from tests.waiting import until

TIMEOUT = 0.5


@pytest.fixture
def registry(redis: aioredis.Redis, prefix: str) -> Registry:
    return Registry(redis, Subjects(prefix), timeout=TIMEOUT)


def agent(instance_id: str, agent_id: str = "agent-001", served: int = 0) -> ServiceRecord:
    card = AgentCard(agent_id=agent_id, agent_name="Research Agent", capabilities=["search"])
    return ServiceRecord(
        kind="agent",
        service_id=agent_id,
        instance_id=instance_id,
        started_at=time.time(),
        pid=1,
        serves=Serves(agents=[agent_id]),
        load=Load(served=served),
        card=card,
    )


def worker(instance_id: str, models: list[str]) -> ServiceRecord:
    return ServiceRecord(
        kind="llm-worker",
        service_id="llm-worker",
        instance_id=instance_id,
        started_at=time.time(),
        serves=Serves(models=models),
    )


async def wait_until_gone(registry: Registry, agent_id: str) -> None:
    async def gone() -> bool:  # time must pass
        return await registry.agent(agent_id) is None

    await until(gone, timeout=TIMEOUT * 6, what=f"{agent_id} dropped out", every=TIMEOUT / 5)


async def test_a_heartbeat_registers_the_record_and_what_it_serves(registry: Registry) -> None:
    assert await registry.heartbeat(agent("i1"))
    assert not await registry.heartbeat(agent("i1"))
    found = await registry.agent("agent-001")
    assert found is not None
    assert found.agent_name == "Research Agent" and found.capabilities == ["search"]
    assert found.status is PresenceStatus.ONLINE
    assert [i.instance_id for i in found.instances] == ["i1"]
    assert found.last_heartbeat >= found.connected_at
    assert [p.agent_id for p in await registry.agents()] == ["agent-001"]
    assert await registry.agent_count() == 1
    [record] = await registry.instances()
    assert isinstance(record, ServiceRecord)
    assert record.kind == "agent" and record.pid == 1 and record.last_heartbeat > 0


async def test_replicas_are_instances_of_one_agent(registry: Registry) -> None:
    await registry.heartbeat(agent("i1"))
    await registry.heartbeat(agent("i2"))
    found = await registry.agent("agent-001")
    assert found is not None
    assert sorted(i.instance_id for i in found.instances) == ["i1", "i2"]
    assert await registry.agent_count() == 1


async def test_instances_of_every_kind_are_listed_and_filtered_by_kind(registry: Registry) -> None:
    await registry.heartbeat(agent("a1"))
    await registry.heartbeat(worker("w1", ["gpt-4.1", "echo"]))
    assert {r.instance_id for r in await registry.instances()} == {"a1", "w1"}
    assert [r.instance_id for r in await registry.instances("llm-worker")] == ["w1"]
    assert await registry.names("models") == ["echo", "gpt-4.1"]
    assert [r.instance_id for r in await registry.serving("models", "gpt-4.1")] == ["w1"]


async def test_a_name_no_longer_served_is_withdrawn_at_the_next_heartbeat(
    registry: Registry,
) -> None:
    await registry.heartbeat(worker("w1", ["a", "b"]))
    await registry.heartbeat(worker("w2", ["b"]))
    await registry.heartbeat(worker("w1", ["b", "c"]))
    assert await registry.names("models") == ["b", "c"]
    assert await registry.serving("models", "a") == []
    await registry.heartbeat(worker("w1", []))
    assert await registry.names("models") == ["b"]


async def test_deregistering_the_last_instance_takes_the_agent_offline_at_once(
    registry: Registry,
) -> None:
    await registry.heartbeat(agent("i1"))
    await registry.heartbeat(agent("i2"))
    gone = await registry.deregister("i1")
    assert isinstance(gone, ServiceRecord) and gone.instance_id == "i1"
    assert await registry.agent("agent-001") is not None
    assert await registry.deregister("i2") is not None
    assert await registry.agent("agent-001") is None
    assert await registry.agents() == [] and await registry.instances() == []
    assert await registry.names("agents") == []
    assert await registry.deregister("i2") is None


async def test_an_instance_that_stops_heartbeating_drops_out_at_the_timeout(
    registry: Registry,
) -> None:
    await registry.heartbeat(agent("q1", "quiet"))
    await wait_until_gone(registry, "quiet")
    assert await registry.agents() == [] and await registry.instances() == []
    # Its keys are swept by anyone's sweep, and reported once, with the record.
    [swept] = await registry.sweep()
    assert isinstance(swept, ServiceRecord) and swept.instance_id == "q1"
    assert await registry.sweep() == []
    assert await registry.names("agents") == []


async def test_a_dead_replica_drops_out_while_its_sibling_stays(registry: Registry) -> None:
    await registry.heartbeat(agent("dead"))

    async def only_alive_left() -> bool:  # polled at a replica heartbeat interval
        await registry.heartbeat(agent("alive"))
        found = await registry.agent("agent-001")
        assert found is not None
        return [i.instance_id for i in found.instances] == ["alive"]

    await until(
        only_alive_left, timeout=TIMEOUT * 6, what="only the alive replica left", every=TIMEOUT / 5
    )
    swept = await registry.sweep()
    assert [r.instance_id for r in swept if isinstance(r, ServiceRecord)] == ["dead"]


async def test_two_prefixes_never_see_each_others_instances(redis: aioredis.Redis) -> None:
    a = Registry(redis, Subjects("meshA" + str(free_port())), timeout=5)
    b = Registry(redis, Subjects("meshB" + str(free_port())), timeout=5)
    await a.heartbeat(agent("i1", "only-in-a"))
    assert await b.agents() == [] and await b.instances() == []
    assert await b.agent("only-in-a") is None
    await a.deregister("i1")


async def test_unreachable_redis_is_a_clear_connection_error(settings: Settings) -> None:
    down = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.5)
    with pytest.raises(ConnectionFailed) as err:
        await connect_redis(down)
    assert down.redis_url in err.value.message
    assert "make up" in err.value.message


async def test_served_counts_add_up_across_live_and_departed_instances(
    registry: Registry,
) -> None:
    await registry.heartbeat(agent("i1", served=3))
    await registry.heartbeat(agent("i2", served=4))
    await registry.heartbeat(worker("w1", ["m"]))  # not an agent: not a message
    assert await registry.messages() == 7
    await registry.deregister("i1")  # its count stays in the mesh total
    await registry.heartbeat(agent("i2", served=6))
    assert await registry.messages() == 9


async def foreign_heartbeat(redis: aioredis.Redis, prefix: str, iid: str, record: object) -> None:
    """What a program in another language does: EVAL the documented script."""
    body = record if isinstance(record, str) else json.dumps(record)
    await redis.eval(HEARTBEAT_SCRIPT, 0, prefix, iid, body, 10_000)


async def test_a_record_written_by_another_language_with_the_script_is_listed(
    registry: Registry, redis: aioredis.Redis, prefix: str
) -> None:
    await foreign_heartbeat(
        redis,
        prefix,
        "node-1",
        {
            "kind": "agent",
            "service_id": "node-agent",
            "instance_id": "node-1",
            "started_at": time.time(),
            "serves": {"agents": ["node-agent"]},
            "load": {"in_flight": 0, "served": 5},
            "card": {"agent_id": "node-agent", "agent_name": "From Node"},
        },
    )
    found = await registry.agent("node-agent")
    assert found is not None and found.agent_name == "From Node"
    assert await registry.messages() == 5


async def test_an_invalid_record_is_skipped_listed_as_invalid_and_logged_once(
    registry: Registry,
    redis: aioredis.Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await registry.heartbeat(agent("good"))
    bad_card = {
        "kind": "agent",
        "service_id": "agent-001",
        "instance_id": "bad",
        "started_at": time.time(),
        "serves": {"agents": ["agent-001"]},
        "card": {"agent_id": "agent-001", "owner": "alice"},  # owner must be an object
    }
    await foreign_heartbeat(redis, prefix, "bad", bad_card)
    await foreign_heartbeat(redis, prefix, "garbage", "not json at all")
    with caplog.at_level(logging.WARNING, logger="agentmesh.broker.registry"):
        for _ in range(3):
            found = await registry.agent("agent-001")
            assert found is not None and [i.instance_id for i in found.instances] == ["good"]
            assert [p.agent_id for p in await registry.agents()] == ["agent-001"]
            listed = await registry.instances()
    invalid = {r.instance_id: r for r in listed if isinstance(r, InvalidRecord)}
    assert set(invalid) == {"bad", "garbage"}
    assert "card.owner" in invalid["bad"].error
    assert invalid["bad"].key == f"{prefix}:svc:bad"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once per key, however often it is read
    assert any(f"{prefix}:svc:bad" in w for w in warnings)


async def test_a_clean_stop_counts_the_calls_served_since_the_last_heartbeat(
    registry: Registry,
) -> None:
    await registry.heartbeat(agent("i1", served=2))
    await registry.deregister("i1", served=5)
    assert await registry.messages() == 5


async def test_a_late_heartbeat_after_deregistering_does_not_bring_the_instance_back(
    registry: Registry,
) -> None:
    await registry.heartbeat(agent("i1"))
    await registry.deregister("i1")
    assert not await registry.heartbeat(agent("i1"))  # a beat that was still in flight
    assert await registry.instances() == [] and await registry.agent("agent-001") is None


async def test_an_instance_swept_while_slow_that_comes_back_is_counted_once(
    registry: Registry,
) -> None:
    await registry.heartbeat(agent("slow", served=3))
    await wait_until_gone(registry, "agent-001")
    await registry.sweep()
    assert await registry.messages() == 3  # counted when it left
    assert await registry.heartbeat(agent("slow", served=4))  # back: registered anew
    assert await registry.messages() == 4  # its live count, not 3 + 4
    await registry.deregister("slow", served=4)
    assert await registry.messages() == 4


async def test_a_name_ages_out_with_its_last_live_instance_not_a_departed_one(
    registry: Registry, redis: aioredis.Redis, prefix: str
) -> None:
    await registry.heartbeat(worker("older", ["m"]))
    await registry.heartbeat(worker("leaving", ["m"]))
    await registry.deregister("leaving")
    # The name's score is now the remaining instance's, so it expires when that one does.
    older = await redis.zscore(f"{prefix}:svc", "older")
    assert await redis.zscore(f"{prefix}:names:models", "m") == older
