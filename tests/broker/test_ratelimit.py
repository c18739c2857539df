"""The Redis token bucket: exact bursts, sharing across replicas, costs, refunds, expiry."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agentmesh.broker.ratelimit import Limit, RateLimiter
from agentmesh.broker.servers import RedisServer
from agentmesh.schemas.errors import RateLimited
from tests.waiting import until

# A long period: refill during a test (milliseconds) is far below one token.
PER_MINUTE = Limit(10, 60)


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
def limiter(redis: aioredis.Redis, prefix: str) -> RateLimiter:
    return RateLimiter(redis, prefix=prefix)


async def until_allowed(limiter: RateLimiter, key: str, limit: Limit) -> None:
    """Hit until one passes, waiting the retry_after the limiter asks for; deadline 2 s."""
    async with asyncio.timeout(2):
        while True:
            decision = await limiter.hit(key, limit)
            if decision.allowed:
                return
            await asyncio.sleep(decision.retry_after)


async def until_gone(redis: aioredis.Redis, key: str) -> None:
    """Poll until Redis has expired `key` (there is no event to wait on); deadline 2 s."""

    async def gone() -> bool:
        return not await redis.exists(key)

    await until(gone, timeout=2, what=f"{key!r} expired")


async def test_a_burst_of_exactly_count_passes_and_the_next_hit_is_refused(
    limiter: RateLimiter,
) -> None:
    decisions = [await limiter.hit("k", PER_MINUTE) for _ in range(10)]
    assert all(d.allowed for d in decisions)
    assert [math.floor(d.remaining) for d in decisions] == list(range(9, -1, -1))
    assert all(d.retry_after == 0 for d in decisions)

    refused = await limiter.hit("k", PER_MINUTE)
    assert not refused.allowed
    assert refused.remaining < 1
    # One token comes back every 6 s.
    assert 5 < refused.retry_after <= 6
    assert 59 < refused.reset_after <= 60
    assert refused.limit == PER_MINUTE


async def test_two_replicas_sharing_a_key_allow_exactly_count_in_total(
    redis_server: RedisServer, prefix: str
) -> None:
    limit = Limit(50, 3600)
    one = aioredis.from_url(redis_server.url)
    two = aioredis.from_url(redis_server.url)
    try:
        replicas = [RateLimiter(one, prefix=prefix), RateLimiter(two, prefix=prefix)]
        decisions = await asyncio.gather(
            *(replica.hit("api-key", limit) for _ in range(40) for replica in replicas)
        )
    finally:
        await one.aclose()
        await two.aclose()
    assert sum(d.allowed for d in decisions) == 50
    assert all(d.retry_after > 0 for d in decisions if not d.allowed)


async def test_a_hit_takes_its_cost(limiter: RateLimiter) -> None:
    assert (await limiter.hit("k", PER_MINUTE, cost=4)).allowed
    second = await limiter.hit("k", PER_MINUTE, cost=4.5)
    assert second.allowed
    assert 1.5 <= second.remaining < 1.6

    refused = await limiter.hit("k", PER_MINUTE, cost=3)
    assert not refused.allowed
    # 1.5 tokens are missing, at 6 s each.
    assert 8.9 < refused.retry_after <= 9
    # The refused hit took nothing: a cheaper one still fits.
    assert (await limiter.hit("k", PER_MINUTE, cost=1.5)).allowed


async def test_a_cost_above_the_count_is_refused_for_ever_and_takes_nothing(
    limiter: RateLimiter,
) -> None:
    too_big = await limiter.hit("k", PER_MINUTE, cost=11)
    assert not too_big.allowed
    assert too_big.retry_after == math.inf
    assert too_big.remaining == 10

    with pytest.raises(RateLimited, match="can never pass") as raised:
        await limiter.check("k", PER_MINUTE, cost=11)
    assert raised.value.retry_after == math.inf
    assert (await limiter.hit("k", PER_MINUTE, cost=10)).allowed


async def test_check_returns_the_decision_or_raises_rate_limited(limiter: RateLimiter) -> None:
    limit = Limit(2, 60)
    assert (await limiter.check("k", limit)).allowed
    assert (await limiter.check("k", limit)).allowed
    with pytest.raises(RateLimited, match="2/60s") as raised:
        await limiter.check("k", limit)
    assert 29 < raised.value.retry_after <= 30
    assert raised.value.details["retry_after"] == raised.value.retry_after


async def test_a_non_positive_cost_is_a_value_error(limiter: RateLimiter) -> None:
    for cost in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="cost"):
            await limiter.hit("k", PER_MINUTE, cost=cost)


async def test_a_refund_restores_capacity_but_never_above_the_count(
    limiter: RateLimiter, redis: aioredis.Redis, prefix: str
) -> None:
    # Reserve an estimate of 8, use only 3: refund 5.
    assert (await limiter.hit("k", PER_MINUTE, cost=8)).allowed
    assert not (await limiter.hit("k", PER_MINUTE, cost=7)).allowed
    await limiter.adjust("k", PER_MINUTE, -5)
    assert (await limiter.hit("k", PER_MINUTE, cost=7)).allowed

    await limiter.adjust("k", PER_MINUTE, -1000)
    # A full bucket is the same as no key at all.
    assert await redis.exists(f"{prefix}:rl:k") == 0
    assert (await limiter.hit("k", PER_MINUTE, cost=10)).allowed
    assert not (await limiter.hit("k", PER_MINUTE)).allowed


async def test_debt_from_adjust_blocks_later_hits_until_paid_back(limiter: RateLimiter) -> None:
    # Reserve 5, the call really used 15: the bucket owes 5 tokens.
    assert (await limiter.hit("k", PER_MINUTE, cost=5)).allowed
    await limiter.adjust("k", PER_MINUTE, 10)
    refused = await limiter.hit("k", PER_MINUTE)
    assert not refused.allowed
    assert refused.remaining == 0
    # 6 tokens are missing (5 owed + 1 wanted), at 6 s each.
    assert 35 < refused.retry_after <= 36
    assert 89 < refused.reset_after <= 90


async def test_adjust_by_zero_does_nothing(
    limiter: RateLimiter, redis: aioredis.Redis, prefix: str
) -> None:
    await limiter.adjust("k", PER_MINUTE, 0)
    assert await redis.exists(f"{prefix}:rl:k") == 0
    with pytest.raises(ValueError, match="delta"):
        await limiter.adjust("k", PER_MINUTE, math.nan)


async def test_keys_expire_once_the_bucket_would_be_full_again(
    limiter: RateLimiter, redis: aioredis.Redis, prefix: str
) -> None:
    await limiter.hit("one", PER_MINUTE)
    assert 5_000 < await redis.pttl(f"{prefix}:rl:one") <= 6_000
    await limiter.hit("all", PER_MINUTE, cost=10)
    assert 59_000 < await redis.pttl(f"{prefix}:rl:all") <= 60_000

    await limiter.hit("short", Limit(5, 1.0))
    assert 0 < await redis.pttl(f"{prefix}:rl:short") <= 200
    await until_gone(redis, f"{prefix}:rl:short")


async def test_tokens_refill_over_the_period(limiter: RateLimiter) -> None:
    # One token every 0.25 s: slow enough that the burst below cannot refill on a busy machine,
    # fast enough to wait for.
    limit = Limit(4, 1.0)
    for _ in range(4):
        assert (await limiter.hit("k", limit)).allowed
    refused = await limiter.hit("k", limit)
    assert not refused.allowed
    assert 0 < refused.retry_after <= 0.25
    await until_allowed(limiter, "k", limit)


async def test_different_prefixes_and_keys_do_not_share_buckets(
    redis: aioredis.Redis, prefix: str
) -> None:
    mine = RateLimiter(redis, prefix=prefix)
    other = RateLimiter(redis, prefix=f"{prefix}other")
    limit = Limit(1, 60)
    assert (await mine.hit("k", limit)).allowed
    assert not (await mine.hit("k", limit)).allowed
    assert (await other.hit("k", limit)).allowed
    assert (await mine.hit("k2", limit)).allowed
    assert set(await redis.keys(f"{prefix}*")) == {
        f"{prefix}:rl:k".encode(),
        f"{prefix}:rl:k2".encode(),
        f"{prefix}other:rl:k".encode(),
    }


async def test_hits_still_work_after_the_script_cache_is_flushed(
    limiter: RateLimiter, redis: aioredis.Redis
) -> None:
    # As after a Redis restart: the script is loaded again on NOSCRIPT.
    assert (await limiter.hit("k", PER_MINUTE)).allowed
    await redis.script_flush()
    decision = await limiter.hit("k", PER_MINUTE)
    assert decision.allowed
    assert 8 <= decision.remaining < 9


@pytest.mark.parametrize(
    ("text", "count", "period"),
    [
        ("100/60", 100, 60),
        ("100/60s", 100, 60),
        ("100/m", 100, 60),
        ("5/1s", 5, 1),
        ("1000/h", 1000, 3600),
        ("10/2min", 10, 120),
        ("3/day", 3, 86400),
        ("2.5/0.5s", 2.5, 0.5),
        (" 7 / 30 seconds ", 7, 30),
        ("1/H", 1, 3600),
    ],
)
def test_limit_parse_accepts_count_per_period(text: str, count: float, period: float) -> None:
    assert Limit.parse(text) == Limit(count, period)


@pytest.mark.parametrize(
    "text",
    ["", "100", "100/", "/60", "0/60", "100/0s", "-1/60", "100/60x", "100/ms", "a/b", "1/2/3"],
)
def test_limit_parse_rejects_garbage_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match="(invalid rate limit|positive number)"):
        Limit.parse(text)


def test_a_limit_prints_as_it_parses() -> None:
    assert str(Limit.parse("100/m")) == "100/60s"
    assert Limit.parse(str(Limit(2.5, 0.5))) == Limit(2.5, 0.5)


@pytest.mark.parametrize(
    "limit", [Limit(1_000_000, 60), Limit(1e12, 1e-7), Limit(0.1, 86400 * 365), Limit(1 / 3, 7)]
)
def test_a_limit_of_any_size_prints_without_an_exponent_and_parses_back(limit: Limit) -> None:
    # "1e+06/60s" would not parse: a stored key with a large token limit would be unreadable.
    assert "e" not in str(limit)[:-1]
    assert Limit.parse(str(limit)) == limit
