"""`mcp.json`: the MCP servers a tool worker connects to, in the widely used `mcpServers` shape.

{"mcpServers": {
   "time":   {"command": "python", "args": ["-m", "mcp_server_time"]},
   "remote": {"url": "http://127.0.0.1:9000/mcp", "headers": {"Authorization": "Bearer ..."}},
   "legacy": {"url": "http://127.0.0.1:9001/sse", "type": "sse"}
}}

A server with `command` runs as a child process over stdio; one with `url` is reached over
Streamable HTTP, or over the older HTTP+SSE transport with `"type": "sse"`. `${VAR}` and
`${VAR:-default}` are expanded everywhere. Keys other clients add (`autoApprove`, ...) are ignored.
AgentMesh's own keys: `timeout` (seconds a call may take, default 60) and `disabled`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentmesh.broker.subjects import validate_id
from agentmesh.schemas.errors import InvalidId
from agentmesh.workers.config import ConfigError, read_config, validate_config

DEFAULT_TIMEOUT = 60.0

# Names clients use for the transport (`type` in Claude Code and VS Code, `transport` elsewhere).
_TRANSPORTS = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamable_http": "http",
    "streamableHttp": "http",
    "sse": "sse",
}


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = ""  # the key in mcpServers, filled in by MCPConfig
    transport: Literal["stdio", "http", "sse"] = "stdio"
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=DEFAULT_TIMEOUT, gt=0)
    disabled: bool = False

    @model_validator(mode="before")
    @classmethod
    def _transport(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        given = raw.pop("type", None) or raw.get("transport")
        if given is not None:
            if given not in _TRANSPORTS:
                raise ValueError(f"unknown transport {given!r}: use stdio, http or sse")
            raw["transport"] = _TRANSPORTS[given]
        elif "url" in raw and "command" not in raw:
            raw["transport"] = "http"
        return raw

    @model_validator(mode="after")
    def _complete(self) -> ServerConfig:
        if self.transport == "stdio" and not self.command:
            raise ValueError("a stdio server needs a 'command'")
        if self.transport != "stdio" and not self.url:
            raise ValueError(f"an {self.transport} server needs a 'url'")
        return self

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("the url must start with http:// or https://")
        return value

    @property
    def executable(self) -> str:
        """The command to run; `python`/`python3` is the worker's own interpreter.

        So `{"command": "python", "args": ["-m", "mcp_server_time"]}` finds the packages installed
        next to AgentMesh even when another `python` comes first on PATH.
        """
        assert self.command is not None
        return sys.executable if self.command in ("python", "python3") else self.command

    def describe(self) -> str:
        if self.transport == "stdio":
            return " ".join([self.command or "", *self.args])
        return f"{self.url} ({'Streamable HTTP' if self.transport == 'http' else 'SSE'})"


class MCPConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    by_name: dict[str, ServerConfig] = Field(alias="mcpServers")

    @model_validator(mode="after")
    def _names(self) -> MCPConfig:
        for name, server in self.by_name.items():
            try:
                server.name = validate_id(name, what="MCP server name")
            except InvalidId:
                raise ValueError(
                    f"invalid server name {name!r}: use 1-128 letters, digits, '_' or '-', "
                    "starting with a letter or digit"
                ) from None
        return self

    @property
    def servers(self) -> list[ServerConfig]:
        """The enabled servers, in file order."""
        return [s for s in self.by_name.values() if not s.disabled]

    @classmethod
    def load(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> MCPConfig:
        path = Path(path)
        text = read_config(path)
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        return cls.parse(raw, source=str(path), environ=environ)

    @classmethod
    def parse(
        cls, raw: Any, *, source: str = "<config>", environ: Mapping[str, str] | None = None
    ) -> MCPConfig:
        if not isinstance(raw, dict) or "mcpServers" not in raw:
            raise ConfigError(f'{source}: expected {{"mcpServers": {{...}}}}')
        config = validate_config(cls, raw, source=source, environ=environ)
        if not config.servers:
            raise ConfigError(f"{source}: no enabled server in mcpServers")
        return config
