"""Who is calling: API keys and scopes. `require(scope)` is the one dependency routes use.

With auth off (the default), every caller is the anonymous principal with every scope.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from starlette.requests import HTTPConnection

from broker.ratelimit import Limit
from gateway.state import get_state


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
    rate_limit: Limit | None = None

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


ANONYMOUS = Principal(name="anonymous", scopes=frozenset(Scope))


def require(scope: Scope) -> Callable[[HTTPConnection], Awaitable[Principal]]:
    """A FastAPI dependency: the caller, authenticated and allowed `scope` (else 401/403/429)."""

    async def dependency(conn: HTTPConnection) -> Principal:
        state = get_state(conn)
        if not state.config.auth:
            return ANONYMOUS
        raise NotImplementedError  # replaced by the key store below

    return dependency
