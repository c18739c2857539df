"""What one gateway replica holds: connections, never mesh state (that lives in JetStream and
Redis)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from starlette.requests import HTTPConnection

from agentmesh.broker.bus import Bus
from agentmesh.broker.definitions import Definitions
from agentmesh.broker.durable import DurableState
from agentmesh.broker.ratelimit import RateLimiter
from agentmesh.broker.registry import Registry
from agentmesh.broker.sessions import SessionStore
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import ID_RE
from agentmesh.broker.tasks import TaskStore
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.gateway.cors import CORSPolicy

if TYPE_CHECKING:
    from agentmesh.gateway.tools import ToolDirectory

MIN_ADMIN_TOKEN_LEN = 16


@dataclass
class GatewayConfig:
    """Gateway options beyond the mesh `Settings` (`AGENTMESH_AUTH`, `AGENTMESH_ADMIN_TOKEN`,
    `AGENTMESH_GATEWAY_*`)."""

    auth: bool = False  # AGENTMESH_AUTH=on: every call needs an API key
    # AGENTMESH_ADMIN_TOKEN: a bootstrap secret that opens the admin routes (keys, usage), also
    # with auth off; with auth off and no token those routes are off.
    admin_token: str | None = field(default=None, repr=False)
    max_body_bytes: int = 1024 * 1024  # HTTP bodies and WebSocket frames
    ws_idle_timeout: float | None = None  # default: the heartbeat timeout
    cors: CORSPolicy | None = None  # none: no CORS headers
    # AGENTMESH_GATEWAY_MAX_CONNECTIONS: connections (HTTP and WebSocket) a replica holds at
    # once; beyond it new requests get 503 at once (uvicorn's limit_concurrency). Needs a restart.
    max_connections: int | None = None
    # AGENTMESH_GATEWAY_HANDSHAKE_TIMEOUT: seconds a connection has to deliver a request's
    # headers (WebSocket upgrades included) before it is closed; applies to new connections live.
    handshake_timeout: float = 10.0
    # AGENTMESH_GATEWAY_ALLOW_MCP_COMMANDS: `POST /v1/tools/mcp` may add stdio MCP servers (a
    # `command` every MCP worker following the shared config runs); off: URL servers only.
    allow_mcp_commands: bool = False
    # AGENTMESH_GATEWAY_A2A_PUSH_ALLOW_PRIVATE: A2A push notification webhooks may be at private,
    # loopback or link-local addresses (off: such a config is refused, and never posted to).
    a2a_push_allow_private: bool = False
    # AGENTMESH_GATEWAY_PUBLIC_URL: the gateway's URL as clients reach it (`https://mesh.example`,
    # a path prefix allowed); A2A cards point there. None: per request, from X-Forwarded-*/Host.
    public_url: str | None = None
    # AGENTMESH_GATEWAY_A2A_DEFAULT_AGENT: the agent whose A2A card `/.well-known/agent-card.json`
    # serves (none: 404).
    a2a_default_agent: str | None = None
    # AGENTMESH_GATEWAY_A2A_PROXY (`name=url,...`): outside A2A agents the gateway proxies at
    # `/a2a-proxy/<name>`, each the URL its card is under (`<url>/.well-known/agent-card.json`).
    a2a_proxy: dict[str, str] = field(default_factory=dict)
    # The mesh file's `channels:` list (gateway/channels/): chat apps whose events come to
    # `/channels/<kind>/<name>/events`. Only from the file (their secrets: `${VAR}` there).
    channels: tuple[ChannelConfig, ...] = ()

    def apply(self, new: GatewayConfig) -> list[str]:
        """Take `new`'s values in place (every holder sees them at once); the names changed."""
        changed = [f.name for f in fields(self) if getattr(self, f.name) != getattr(new, f.name)]
        for name in changed:
            setattr(self, name, getattr(new, name))
        return changed

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> GatewayConfig:
        import os

        env = os.environ if environ is None else environ
        auth = _flag(env.get("AGENTMESH_AUTH", "off"))
        allow_mcp_commands = _flag(env.get("AGENTMESH_GATEWAY_ALLOW_MCP_COMMANDS", "off"))
        push_private = _flag(env.get("AGENTMESH_GATEWAY_A2A_PUSH_ALLOW_PRIVATE", "off"))
        admin_token = env.get("AGENTMESH_ADMIN_TOKEN", "").strip() or None
        if admin_token is not None and len(admin_token) < MIN_ADMIN_TOKEN_LEN:
            raise ValueError(
                f"AGENTMESH_ADMIN_TOKEN is too short: use at least {MIN_ADMIN_TOKEN_LEN} "
                "characters (for example `openssl rand -hex 32`)"
            )
        try:
            body = int(env.get("AGENTMESH_GATEWAY_MAX_BODY_BYTES", cls.max_body_bytes))
            idle_text = env.get("AGENTMESH_GATEWAY_WS_IDLE_TIMEOUT", "")
            idle = float(idle_text) if idle_text else None
            most_text = env.get("AGENTMESH_GATEWAY_MAX_CONNECTIONS", "")
            most = int(most_text) if most_text else None
            handshake = float(
                env.get("AGENTMESH_GATEWAY_HANDSHAKE_TIMEOUT", "") or cls.handshake_timeout
            )
            public_url = http_url(env.get("AGENTMESH_GATEWAY_PUBLIC_URL", ""), what="public URL")
            default_agent = agent_id_or_none(env.get("AGENTMESH_GATEWAY_A2A_DEFAULT_AGENT", ""))
            a2a_proxy = proxy_targets(env.get("AGENTMESH_GATEWAY_A2A_PROXY", ""))
        except ValueError as exc:
            raise ValueError(f"bad AGENTMESH_GATEWAY_* setting: {exc}") from None
        if most is not None and most < 1:
            raise ValueError("AGENTMESH_GATEWAY_MAX_CONNECTIONS must be at least 1")
        if not handshake > 0:  # also refuses nan
            raise ValueError("AGENTMESH_GATEWAY_HANDSHAKE_TIMEOUT must be more than 0 seconds")
        return cls(
            auth=auth,
            admin_token=admin_token,
            max_body_bytes=body,
            ws_idle_timeout=idle,
            max_connections=most,
            handshake_timeout=handshake,
            allow_mcp_commands=allow_mcp_commands,
            a2a_push_allow_private=push_private,
            public_url=public_url,
            a2a_default_agent=default_agent,
            a2a_proxy=a2a_proxy,
        )


def http_url(text: str | None, *, what: str) -> str | None:
    """`text` as an absolute http(s) URL without query, fragment or trailing `/`; None if blank.

    Raises:
        ValueError: not such a URL.
    """
    text = (text or "").strip()
    if not text:
        return None
    parts = urlsplit(text)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"{what} {text!r} has a bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{what} {text!r} is not an http:// or https:// URL with a host")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(f"{what} {text!r} may have no query, fragment or user name")
    return text.rstrip("/")


def agent_id_or_none(text: str | None) -> str | None:
    """An agent id (None if blank). Raises ValueError: not an agent id."""
    text = (text or "").strip()
    if text and not ID_RE.fullmatch(text):
        raise ValueError(f"a2a default agent {text!r} is not an agent id")
    return text or None


def proxy_targets(given: str | dict[str, str] | None) -> dict[str, str]:
    """The proxied outside agents, from `{"weather": url}` or `"weather=url,news=url"`.

    Raises:
        ValueError: a name that is not an id, a bad URL, a name given twice.
    """
    if isinstance(given, dict):
        pairs = list(given.items())
    else:
        items = [item.strip() for item in (given or "").split(",") if item.strip()]
        pairs = [tuple(item.partition("=")[::2]) for item in items]
    out: dict[str, str] = {}
    for name, url in pairs:
        name = name.strip()
        if not ID_RE.fullmatch(name):
            raise ValueError(f"a2a proxy name {name!r} is not an id (letters, digits, _ and -)")
        if name in out:
            raise ValueError(f"a2a proxy {name!r} is given twice")
        target = http_url(url, what=f"a2a proxy {name!r} URL")
        if target is None:
            raise ValueError(f"a2a proxy {name!r} has no URL (name=https://...)")
        out[name] = target
    return out


def _flag(text: str) -> bool:
    return text.strip().lower() in {"on", "1", "true", "yes"}


@dataclass
class GatewayState:
    settings: Settings
    config: GatewayConfig
    bus: Bus
    redis: aioredis.Redis
    durable: DurableState  # keys, webhooks and usage in JetStream, on `bus`'s connection
    registry: Registry
    limiter: RateLimiter
    tools: ToolDirectory
    tasks: TaskStore  # durable tasks and traces (created on first use)
    definitions: Definitions  # the runtime's saved agents, templates, tools, skills, secrets
    sessions: SessionStore  # the runtime's sessions
    started_at: float = field(default_factory=time.time)


def state_of(conn: HTTPConnection) -> GatewayState:
    """The replica's state, for code that is not a FastAPI dependency."""
    return conn.app.state.gateway


async def get_state(conn: HTTPConnection) -> GatewayState:
    """FastAPI dependency: the replica's state (set up by the app's lifespan).

    `async` on purpose: FastAPI runs a plain `def` dependency in a worker thread, per request.
    """
    return conn.app.state.gateway
