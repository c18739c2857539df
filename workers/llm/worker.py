"""`LLMWorker`: serves every alias of its config on the bus, in a queue group per alias, so a
second worker doubles capacity with no configuration.

Request body: msgpack of an OpenAI chat-completions request. Reply: a `chat.completion` object,
or, for a streaming call, `chat.completion.chunk` objects as chunks (see docs/PROTOCOL.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from agentmesh.broker.lifecycle import MeshService
from agentmesh.broker.service import Service
from agentmesh.broker.settings import Settings
from agentmesh.broker.types import Request
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import InvalidMessage
from agentmesh.schemas.service import Serves, ServiceKind
from agentmesh.workers.llm.config import LLMConfig, ModelConfig
from agentmesh.workers.llm.providers import make_provider
from agentmesh.workers.llm.router import ModelRouter

logger = logging.getLogger(__name__)

DRAIN_TIMEOUT = 600.0  # seconds the calls of a removed alias may take to finish (long streams)


@dataclass(slots=True)
class _Served:
    router: ModelRouter  # replaced by `apply` when the alias's deployments change
    service: Service | None = None


def _deployments(model: ModelConfig) -> str:
    return ", ".join(d.describe() for d in model.deployments)


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


class LLMWorker(MeshService):
    """Serves the aliases of an `LLMConfig`; in the registry as kind `llm-worker`.

    Args:
        config: the models and their deployments.
        name: the worker's service name in the registry (several workers may share one).
    """

    kind = ServiceKind.LLM_WORKER

    def __init__(self, config: LLMConfig, *, name: str = "llm-worker") -> None:
        super().__init__(name)
        self.config = config
        self._http: httpx.AsyncClient | None = None
        self._served: dict[str, _Served] = {}  # alias → its router and its Service
        self._draining: set[asyncio.Task[None]] = set()  # removed aliases finishing their calls

    @property
    def worker_id(self) -> str | None:
        """This worker's instance id (while it runs)."""
        return self.instance_id

    @property
    def aliases(self) -> list[str]:
        return [m.name for m in self.config.models]

    def serves(self) -> Serves:
        return Serves(models=self.aliases)

    async def _announce(self) -> None:
        """Re-announce now: the aliases served changed."""
        self.announce_now()

    async def on_start(self) -> None:
        # One pooled client for every deployment: connections are reused across calls.
        # Keep every connection alive: above the default 20 idle ones, each call beyond them
        # would open (and close) a TCP connection of its own.
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200)
        )
        for model in self.config.models:
            await self._serve(model)

    async def start(self, settings: Settings | None = None) -> None:
        await super().start(settings)
        logger.info("LLM worker %s serving %s", self.instance_id, ", ".join(self.aliases))

    async def _serve(self, model: ModelConfig) -> None:
        served = _Served(self._router(model))
        subject = self.bus.subjects.llm(model.name)
        served.service = await self.bus.serve(subject, self._handler(served), queue=subject)
        self._served[model.name] = served

    def _router(self, model: ModelConfig) -> ModelRouter:
        assert self._http is not None
        providers = [make_provider(d, self._http) for d in model.deployments]
        return ModelRouter(model, providers, self.redis, self.bus.subjects)

    def _handler(self, served: _Served):  # noqa: ANN202 - a broker Handler
        async def handle(request: Request) -> bytes | AsyncIterator[bytes]:
            router = served.router  # taken once: a swap by `apply` leaves this call on its own
            body = parse_request(request.data)
            if request.stream:
                return (pack(chunk) async for chunk in router.stream(body))
            return pack(await router.complete(body))

        return handle

    async def apply(self, config: LLMConfig) -> None:
        """Serve `config` from now on, without dropping a call in flight.

        An added alias is served at once. A removed alias leaves its queue group (new calls get
        MODEL_NOT_FOUND unless another worker serves it) while its calls in flight finish. A
        changed alias gets a new router: new calls use the new deployments, calls in flight
        finish on the old ones.
        """
        old = {m.name: m for m in self.config.models}
        new = {m.name: m for m in config.models}
        removed = [name for name in old if name not in new]
        for name, model in new.items():
            if name not in old:
                await self._serve(model)
                logger.info("serving model %s (added)", name)
            elif model != old[name]:
                self._served[name].router = self._router(model)
                logger.info("model %s changed: new calls use %s", name, _deployments(model))
        self.config = config
        for name in removed:
            service = self._served.pop(name).service
            if service is not None:
                await service.unsubscribe()  # new calls: MODEL_NOT_FOUND once apply returns
                task = asyncio.get_running_loop().create_task(service.stop(timeout=DRAIN_TIMEOUT))
                self._draining.add(task)
                task.add_done_callback(self._draining.discard)
            logger.info("stopped serving model %s (removed)", name)
        await self._announce()

    async def on_stop(self) -> None:
        for task in list(self._draining):
            task.cancel()  # closing the bus below drains their calls in flight
        if self.running:
            await self.bus.close()  # drain the calls in flight before their HTTP client goes
        if self._http is not None:
            await self._http.aclose()
            self._http = None
