"""The gateway ASGI app: stateless HTTP, WebSocket and webhook ingress into the mesh.

Any request may reach any replica: delivery goes through NATS, records (keys, webhooks, usage)
through JetStream and hot state through Redis, so a replica holds only its connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI
from redis.exceptions import RedisError
from starlette.routing import Route

from agentmesh.broker.definitions import Definitions
from agentmesh.broker.durable import DurableState
from agentmesh.broker.lifecycle import MeshService
from agentmesh.broker.ratelimit import RateLimiter
from agentmesh.broker.registry import Registry
from agentmesh.broker.sessions import SessionStore
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.broker.tasks import TaskStore
from agentmesh.gateway import (
    a2a,
    agents_api,
    anthropic_api,
    definitions_api,
    errors,
    keys_api,
    migration,
    openai_api,
    openapi,
    runtime_api,
    runtime_tools_api,
    sessions_api,
    shared_config_api,
    tasks_api,
    tools_api,
    webhooks,
    websocket,
)
from agentmesh.gateway.bodies import JsonBodies
from agentmesh.gateway.channels import routes as channels
from agentmesh.gateway.cors import LiveCORS
from agentmesh.gateway.limits import BodyLimit
from agentmesh.gateway.mcp_server import FederatedMCP
from agentmesh.gateway.state import GatewayConfig, GatewayState
from agentmesh.gateway.tools import ToolDirectory
from agentmesh.schemas.errors import ConnectionFailed, Unavailable
from agentmesh.schemas.service import Load, ServiceKind
from agentmesh.schemas.version import __version__

logger = logging.getLogger(__name__)


class GatewayService(MeshService):
    """The replica's own registry entry: listed as a `gateway`, with its address and sockets."""

    kind = ServiceKind.GATEWAY

    def __init__(self, app: FastAPI) -> None:
        super().__init__("gateway")
        self.app = app

    def load(self) -> Load:
        """Calls this replica relays into the mesh (HTTP, webhooks, sockets' own sends)."""
        return Load(in_flight=self.bus.calls_in_flight, served=self.bus.calls_made)

    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sockets": len(websocket.sessions_of(self.app))}
        listen = getattr(self.app.state, "listen", None)
        if listen:
            out["listen"] = listen
        return out


async def open_durable(durable: DurableState, redis: aioredis.Redis, subjects: Subjects) -> None:
    """Create the JetStream buckets and streams the gateway keeps its records in, and move
    records an earlier version left in Redis there, before the replica serves a call.

    Raises:
        ConnectionFailed: JetStream is not enabled on the NATS server, or cannot be reached.
    """
    try:
        await durable.ensure()
        await migration.migrate(durable, redis, subjects)
    except Unavailable as exc:
        raise ConnectionFailed(
            f"the gateway keeps API keys, webhooks and usage in NATS JetStream: {exc.message} "
            "(is JetStream enabled? nats-server -js, or `agentmesh up`)"
        ) from None
    except (RedisError, OSError) as exc:
        raise ConnectionFailed(f"cannot check Redis for records to migrate ({exc})") from None


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> FastAPI:
    """A gateway replica. Connections open in the app's lifespan (uvicorn runs it)."""
    settings = settings or Settings.from_env()
    config = config or GatewayConfig.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = GatewayService(app)
        await service.start(settings)
        bus, redis = service.bus, service.redis
        durable = DurableState(bus.nc, timeout=max(5.0, settings.connect_timeout))
        try:
            await open_durable(durable, redis, bus.subjects)
        except BaseException:
            await service.stop()
            raise
        app.state.gateway = GatewayState(
            settings=settings,
            config=config,
            bus=bus,
            redis=redis,
            durable=durable,
            registry=Registry(redis, bus.subjects, timeout=settings.heartbeat_timeout),
            limiter=RateLimiter(redis, prefix=settings.prefix),
            tools=ToolDirectory(bus, redis),
            tasks=TaskStore(bus.nc, settings),
            definitions=Definitions(durable, bus.subjects),
            sessions=SessionStore(durable, bus.subjects),
        )
        if not config.auth:
            logger.warning(
                "auth is OFF: anyone who can reach this gateway can use it "
                "(set AGENTMESH_AUTH=on and create keys with `agentmesh keys create`)"
            )
        try:
            async with (
                mcp.run(app.state.gateway),
                a2a.delivering(app.state.gateway),
                channels.serving(app, app.state.gateway),
            ):
                yield
        finally:
            await service.stop()

    app = FastAPI(
        title="AgentMesh gateway",
        version=__version__,
        description="HTTP, WebSocket and webhook ingress into an AgentMesh mesh.",
        lifespan=lifespan,
    )
    mcp = FederatedMCP()
    # Set when the server begins to stop (AsgiServer.shutdown): task waits and event streams
    # end then, as uvicorn waits for every open response before it stops.
    app.state.draining = asyncio.Event()
    errors.install(app)
    app.include_router(agents_api.router)
    app.include_router(openai_api.router)
    app.include_router(anthropic_api.router)
    app.include_router(keys_api.router)
    app.include_router(webhooks.router)
    app.include_router(websocket.router)
    app.include_router(tools_api.router)
    app.include_router(tasks_api.router)
    app.include_router(runtime_api.router)
    app.include_router(sessions_api.router)
    app.include_router(definitions_api.router)
    app.include_router(runtime_tools_api.router)
    app.include_router(shared_config_api.router)
    app.include_router(shared_config_api.models_router)
    app.include_router(a2a.router)  # every mesh agent as an A2A server (gateway/a2a/)
    app.include_router(channels.router)  # Feishu, Lark, Slack events (gateway/channels/)
    # A route, not a mount: a mount answers "/mcp" with a redirect to "/mcp/".
    app.router.routes.append(Route("/mcp", endpoint=mcp))
    openapi.install(app)
    # Both read the live config on every request: a reload changes `config` in place.
    app.add_middleware(JsonBodies)  # inside BodyLimit: it buffers only bodies under the limit
    app.add_middleware(BodyLimit, config=config)
    app.add_middleware(LiveCORS, config=config)  # outermost: preflights need no key or body
    return app
