"""`LLMWorker`: serves every alias of its config on the bus, in a queue group per alias, so a
second worker doubles capacity with no configuration.

Request body: msgpack of an OpenAI chat-completions request. Reply: a `chat.completion` object,
or, for a streaming call, `chat.completion.chunk` objects as chunks (see docs/PROTOCOL.md).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from redis.exceptions import RedisError

from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.settings import Settings
from agentmesh.broker.types import Request
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import InvalidMessage
from agentmesh.workers.llm.config import LLMConfig
from agentmesh.workers.llm.providers import make_provider
from agentmesh.workers.llm.registry import ModelRegistry
from agentmesh.workers.llm.router import ModelRouter

logger = logging.getLogger(__name__)


def parse_request(data: bytes) -> dict[str, Any]:
    body = unpack(data)
    if not isinstance(body, dict):
        raise InvalidMessage("a chat request must be a map")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidMessage("'messages' must be a non-empty list")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise InvalidMessage("every message needs a 'role'")
    return body


class LLMWorker:
    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self.worker_id = uuid.uuid4().hex[:16]
        self._bus: Bus | None = None
        self._redis: Any = None
        self._http: httpx.AsyncClient | None = None
        self._registry: ModelRegistry | None = None
        self._beat: asyncio.Task[None] | None = None

    @property
    def aliases(self) -> list[str]:
        return [m.name for m in self.config.models]

    async def start(self, settings: Settings | None = None) -> None:
        settings = settings or Settings.from_env()
        self._redis = await connect_redis(settings)
        self._bus = await Bus.connect(
            settings, name="agentmesh-llm-worker", instance_id=self.worker_id
        )
        # One pooled client for every deployment: connections are reused across calls.
        # Keep every connection alive: above the default 20 idle ones, each call beyond them
        # would open (and close) a TCP connection of its own.
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200)
        )
        subjects = self._bus.subjects
        for model in self.config.models:
            providers = [make_provider(d, self._http) for d in model.deployments]
            router = ModelRouter(model, providers, self._redis, subjects)
            subject = subjects.llm(model.name)
            await self._bus.serve(subject, self._handler(router), queue=subject)
        self._registry = ModelRegistry(self._redis, subjects, timeout=settings.heartbeat_timeout)
        await self._registry.announce(self.worker_id, self.aliases)
        self._beat = asyncio.get_running_loop().create_task(self._announce(settings))
        logger.info("LLM worker %s serving %s", self.worker_id, ", ".join(self.aliases))

    def _handler(self, router: ModelRouter):  # noqa: ANN202 - a broker Handler
        async def handle(request: Request) -> bytes | AsyncIterator[bytes]:
            body = parse_request(request.data)
            if request.stream:
                return (pack(chunk) async for chunk in router.stream(body))
            return pack(await router.complete(body))

        return handle

    async def _announce(self, settings: Settings) -> None:
        assert self._registry is not None
        while True:
            await asyncio.sleep(settings.heartbeat_interval)
            try:
                await self._registry.announce(self.worker_id, self.aliases)
            except (RedisError, OSError) as exc:
                logger.warning("could not announce models (%s); retrying", exc)

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            self._beat = None
        if self._registry is not None:
            try:
                await self._registry.withdraw(self.worker_id, self.aliases)
            except (RedisError, OSError) as exc:
                logger.warning("could not withdraw models (%s)", exc)
        if self._bus is not None:
            await self._bus.close()
            self._bus = None
        if self._http is not None:
            await self._http.aclose()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
