"""Failover across an alias's deployments, with cooldowns every worker shares through Redis.

Deployments are tried in priority order. A retryable failure (connection error, timeout, 429,
5xx) cools the deployment down for all workers (`p:llm:cooldown:<deployment key>`, for its
Retry-After or a default) and the next one is tried; a stream is only retried before its first
chunk. Each call tries each deployment at most once. The attempts are reported in the
response's `agentmesh` field.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.errors import InvalidMessage, MeshError, RateLimited, Unavailable
from agentmesh.workers.llm.config import ModelConfig
from agentmesh.workers.llm.providers.base import Body, Provider, ProviderError

logger = logging.getLogger(__name__)

DEFAULT_COOLDOWN = 5.0  # seconds, when the upstream names none
MAX_COOLDOWN = 300.0


class ModelRouter:
    def __init__(
        self,
        model: ModelConfig,
        providers: list[Provider],
        redis: aioredis.Redis,
        subjects: Subjects,
    ) -> None:
        self.model = model
        self.providers = providers  # in priority order, as model.deployments
        self.redis = redis
        self._keys = [subjects.key("llm", "cooldown", p.deployment.key) for p in providers]

    async def complete(self, request: Body) -> Body:
        attempts: list[dict[str, Any]] = []
        for index in await self._available(attempts):
            provider = self.providers[index]
            try:
                response = await provider.complete(request)
            except ProviderError as exc:
                await self._failed(index, exc, attempts)
                continue
            response["agentmesh"] = self._meta(provider, attempts)
            return response
        raise self._exhausted(attempts)

    async def stream(self, request: Body) -> AsyncIterator[Body]:
        attempts: list[dict[str, Any]] = []
        for index in await self._available(attempts):
            provider = self.providers[index]
            first = True
            try:
                async for chunk in provider.stream(request):
                    if first:
                        chunk["agentmesh"] = self._meta(provider, attempts)
                        first = False
                    yield chunk
                return
            except ProviderError as exc:
                if not first:
                    # Tokens already reached the caller: a retry would repeat them.
                    raise Unavailable(
                        f"stream from {provider.deployment.describe()} broke: {exc.message}"
                    ) from None
                await self._failed(index, exc, attempts)
        raise self._exhausted(attempts)

    # --------------------------------------------------------------------------------------
    async def _available(self, attempts: list[dict[str, Any]]) -> list[int]:
        """Indexes of deployments not cooling down; a cooling one is recorded as skipped."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self._keys:
                    pipe.pttl(key)
                ttls = await pipe.execute()
        except (RedisError, OSError):
            logger.warning(
                "cooldowns unreadable (Redis); trying every deployment of %s", self.model.name
            )
            return list(range(len(self.providers)))
        ready = []
        for index, ttl in enumerate(ttls):
            if ttl is not None and ttl > 0:
                attempts.append(
                    {
                        "deployment": self.providers[index].deployment.describe(),
                        "skipped": "cooling down",
                        "retry_after": ttl / 1000,
                    }
                )
            else:
                ready.append(index)
        return ready

    async def _failed(self, index: int, exc: ProviderError, attempts: list[dict[str, Any]]) -> None:
        deployment = self.providers[index].deployment
        attempts.append(
            {"deployment": deployment.describe(), "error": exc.message, "status": exc.status}
        )
        if not exc.retryable:
            raise _as_mesh_error(exc, attempts)
        cooldown = min(MAX_COOLDOWN, exc.retry_after if exc.retry_after else DEFAULT_COOLDOWN)
        logger.warning(
            "%s failed (%s); cooling it down for %.1fs",
            deployment.describe(),
            exc.message,
            cooldown,
        )
        try:
            await self.redis.set(
                self._keys[index], exc.message[:200], px=max(1, int(cooldown * 1000))
            )
        except (RedisError, OSError):
            logger.warning("could not record the cooldown of %s (Redis)", deployment.describe())

    def _meta(self, provider: Provider, attempts: list[dict[str, Any]]) -> dict[str, Any]:
        return {"deployment": provider.deployment.describe(), "attempts": attempts}

    def _exhausted(self, attempts: list[dict[str, Any]]) -> MeshError:
        details = {"model": self.model.name, "attempts": attempts}
        waits = [a.get("retry_after") for a in attempts if a.get("status") == 429 or "skipped" in a]
        if attempts and len(waits) == len(attempts):
            retry = min((w for w in waits if w), default=DEFAULT_COOLDOWN)
            return RateLimited(
                f"every deployment of {self.model.name} is rate limited or cooling down",
                retry_after=retry,
                details=details,
            )
        return Unavailable(f"every deployment of {self.model.name} failed", details=details)


def _as_mesh_error(exc: ProviderError, attempts: list[dict[str, Any]]) -> MeshError:
    details = {"upstream_status": exc.status, "attempts": attempts}
    if exc.status in (400, 413, 422):
        return InvalidMessage(exc.message, details=details)
    return Unavailable(exc.message, details=details)
