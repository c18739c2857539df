"""Usage totals: events in the JetStream stream, folded into the Redis cache when read; exact
with many readers at once, after Redis lost the cache, and after the stream was made again."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from agentmesh.broker.bus import Bus
from agentmesh.broker.durable import USAGE_STREAM, DurableState
from agentmesh.broker.servers import NatsServer
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.usage import Usage, UsageStore

TOKENS = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


def store(durable: DurableState, redis: aioredis.Redis, settings: Settings) -> UsageStore:
    return UsageStore(durable, redis, Subjects(settings.prefix))


async def drop_cache(redis: aioredis.Redis, settings: Settings) -> None:
    """What a Redis loss does to this mesh's cache."""
    names = [k async for k in redis.scan_iter(f"{settings.prefix}:usage*")]
    assert names
    await redis.delete(*names)


async def test_many_readers_folding_at_once_count_every_event_once(
    durable: DurableState, redis: aioredis.Redis, settings: Settings
) -> None:
    writer = store(durable, redis, settings)
    for i in range(300):  # more than one fetch batch
        await writer.add("k1" if i % 3 else "k2", "gpt-4.1", TOKENS, error=i % 10 == 0)
    readers = [store(durable, redis, settings) for _ in range(6)]
    results = await asyncio.gather(*(r.read() for r in readers))
    expected = [
        Usage("k1", "gpt-4.1", 200, 1000, 600, 1600, errors=20),
        Usage("k2", "gpt-4.1", 100, 500, 300, 800, errors=10),
    ]
    assert all(result == expected for result in results), results
    await drop_cache(redis, settings)
    results = await asyncio.gather(*(r.read() for r in readers))
    assert all(result == expected for result in results), results


async def test_reading_after_a_redis_loss_folds_the_totals_again_exactly(
    durable: DurableState, redis: aioredis.Redis, settings: Settings
) -> None:
    usage = store(durable, redis, settings)
    await usage.add(None, "echo", {"total_tokens": 2}, error=False)
    assert await usage.read() == [Usage("anonymous", "echo", requests=1, total_tokens=2)]
    await drop_cache(redis, settings)
    await usage.add(None, "echo", {"total_tokens": 2}, error=False)
    assert await usage.read() == [Usage("anonymous", "echo", requests=2, total_tokens=4)]
    # Read again: nothing new, nothing counted twice.
    assert await usage.catch_up() == 0
    assert await usage.read("anonymous") == [Usage("anonymous", "echo", 2, total_tokens=4)]
    assert await usage.read("someone-else") == []


async def test_a_malformed_event_on_the_usage_subject_is_skipped_and_logged(
    durable: DurableState,
    redis: aioredis.Redis,
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    usage = store(durable, redis, settings)
    subject = Subjects(settings.prefix).usage("k1", "m")
    await durable.append(USAGE_STREAM, subject, b"not json")
    bad_counts = {"key_id": "k1", "model": "m", "requests": -5}
    await durable.append(USAGE_STREAM, subject, json.dumps(bad_counts).encode())
    await usage.add("k1", "m", {}, error=False)
    assert await usage.read() == [Usage("k1", "m", requests=1)]
    assert sum("malformed" in r.getMessage() for r in caplog.records) == 2
    # A malformed event last, then more in a later read: passed over, not taken for a gap.
    await durable.append(USAGE_STREAM, subject, b"[]")
    assert await usage.read() == [Usage("k1", "m", requests=1)]
    await usage.add("k1", "m", {}, error=False)
    assert await usage.read() == [Usage("k1", "m", requests=2)]


async def test_a_usage_stream_made_again_resets_the_cache_instead_of_skipping_its_events(
    own_nats: NatsServer, redis: aioredis.Redis, settings: Settings
) -> None:
    own = settings.with_(nats_url=own_nats.url)
    async with await Bus.connect(own, name="tests") as bus:
        durable = DurableState(bus.nc)
        usage = store(durable, redis, own)
        for _ in range(3):
            await usage.add("k1", "m", {}, error=False)
        assert await usage.read() == [Usage("k1", "m", requests=3)]
        # JetStream lost its files (or someone deleted the stream): sequences start over.
        await durable.js.delete_stream(USAGE_STREAM)
        await usage.add("k2", "m", {}, error=False)
        assert await usage.read() == [Usage("k2", "m", requests=1)]
