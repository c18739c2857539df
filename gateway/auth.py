"""Who is calling: API keys and scopes. `require(scope)` is the one dependency routes use.

With auth off (the default), every caller is the anonymous principal with every scope. With
`AGENTMESH_AUTH=on`, a call presents a key (`Authorization: Bearer <key>` or `X-API-Key`; a
WebSocket may use `?api_key=<key>`, as browsers cannot set its headers), then passes the scope
check and the key's rate limit, which all replicas share through Redis.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from agentmesh.broker.ratelimit import Limit
from agentmesh.gateway.state import state_of
from agentmesh.schemas.errors import Forbidden, Unauthorized, Unavailable


class Scope(StrEnum):
    AGENTS_READ = "agents:read"  # list and inspect agents, status
    SEND = "send"  # send messages to agents (HTTP, webhooks excluded)
    CONNECT = "connect"  # attach as an agent over WebSocket
    ADMIN = "admin"  # everything, including key management


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[Scope]
    key_id: str | None = None
    rate_limit: Limit | None = None  # requests per period
    token_limit: Limit | None = None  # LLM tokens per period (see gateway.llm_limits)
    # MCP tools the key may list and call, as `server/tool` patterns (`*` matches any run of
    # characters): `("time/*", "github/get_*")`. None: every tool.
    tools: tuple[str, ...] | None = None

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def may_use_tool(self, server: str, tool: str) -> bool:
        if self.tools is None:
            return True
        name = f"{server}/{tool}"
        return any(fnmatchcase(name, pattern) for pattern in self.tools)


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(Scope))


HOW_TO_PASS = (
    "send an API key as 'Authorization: Bearer <key>' (or 'X-API-Key: <key>'; WebSockets may "
    "use the query parameter ?api_key=<key>); create one with `agentmesh keys create NAME`"
)


def presented_key(conn: HTTPConnection) -> str | None:
    """The key the caller sent, if any.

    Raises:
        Unauthorized: an `Authorization` header with a scheme other than Bearer.
    """
    header = conn.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            # Not echoed: a client that forgot "Bearer " would see its key in the reply.
            raise Unauthorized(f"the Authorization header is not 'Bearer <key>': {HOW_TO_PASS}")
        return value.strip() or None
    key = conn.headers.get("x-api-key")
    if key is None and conn.scope["type"] == "websocket":
        key = conn.query_params.get("api_key")
    if key is None:
        return None
    return key.strip() or None


def require(scope: Scope) -> Callable[[HTTPConnection], Awaitable[Principal]]:
    """A FastAPI dependency: the caller, authenticated and allowed `scope`.

    Raises:
        Unauthorized: no key, or one that is malformed, unknown or revoked (HTTP 401).
        Forbidden: the key lacks `scope` (HTTP 403).
        RateLimited: the key's rate limit is spent (HTTP 429 with Retry-After).
        Unavailable: Redis cannot be reached to check the key (HTTP 503).
    """
    from agentmesh.gateway.keys import KeyStore  # gateway.keys imports Scope from here

    async def dependency(conn: HTTPConnection) -> Principal:
        state = state_of(conn)
        if not state.config.auth:
            return ANONYMOUS
        key = presented_key(conn)
        if key is None:
            raise Unauthorized(f"missing API key: {HOW_TO_PASS}")
        try:
            record = await KeyStore(state.redis, state.bus.subjects).lookup(key)
        except (RedisError, OSError):
            raise Unavailable("cannot check the API key: Redis is unreachable") from None
        if record is None:
            raise Unauthorized(f"invalid or revoked API key: {HOW_TO_PASS}")
        principal = Principal(
            name=record.name,
            scopes=record.scopes,
            key_id=record.key_id,
            rate_limit=record.rate_limit,
            token_limit=record.token_limit,
            tools=record.tools,
        )
        if not principal.allows(scope):
            raise Forbidden(
                f"key '{record.key_id}' ({record.name}) lacks the scope '{scope}'",
                details={"scope": str(scope), "key_id": record.key_id},
            )
        if record.rate_limit is not None:
            try:
                await state.limiter.check(f"key:{record.key_id}", record.rate_limit)
            except (RedisError, OSError):
                raise Unavailable("cannot apply the rate limit: Redis is unreachable") from None
        return principal

    return dependency
