"""The mesh file (`mesh.yaml`, YAML or JSON): one document, a section per part of the mesh.

    gateway:     the gateway's options          (agentmesh.gateway.config.GatewaySection)
    models:      today's models.yaml list       (agentmesh.workers.llm.config.LLMConfig)
    mcpServers:  today's mcp.json map           (agentmesh.workers.mcp.config.MCPConfig)
    agents:      [module:attr, ...]             (what `agentmesh up` runs)
    runtime:     saved agents, templates, tool limits (agentmesh.agents.runtime.config)
    a2a:         outside A2A agents served as mesh agents (agentmesh.workers.a2a.config)
    channels:    Feishu, Lark and Slack apps the gateway takes chats from
                                                (agentmesh.gateway.channels.config)
    servers:     nats/redis ports, data dir     (what `agentmesh up` starts)

agentgateway's simplified format (`llm:`, `mcp:`) is translated on reading (agentgateway.py).
The whole-file model (`MeshConfig`) lives here, at the CLI; a process validates only its own
section with that section's model, so a worker never needs the gateway's variables to be set.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agentmesh.agentgateway import is_agentgateway, translate, unset_variables
from agentmesh.agents.runtime.config import RuntimeSection
from agentmesh.gateway.channels.config import ChannelConfig, ChannelsSection
from agentmesh.gateway.config import GatewaySection
from agentmesh.workers.a2a.config import A2ASection
from agentmesh.workers.config import (
    ConfigError,
    expand_env,
    read_config,
    validate_config,
    yaml_problem,
)
from agentmesh.workers.llm.config import LLMConfig, ModelConfig
from agentmesh.workers.mcp.config import MCPConfig, ServerConfig

M = TypeVar("M", bound=BaseModel)

SECTIONS = (
    "gateway",
    "models",
    "mcpServers",
    "agents",
    "runtime",
    "a2a",
    "channels",
    "servers",
)
_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class ServersSection(BaseModel):
    """The local servers `agentmesh up` starts (other commands ignore this section)."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Interface the local servers listen on.")
    nats_port: int = Field(4222, ge=1, le=65535, description="Port of the local nats-server.")
    redis_port: int = Field(6379, ge=1, le=65535, description="Port of the local redis-server.")
    data_dir: Path = Field(Path(".agentmesh"), description="Where server data and logs go.")


class MeshConfig(BaseModel):
    """The whole mesh file: what `agentmesh config check` validates and the JSON Schema shows."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, title="AgentMesh mesh file (mesh.yaml)"
    )

    schema_: str | None = Field(None, alias="$schema", description="For editors; ignored.")
    gateway: GatewaySection | None = Field(None, description="The gateway (HTTP, WebSocket).")
    models: list[ModelConfig] | None = Field(
        None, description="Model aliases and their deployments (the models.yaml list)."
    )
    mcp_servers: dict[str, ServerConfig] | None = Field(
        None, alias="mcpServers", description="MCP servers (the mcp.json mcpServers map)."
    )
    agents: list[str] = Field(
        default_factory=list, description="Agents `agentmesh up` runs, as module:attr."
    )
    runtime: RuntimeSection | None = Field(
        None, description="The agent runtime: saved agents, templates, built-in tool limits."
    )
    a2a: A2ASection | None = Field(
        None, description="Outside A2A agents served as mesh agents (`agentmesh worker a2a`)."
    )
    channels: list[ChannelConfig] | None = Field(
        None, description="Chat apps (Feishu, Lark, Slack) whose messages reach mesh agents."
    )
    servers: ServersSection = Field(default_factory=ServersSection)

    @field_validator("agents")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        for target in value:
            if not _TARGET.fullmatch(target):
                raise ValueError(f"{target!r} is not module:attr (e.g. mypackage.agents:helper)")
        return value


@dataclass
class MeshDocument:
    """A mesh file as read: its sections (agentgateway keys translated, `${VAR}` unexpanded)."""

    raw: dict[str, Any]
    source: str
    warnings: list[str] = field(default_factory=list)

    def has(self, section: str) -> bool:
        return self.raw.get(section) is not None

    def llm(self, environ: Mapping[str, str] | None = None) -> LLMConfig | None:
        if not self.has("models"):
            return None
        return LLMConfig.parse({"models": self.raw["models"]}, source=self.source, environ=environ)

    def mcp(self, environ: Mapping[str, str] | None = None) -> MCPConfig | None:
        if not self.has("mcpServers"):
            return None
        return MCPConfig.parse(
            {"mcpServers": self.raw["mcpServers"]}, source=self.source, environ=environ
        )

    def gateway(self, environ: Mapping[str, str] | None = None) -> GatewaySection:
        return self._section(GatewaySection, "gateway", environ)

    def runtime(self, environ: Mapping[str, str] | None = None) -> RuntimeSection | None:
        if not self.has("runtime"):
            return None
        return self._section(RuntimeSection, "runtime", environ)

    def a2a(self, environ: Mapping[str, str] | None = None) -> A2ASection | None:
        if not self.has("a2a"):
            return None
        return self._section(A2ASection, "a2a", environ)

    def channels(self, environ: Mapping[str, str] | None = None) -> tuple[ChannelConfig, ...]:
        """The chat apps (the gateway's): names unique per kind, secrets expanded."""
        if not self.has("channels"):
            return ()
        raw = {"channels": self.raw["channels"]}
        env = os.environ if environ is None else environ
        try:
            section = ChannelsSection.model_validate(expand_env(raw, env, "channels"))
        except KeyError as exc:
            raise ConfigError(f"{self.source}: {exc.args[0]}") from None
        except ValidationError as exc:
            raise ConfigError(f"{self.source}: {_reasons(exc, ())}") from None
        return tuple(section.channels)

    def servers(self, environ: Mapping[str, str] | None = None) -> ServersSection:
        return self._section(ServersSection, "servers", environ)

    def agents(self) -> list[str]:
        return list(self.validate_part("agents").agents)

    def validate(self, environ: Mapping[str, str] | None = None) -> MeshConfig:
        """Every section, as `agentmesh config check` and `config apply` do."""
        config = validate_config(MeshConfig, self.raw, source=self.source, environ=environ)
        # The rules of the section models beyond their fields (unique names, enabled servers).
        self.llm(environ)
        self.mcp(environ)
        self.channels(environ)
        return config

    def validate_part(self, section: str) -> MeshConfig:
        return validate_config(
            MeshConfig, {section: self.raw.get(section) or []}, source=self.source, environ={}
        )

    def _section(self, model: type[M], key: str, environ: Mapping[str, str] | None) -> M:
        env = os.environ if environ is None else environ
        raw = self.raw.get(key) or {}
        try:
            return model.model_validate(expand_env(raw, env, key))
        except KeyError as exc:
            raise ConfigError(f"{self.source}: {exc.args[0]}") from None
        except ValidationError as exc:
            raise ConfigError(f"{self.source}: {_reasons(exc, (key,))}") from None


def _reasons(exc: ValidationError, where: tuple[str, ...]) -> str:
    return "; ".join(
        f"{'.'.join(str(x) for x in (*where, *error['loc']))}: "
        + error["msg"].removeprefix("Value error, ")
        for error in exc.errors()
    )


def parse_document(text: str, *, source: str) -> MeshDocument:
    """Read a mesh file's text (YAML, or JSON, which is YAML too).

    Raises:
        ConfigError: not a YAML mapping, or a top-level key that is not a section.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML or JSON: {yaml_problem(exc)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)})")
    warnings: list[str] = []
    if is_agentgateway(raw):
        raw, unsupported = translate(raw)
        if unsupported:
            warnings.append(
                f"{source}: agentgateway settings AgentMesh does not support, ignored: "
                + ", ".join(unsupported)
            )
        unset = unset_variables(raw)
        if unset:
            warnings.append(f"{source}: not set, so empty: {', '.join(unset)}")
    unknown = [str(k) for k in raw if k not in SECTIONS and k != "$schema"]
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level key {', '.join(map(repr, unknown))}: "
            f"the sections are {', '.join(SECTIONS)}"
        )
    return MeshDocument(raw=raw, source=source, warnings=warnings)


def load_document(path: str | Path) -> tuple[MeshDocument, str]:
    """The document of a mesh file and its text. Raises ConfigError naming the file."""
    text = read_config(Path(path))
    return parse_document(text, source=str(path)), text


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the mesh file, generated from the pydantic models."""
    schema = MeshConfig.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
