"""JetStream KV buckets of records: a missing bucket is empty, an unreachable one is an error."""

from __future__ import annotations

import asyncio

import pytest

from agentmesh.broker.bus import Bus
from agentmesh.broker.durable import DurableState
from agentmesh.broker.servers import NatsServer
from agentmesh.broker.settings import Settings
from agentmesh.schemas.errors import Unavailable
from tests.conftest import Logged


async def test_a_bucket_that_does_not_exist_reads_as_empty_and_a_write_creates_it(
    durable: DurableState, prefix: str
) -> None:
    bucket = durable.bucket(f"test_{prefix}")
    assert await bucket.get(f"{prefix}.a") is None
    assert await bucket.scan(prefix) == {}
    assert await bucket.delete(f"{prefix}.a") is False
    assert await bucket.create(f"{prefix}.a", {"n": 1}) is True
    assert await bucket.create(f"{prefix}.a", {"n": 2}) is False  # never overwritten
    await bucket.create(f"{prefix}.b", {"n": 3})
    await bucket.create(f"other{prefix}.c", {"n": 4})  # another prefix: not listed
    assert await bucket.scan(prefix) == {"a": {"n": 1}, "b": {"n": 3}}
    assert await bucket.delete(f"{prefix}.a") is True
    assert await bucket.get(f"{prefix}.a") is None
    assert await bucket.scan(prefix) == {"b": {"n": 3}}
    assert await bucket.create(f"{prefix}.a", {"n": 5}) is True  # a deleted key is free again
    await durable.js.delete_key_value(f"test_{prefix}")


async def test_a_bucket_deleted_while_open_reads_as_empty_not_as_unavailable(
    durable: DurableState, prefix: str
) -> None:
    bucket = durable.bucket(f"test_{prefix}")
    await bucket.create(f"{prefix}.a", {"n": 1})
    await durable.js.delete_key_value(f"test_{prefix}")
    assert await bucket.get(f"{prefix}.a") is None
    assert await bucket.create(f"{prefix}.a", {"n": 2}) is True  # made again
    assert await bucket.get(f"{prefix}.a") == {"n": 2}
    await durable.js.delete_key_value(f"test_{prefix}")


async def test_with_nats_down_every_operation_is_unavailable_at_once(
    own_nats: NatsServer, settings: Settings, prefix: str
) -> None:
    async with await Bus.connect(settings.with_(nats_url=own_nats.url), name="tests") as bus:
        durable = DurableState(bus.nc, timeout=30)
        bucket = durable.bucket("agentmesh_keys")
        await bucket.create(f"{prefix}.a", {"n": 1})
        with Logged("agentmesh.broker.bus", "disconnected from NATS") as gone:
            await asyncio.to_thread(own_nats.stop)
            await gone.wait()
        async with asyncio.timeout(2):  # not after the 30 s timeout: NATS is reconnecting
            for operation in (
                bucket.get(f"{prefix}.a"),
                bucket.scan(prefix),
                bucket.create(f"{prefix}.b", {}),
                durable.stream_state("agentmesh_usage"),
            ):
                with pytest.raises(Unavailable, match="NATS is reconnecting"):
                    await operation


async def test_concurrent_updates_of_one_record_are_all_kept(
    durable: DurableState, prefix: str
) -> None:
    bucket = durable.bucket(f"test_{prefix}")
    await bucket.put("p.counter", {"n": 0, "seen": []})
    assert await bucket.update("p.nothing", lambda r: r) is None  # no record: nothing written

    async def add(i: int) -> None:
        await bucket.update("p.counter", lambda r: {"n": r["n"] + 1, "seen": [*r["seen"], i]})

    await asyncio.gather(*(add(i) for i in range(20)))
    record = await bucket.get("p.counter")
    assert record is not None and record["n"] == 20 and sorted(record["seen"]) == list(range(20))
    await durable.js.delete_key_value(f"test_{prefix}")
