"""Token budgets per API key and usage counting around each LLM call of the gateway.

A key with a token limit ("10000/60": tokens per period, shared by every replica through the
same Redis token bucket as request limits) pays for a call before it is made, with an estimate,
and the estimate is corrected from the reply's `usage` once the call ends:

    estimate = ceil((len(compact JSON of `messages`) + len(... of `tools`)) / 4)   # prompt
             + (`max_completion_tokens` or `max_tokens` or 256) * (`n` or 1)    # completion

Four characters per token is OpenAI's rule of thumb for English; the completion part is what the
caller allows the model to write, so a call with `max_tokens` never costs more than reserved
(unless the prompt was underestimated). A failed call is refunded; a call that ends without
`usage` keeps its reservation. Every call is then counted per key and model (`gateway.usage`,
one JetStream event).

The reservation is on the call's path, and so is the settlement of a call that completed (the
correction and the count are written before the reply, or before a stream's end, goes out, so
usage is never lost for a completed call: JetStream has acked its event by then). Those of
failed or abandoned calls run in a task of their own once the call ends, so the reply does not
wait for them; until they land, the key's budget still holds the estimate (the cautious side).
`settled()` waits for them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from enum import Enum
from typing import Any

from redis.exceptions import RedisError

from agentmesh.broker.ratelimit import Limit
from agentmesh.gateway.auth import Principal
from agentmesh.gateway.state import GatewayState
from agentmesh.gateway.usage import UsageStore, tokens_of
from agentmesh.schemas.errors import MeshError, RateLimited, Unavailable

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
COMPLETION_RESERVE = 256  # tokens reserved for the reply when the call sets no maximum

# Settlements in flight in this process (held so they are not garbage collected midway).
_pending: set[asyncio.Task[None]] = set()


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """The tokens a chat request is expected to cost, before it is made (see the module doc)."""
    chars = sum(len(_compact(body[k])) for k in ("messages", "tools") if body.get(k))
    completion = _positive_int(body.get("max_completion_tokens"))
    completion = completion or _positive_int(body.get("max_tokens")) or COMPLETION_RESERVE
    choices = _positive_int(body.get("n")) or 1
    return math.ceil(chars / CHARS_PER_TOKEN) + completion * choices


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _positive_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _usage_of(chunk: object) -> object:
    return chunk.get("usage") if isinstance(chunk, dict) else None


def bucket(key_id: str) -> str:
    """The rate limiter's key for a key's token budget (its request limit is `key:<key_id>`)."""
    return f"tokens:{key_id}"


class Outcome(Enum):
    DONE = "done"  # the reply came, with or without usage
    FAILED = "failed"  # the mesh or the model failed: an error for the caller
    ABANDONED = "abandoned"  # the caller went away mid-stream


async def settled() -> None:
    """Return once every settlement this process started has been written (or has failed and
    been logged): a replica reads its own writes; tests wait on it instead of sleeping."""
    while _pending:
        await asyncio.gather(*_pending, return_exceptions=True)


class Meter:
    """One LLM call's reservation and usage. `start` reserves; then exactly one of `finish`,
    `fail` or `relay` (for a stream) settles it."""

    def __init__(
        self, state: GatewayState, principal: Principal, model: str, limit: Limit | None, cost: int
    ) -> None:
        self._state = state
        self._principal = principal
        self._model = model
        self._limit = limit
        self._reserved = cost  # 0 when the caller has no token limit

    @classmethod
    async def start(
        cls, state: GatewayState, principal: Principal, body: Mapping[str, Any]
    ) -> Meter:
        """Reserve the call's estimated tokens from the caller's budget, if it has one.

        Raises:
            RateLimited: the budget cannot cover the estimate now (`retry_after` says when), or
                ever (the estimate exceeds the limit's count). Counted as an error.
            Unavailable: Redis cannot be reached to apply the limit.
        """
        limit, key_id = principal.token_limit, principal.key_id
        if limit is None or key_id is None:
            return cls(state, principal, body["model"], None, 0)
        cost = estimate_tokens(body)
        try:
            decision = await state.limiter.hit(bucket(key_id), limit, cost=cost)
        except (RedisError, OSError):
            raise Unavailable("cannot apply the token limit: Redis is unreachable") from None
        if decision.allowed:
            return cls(state, principal, body["model"], limit, cost)
        cls(state, principal, body["model"], limit, 0)._settle(Outcome.FAILED, None)
        if math.isinf(decision.retry_after):
            message = (
                f"this call's estimated {cost} tokens exceed the key's token limit of {limit} "
                "and can never pass: send less, or a lower max_tokens"
            )
        else:
            message = (
                f"token limit of {limit} exceeded: this call needs an estimated {cost} tokens; "
                f"retry in {decision.retry_after:.3f}s"
            )
        raise RateLimited(
            message,
            retry_after=decision.retry_after,
            details={"estimated_tokens": cost, "token_limit": str(limit)},
        )

    async def finish(self, usage: object) -> None:
        """The call answered; `usage` is its OpenAI `usage` object, if any. Written before the
        caller gets the reply: a completed call is counted even if this process dies next."""
        await self._write(Outcome.DONE, usage)

    def fail(self) -> None:
        """The call failed: refund the reservation, count an error."""
        self._settle(Outcome.FAILED, None)

    async def relay(
        self, first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]]
    ) -> AsyncIterator[dict[str, Any]]:
        """`first`, then the rest of a stream's chunks; settled when the stream ends, from the
        usage chunk (workers send it last). A stream that breaks after its first chunk, or that
        its caller leaves, keeps its reservation: tokens were spent, and how many is unknown."""
        usage: object = None
        try:
            async with aclosing(chunks):  # type: ignore[type-var]
                if first is not None:
                    usage = _usage_of(first) or usage
                    yield first
                async for chunk in chunks:
                    usage = _usage_of(chunk) or usage
                    yield chunk
        except MeshError:
            self._reserved = 0  # kept, not refunded
            self._settle(Outcome.FAILED, usage)
            raise
        except BaseException:  # the caller left (GeneratorExit) or was cancelled
            self._settle(Outcome.ABANDONED, usage)
            raise
        # Before the caller's stream ends ([DONE]): a completed stream is always counted.
        await self._write(Outcome.DONE, usage)

    def _settle(self, outcome: Outcome, usage: object) -> None:
        task = asyncio.get_running_loop().create_task(self._write(outcome, usage))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    async def _write(self, outcome: Outcome, usage: object) -> None:
        tokens = tokens_of(usage) if outcome is Outcome.DONE else {}
        if outcome is Outcome.FAILED:
            await self._correct(-self._reserved)
        elif "total_tokens" in tokens:
            await self._correct(tokens["total_tokens"] - self._reserved)
        await self._count(tokens, error=outcome is Outcome.FAILED)

    async def _correct(self, delta: float) -> None:
        if self._limit is None or self._principal.key_id is None or not delta:
            return
        try:
            await self._state.limiter.adjust(bucket(self._principal.key_id), self._limit, delta)
        except (RedisError, OSError) as exc:
            logger.warning(
                "could not correct the token budget of key %s by %+g (%s)",
                self._principal.key_id,
                delta,
                exc,
            )

    async def _count(self, tokens: Mapping[str, int], *, error: bool) -> None:
        state = self._state
        store = UsageStore(state.durable, state.redis, state.bus.subjects)
        try:
            await store.add(self._principal.key_id, self._model, tokens, error=error)
        except Unavailable as exc:
            logger.warning("could not count usage of %s (%s)", self._model, exc.message)
