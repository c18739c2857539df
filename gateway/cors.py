"""CORS for browsers, read from the replica's live config on every request (so a reload of the
`gateway.cors` section applies at once). The answers themselves are Starlette's CORSMiddleware."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send


class CORSPolicy(BaseModel):
    """Which browser origins may call the gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_origins: tuple[str, ...] = Field(
        (), description="Origins allowed, e.g. https://app.example.com; '*' allows any."
    )
    allow_origin_regex: str | None = Field(None, description="Origins matching this regex too.")
    allow_methods: tuple[str, ...] = Field(("*",), description="HTTP methods; '*' for all.")
    allow_headers: tuple[str, ...] = Field(("*",), description="Request headers; '*' for all.")
    allow_credentials: bool = Field(False, description="Allow cookies and Authorization.")
    expose_headers: tuple[str, ...] = Field((), description="Response headers a page may read.")
    max_age: int = Field(600, ge=0, description="Seconds a browser may cache a preflight answer.")


class LiveCORS:
    """ASGI middleware: apply `config.cors` as it is now (none: pass every request through)."""

    def __init__(self, app: ASGIApp, *, config: object) -> None:
        self.app = app
        self.config = config  # a GatewayConfig; `apply` changes its fields in place
        self._policy: CORSPolicy | None = None
        self._cors: ASGIApp = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        policy: CORSPolicy | None = getattr(self.config, "cors", None)
        if policy is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if policy is not self._policy:  # built once per policy, not per request
            self._cors = CORSMiddleware(
                self.app,
                allow_origins=policy.allow_origins,
                allow_origin_regex=policy.allow_origin_regex,
                allow_methods=policy.allow_methods,
                allow_headers=policy.allow_headers,
                allow_credentials=policy.allow_credentials,
                expose_headers=policy.expose_headers,
                max_age=policy.max_age,
            )
            self._policy = policy
        await self._cors(scope, receive, send)
