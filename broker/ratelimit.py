"""Rate limits shared by every replica: an atomic token bucket in Redis ("N per SECONDS").

Used by the gateway for per-key request limits and for LLM token budgets (reserve, then adjust).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from importlib.resources import files

import redis.asyncio as aioredis

from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.errors import RateLimited

_SCRIPT = files(__package__).joinpath("ratelimit.lua").read_text(encoding="utf-8")

_UNITS = {
    "s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_NUM = r"\d+(?:\.\d*)?|\.\d+"
_LIMIT_RE = re.compile(rf"^\s*({_NUM})\s*/\s*({_NUM})?\s*([a-z]*)\s*$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `count` per `period` seconds; a burst of `count` passes at once."""

    count: float
    period: float

    def __post_init__(self) -> None:
        for name in ("count", "period"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"limit {name} must be a positive number, not {value!r}")

    @classmethod
    def parse(cls, text: str) -> Limit:
        """Read `"100/60"`, `"100/60s"`, `"100/m"`, `"5/1s"`, `"1000/h"`, `"10/2min"`, `"5/day"`.

        Raises:
            ValueError: `text` is not `COUNT/[NUMBER][UNIT]` with a unit of s, m, h or d.
        """
        match = _LIMIT_RE.match(text) if isinstance(text, str) else None
        unit = _UNITS.get(match.group(3).lower() or "s") if match else None
        if match is None or unit is None or (match.group(2) is None and not match.group(3)):
            raise ValueError(
                f"invalid rate limit {text!r}: write COUNT/PERIOD such as '100/60s', '100/m', "
                "'1000/h' (units s, m, h, d; a bare number is seconds)"
            )
        period = float(match.group(2)) * unit if match.group(2) else unit
        return cls(float(match.group(1)), period)

    def __str__(self) -> str:
        return f"{_plain(self.count)}/{_plain(self.period)}s"


def _plain(value: float) -> str:
    """`value` without an exponent, as `parse` reads it: `:g` would print 1e+06 for a million."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one hit.

    `remaining` is the capacity left after it; `retry_after` the seconds until the same hit
    would pass (0 when allowed, `math.inf` when its cost exceeds the limit's count);
    `reset_after` the seconds until the bucket is full again.
    """

    allowed: bool
    remaining: float
    retry_after: float
    reset_after: float
    limit: Limit


class RateLimiter:
    """Token buckets in Redis under `<prefix>:rl:<key>`; exact across any number of replicas."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str) -> None:
        self._keys = Subjects(prefix)
        self._script = redis.register_script(_SCRIPT)

    async def hit(self, key: str, limit: Limit, *, cost: float = 1) -> Decision:
        """Take `cost` from the bucket of `key` if it holds that much; never waits.

        Raises:
            ValueError: `cost` is not a positive number.
        """
        _check_amount(cost, "cost", positive=True)
        allowed, remaining, retry, reset = await self._run(key, limit, cost, "hit")
        return Decision(
            allowed=allowed == 1,
            remaining=max(0.0, remaining),
            retry_after=math.inf if allowed == -1 else retry,
            reset_after=reset,
            limit=limit,
        )

    async def adjust(self, key: str, limit: Limit, delta: float) -> None:
        """Correct an earlier hit by `delta` once the real cost is known.

        A negative `delta` refunds (never above the limit's count); a positive one consumes more,
        into debt if need be, so later hits wait until it is paid back.
        """
        _check_amount(delta, "delta", positive=False)
        if delta:
            await self._run(key, limit, delta, "adjust")

    async def check(self, key: str, limit: Limit, *, cost: float = 1) -> Decision:
        """Like `hit`, but a refusal raises.

        Raises:
            RateLimited: the hit was refused; `retry_after` says when to try again (`math.inf`
                if `cost` exceeds the limit's count).
        """
        decision = await self.hit(key, limit, cost=cost)
        if decision.allowed:
            return decision
        if math.isinf(decision.retry_after):
            message = f"cost {cost:g} exceeds the rate limit of {limit} and can never pass"
        else:
            message = f"rate limit of {limit} exceeded; retry in {decision.retry_after:.3f}s"
        raise RateLimited(message, retry_after=decision.retry_after)

    async def _run(
        self, key: str, limit: Limit, amount: float, mode: str
    ) -> tuple[int, float, float, float]:
        raw = await self._script(
            keys=[self._keys.key("rl", key)],
            args=[repr(float(limit.count)), repr(limit.period * 1e6), repr(float(amount)), mode],
        )
        allowed, tokens, retry_us, reset_us = raw
        return int(allowed), float(tokens), float(retry_us) / 1e6, float(reset_us) / 1e6


def _check_amount(value: float, name: str, *, positive: bool) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value)) or (positive and value <= 0):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"{name} must be a {kind} number, not {value!r}")
