"""The `gateway` section of the mesh file: where a replica listens and the options it applies live.

gateway:
  host: 127.0.0.1          # needs a restart to change
  port: 8001               # needs a restart to change
  auth: true               # every call needs an API key
  max_body_bytes: 1048576  # HTTP bodies and WebSocket frames
  ws_idle_timeout: 60      # seconds without a frame before a WebSocket agent is closed
  max_connections: 2000    # connections held at once (503 beyond); needs a restart
  handshake_timeout: 10    # seconds to send a request's headers before the connection is closed
  allow_mcp_commands: false  # POST /v1/tools/mcp may add stdio servers (programs MCP workers run)
  public_url: https://agents.example.com  # A2A cards point here (default: X-Forwarded-*/Host)
  a2a_default_agent: helper  # the card at /.well-known/agent-card.json
  a2a_proxy:               # outside A2A agents at /a2a-proxy/<name>
    weather: https://weather.example/a2a
  cors:
    allow_origins: ["https://app.example.com"]
    allow_credentials: true

A field the section leaves out keeps its value from the environment (`AGENTMESH_AUTH`,
`AGENTMESH_GATEWAY_*`) or its default, so a file never turns auth off by not mentioning it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentmesh.gateway.cors import CORSPolicy
from agentmesh.gateway.state import GatewayConfig, agent_id_or_none, http_url, proxy_targets

DEFAULT_PORT = 8001
# A running replica cannot move or resize its listener; the rest applies live.
RESTART_FIELDS = ("host", "port", "max_connections")


class GatewaySection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 for all).")
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="Port to listen on.")
    auth: bool = Field(False, description="Every call needs an API key (`agentmesh keys`).")
    max_body_bytes: int = Field(
        1024 * 1024, gt=0, description="Largest HTTP body and WebSocket frame, in bytes."
    )
    ws_idle_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds without a frame before a WebSocket agent is closed "
        "(default: the heartbeat timeout).",
    )
    cors: CORSPolicy | None = Field(None, description="CORS for browsers; none: no CORS headers.")
    max_connections: int | None = Field(
        None,
        gt=0,
        description="Connections (HTTP and WebSocket) one replica holds at once; beyond it new "
        "requests are answered 503 at once. Needs a restart. Default: no limit.",
    )
    handshake_timeout: float = Field(
        GatewayConfig.handshake_timeout,
        gt=0,
        description="Seconds a connection has, from being accepted or from the first byte of "
        "its next request, to send that request's headers (WebSocket upgrades included); then "
        "it is answered 408 and closed (closed alone if it sent nothing).",
    )
    allow_mcp_commands: bool = Field(
        GatewayConfig.allow_mcp_commands,
        description="`POST /v1/tools/mcp` may add stdio MCP servers (a `command` that every MCP "
        "worker following the shared config runs); off: only URL servers.",
    )
    public_url: str | None = Field(
        None,
        description="The gateway's URL as clients reach it (http or https, a path prefix "
        "allowed); A2A cards point there. Default: per request, from X-Forwarded-Proto/"
        "X-Forwarded-Host or Host.",
        examples=["https://agents.example.com"],
    )
    a2a_default_agent: str | None = Field(
        None,
        description="The agent whose A2A card `/.well-known/agent-card.json` serves "
        "(404 without one, or while it is offline).",
    )
    a2a_proxy: dict[str, str] = Field(
        default_factory=dict,
        description="Outside A2A agents proxied at `/a2a-proxy/<name>`: name → the URL the "
        "agent's card is under (`<url>/.well-known/agent-card.json`).",
        examples=[{"weather": "https://weather.example/a2a"}],
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return http_url(value, what="public URL")

    @field_validator("a2a_default_agent")
    @classmethod
    def _default_agent(cls, value: str | None) -> str | None:
        return agent_id_or_none(value)

    @field_validator("a2a_proxy")
    @classmethod
    def _proxy(cls, value: dict[str, str]) -> dict[str, str]:
        return proxy_targets(value)

    def to_config(self, base: GatewayConfig) -> GatewayConfig:
        """`base` (from the environment) with the options this section sets."""
        live = {
            "auth",
            "max_body_bytes",
            "ws_idle_timeout",
            "cors",
            "max_connections",
            "handshake_timeout",
            "allow_mcp_commands",
            "public_url",
            "a2a_default_agent",
            "a2a_proxy",
        }
        changes: dict[str, Any] = {
            name: getattr(self, name) for name in self.model_fields_set & live
        }
        return replace(base, **changes)
