"""The gateway ASGI app: stateless HTTP, WebSocket and webhook ingress into the mesh.

Any request may reach any replica: delivery goes through NATS and state through Redis, so a
replica holds only its connections.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

import agentmesh
from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.presence import PresenceRegistry
from agentmesh.broker.ratelimit import RateLimiter
from agentmesh.broker.settings import Settings
from agentmesh.gateway import (
    agents_api,
    anthropic_api,
    errors,
    keys_api,
    openai_api,
    tools_api,
    webhooks,
    websocket,
)
from agentmesh.gateway.limits import BodyLimit
from agentmesh.gateway.mcp_server import FederatedMCP
from agentmesh.gateway.state import GatewayConfig, GatewayState
from agentmesh.gateway.tools import ToolDirectory

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> FastAPI:
    """A gateway replica. Connections open in the app's lifespan (uvicorn runs it)."""
    settings = settings or Settings.from_env()
    config = config or GatewayConfig.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = await connect_redis(settings)
        try:
            bus = await Bus.connect(settings, name="agentmesh-gateway")
        except BaseException:
            await redis.aclose()
            raise
        subjects = bus.subjects
        app.state.gateway = GatewayState(
            settings=settings,
            config=config,
            bus=bus,
            redis=redis,
            registry=PresenceRegistry(
                redis, subjects, heartbeat_timeout=settings.heartbeat_timeout
            ),
            limiter=RateLimiter(redis, prefix=settings.prefix),
            tools=ToolDirectory(bus, redis),
        )
        if not config.auth:
            logger.warning(
                "auth is OFF: anyone who can reach this gateway can use it "
                "(set AGENTMESH_AUTH=on and create keys with `agentmesh keys create`)"
            )
        try:
            async with mcp.run(app.state.gateway):
                yield
        finally:
            await bus.close()
            await redis.aclose()

    app = FastAPI(
        title="AgentMesh gateway",
        version=agentmesh.__version__,
        description="HTTP, WebSocket and webhook ingress into an AgentMesh mesh.",
        lifespan=lifespan,
    )
    mcp = FederatedMCP()
    errors.install(app)
    app.include_router(agents_api.router)
    app.include_router(openai_api.router)
    app.include_router(anthropic_api.router)
    app.include_router(keys_api.router)
    app.include_router(webhooks.router)
    app.include_router(websocket.router)
    app.include_router(tools_api.router)
    # A route, not a mount: a mount answers "/mcp" with a redirect to "/mcp/".
    app.router.routes.append(Route("/mcp", endpoint=mcp))
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    return app
