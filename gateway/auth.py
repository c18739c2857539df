"""Who is calling: API keys and scopes. `require(scope)` is the one dependency routes use.

With auth off (the default), every caller is the anonymous principal with every scope, except
on admin routes: those need `AGENTMESH_ADMIN_TOKEN` there, or are off. With
`AGENTMESH_AUTH=on`, a call presents a key (`Authorization: Bearer <key>` or `X-API-Key`; a
WebSocket may use `?api_key=<key>`, as browsers cannot set its headers), then passes the scope
check and the key's rate limit, which all replicas share through Redis.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

from redis.exceptions import RedisError
from starlette.requests import HTTPConnection

from agentmesh.broker.ratelimit import Limit
from agentmesh.gateway.state import GatewayConfig, state_of
from agentmesh.schemas.errors import Forbidden, Unauthorized, Unavailable


class Scope(StrEnum):
    AGENTS_READ = "agents:read"  # list and inspect agents, status
    SEND = "send"  # send messages to agents (HTTP, webhooks excluded)
    CONNECT = "connect"  # attach as an agent over WebSocket
    # Save the runtime's agents, prompt templates, HTTP tools and skills (an agent with bash
    # enabled needs admin).
    DEFINE = "define"
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
    # Agent ids the key may attach as and send as (`*`/`?` patterns); admin keys: any.
    agents: tuple[str, ...] = ()
    # Agent ids the key may call (send to, submit tasks for, reach over A2A), as `*`/`?`
    # patterns: `("a*", "support")`. None: every agent (also for admin keys, as for `tools`).
    to_agents: tuple[str, ...] | None = None

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def may_act_as(self, agent_id: str) -> bool:
        """Whether the key may attach as `agent_id` or send messages in its name."""
        if Scope.ADMIN in self.scopes:
            return True
        return any(fnmatchcase(agent_id, pattern) for pattern in self.agents)

    def check_act_as(self, agent_id: str, *, what: str) -> None:
        """Raises:
        Forbidden: the key may not act as `agent_id` (`what`: "attach as", "send as").
        """
        if not self.may_act_as(agent_id):
            raise Forbidden(
                f"key '{self.key_id}' ({self.name}) may not {what} agent '{agent_id}': its agent "
                "patterns do not match (`agentmesh keys create NAME --agents PATTERN`)",
                details={"agent_id": agent_id, "key_id": self.key_id},
            )

    def may_reach(self, agent_id: str) -> bool:
        """Whether the key may call `agent_id` (its `to_agents` patterns)."""
        if self.to_agents is None:
            return True
        return any(fnmatchcase(agent_id, pattern) for pattern in self.to_agents)

    def check_reach(self, agent_id: str | None) -> None:
        """For the mesh's own routes (A2A answers a refused agent as a missing one instead).

        Raises:
            Forbidden: the key may not call `agent_id`; or, for a key limited to some agents,
                no agent id is named (a task for an `agent_type` could reach any agent).
        """
        if self.to_agents is None or (agent_id is not None and self.may_reach(agent_id)):
            return
        if agent_id is None:
            raise Forbidden(
                f"key '{self.key_id}' ({self.name}) may call only some agents (its to_agents "
                "patterns): name the agent by its id",
                details={"key_id": self.key_id},
            )
        raise Forbidden(
            f"key '{self.key_id}' ({self.name}) may not call agent '{agent_id}': its to_agents "
            "patterns do not match (`agentmesh keys create NAME --to-agents PATTERN`)",
            details={"agent_id": agent_id, "key_id": self.key_id},
        )

    def may_use_tool(self, server: str, tool: str) -> bool:
        if self.tools is None:
            return True
        name = f"{server}/{tool}"
        return any(fnmatchcase(name, pattern) for pattern in self.tools)


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(Scope))
SENDER_KEY = "sender_key"  # metadata the gateway sets on messages that enter with a key


def stamp_sender(metadata: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """`metadata` with `sender_key` set to the caller's key id (removed when there is no key),
    so an agent can tell which key a message came in with and a body cannot claim another."""
    out = {k: v for k, v in metadata.items() if k != SENDER_KEY}
    if principal.key_id is not None:
        out[SENDER_KEY] = principal.key_id
    return out


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

    Admin routes are never anonymous: see `bootstrap_admin`.

    Raises:
        Unauthorized: no key, or one that is malformed, unknown or revoked (HTTP 401).
        Forbidden: the key lacks `scope`, or an admin route on a gateway with auth off and no
            admin token (HTTP 403).
        RateLimited: the key's rate limit is spent (HTTP 429 with Retry-After).
        Unavailable: JetStream cannot be reached to check the key, or Redis to apply its rate
            limit (HTTP 503).
    """
    from agentmesh.gateway.keys import KeyStore  # gateway.keys imports Scope from here

    async def dependency(conn: HTTPConnection) -> Principal:
        state = state_of(conn)
        if scope is Scope.ADMIN:
            admin = bootstrap_admin(conn, state.config)
            if admin is not None:
                return admin
        if not state.config.auth:
            return ANONYMOUS
        key = presented_key(conn)
        if key is None:
            raise Unauthorized(f"missing API key: {HOW_TO_PASS}")
        try:
            record = await KeyStore(state.durable, state.bus.subjects).lookup(key)
        except Unavailable as exc:
            raise Unavailable(f"cannot check the API key: {exc.message}") from None
        if record is None:
            raise Unauthorized(f"invalid or revoked API key: {HOW_TO_PASS}")
        principal = Principal(
            name=record.name,
            scopes=record.scopes,
            key_id=record.key_id,
            rate_limit=record.rate_limit,
            token_limit=record.token_limit,
            tools=record.tools,
            agents=record.agents,
            to_agents=record.to_agents,
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


BOOTSTRAP_ADMIN = Principal(name="bootstrap-admin", scopes=frozenset({Scope.ADMIN}))
ADMIN_OFF = "admin_off"  # details.reason of the 403 on an auth-off gateway without a token
HOW_TO_ADMIN = (
    "turn auth on (AGENTMESH_AUTH=on) and use a key with the 'admin' scope, or set "
    "AGENTMESH_ADMIN_TOKEN on the gateway and send it as 'Authorization: Bearer <token>'; "
    "`agentmesh keys` works without either (it talks to NATS and Redis)"
)


def bootstrap_admin(conn: HTTPConnection, config: GatewayConfig) -> Principal | None:
    """The bootstrap admin when the caller sent `AGENTMESH_ADMIN_TOKEN`; None to go on checking
    keys (auth on). An auth-off gateway has no anonymous admin: a key minted there would work on
    every auth-on replica of the mesh.

    Raises:
        Unauthorized: auth off, a token is set, and the caller did not send it.
        Forbidden: auth off and no token set: the admin routes are off.
    """
    token = config.admin_token
    if token is None:
        if config.auth:
            return None
        raise Forbidden(
            f"the admin API is off: this gateway runs with auth off; {HOW_TO_ADMIN}",
            details={"reason": ADMIN_OFF},
        )
    presented = presented_key(conn)
    if presented is not None and _same(presented, token):
        return BOOTSTRAP_ADMIN
    if config.auth:
        return None
    raise Unauthorized(
        "missing or wrong admin token: send AGENTMESH_ADMIN_TOKEN as 'Authorization: Bearer "
        "<token>' (this gateway runs with auth off, so no API key is an admin here)"
    )


def _same(presented: str, token: str) -> bool:
    # Constant time, and digests first so the length of the token does not leak either.
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(), hashlib.sha256(token.encode()).digest()
    )
