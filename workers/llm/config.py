"""`models.yaml`: which aliases a worker serves and the deployments behind each, in order.

models:
  - name: gpt-4.1-mini            # the alias callers use (dots allowed)
    deployments:
      - provider: openai           # openai (OpenAI-compatible) | anthropic | ollama | echo
        base_url: https://api.openai.com/v1
        model: gpt-4.1-mini
        api_key: ${OPENAI_API_KEY} # environment variables are expanded (${VAR:-default} too)
        priority: 0                # lower first; failover goes up the list
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentmesh.workers.config import ConfigError, read_config, validate_config, yaml_problem

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "ollama": "http://127.0.0.1:11434",
    "echo": "",
}


class Deployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["openai", "anthropic", "ollama", "echo"]
    model: str = Field(min_length=1)
    base_url: str | None = None
    api_key: str | None = None
    priority: int = 0
    timeout: float = Field(60.0, gt=0, description="Seconds for one upstream call.")
    headers: dict[str, str] = Field(default_factory=dict)

    @property
    def url(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS[self.provider]).rstrip("/")

    @property
    def key(self) -> str:
        """Stable across workers: the id under which its cooldown is shared in Redis."""
        raw = f"{self.provider}|{self.url}|{self.model}".encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.provider}:{self.model}"


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    deployments: list[Deployment] = Field(min_length=1)

    @field_validator("deployments")
    @classmethod
    def _by_priority(cls, value: list[Deployment]) -> list[Deployment]:
        return sorted(value, key=lambda d: d.priority)  # stable: file order breaks ties


class LLMConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _unique(cls, value: list[ModelConfig]) -> list[ModelConfig]:
        names = [m.name for m in value]
        if len(set(names)) != len(names):
            raise ValueError("model names must be unique")
        return value

    @classmethod
    def load(cls, path: str | Path, environ: Mapping[str, str] | None = None) -> LLMConfig:
        path = Path(path)
        text = read_config(path)
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {yaml_problem(exc)}") from None
        return cls.parse(raw, source=str(path), environ=environ)

    @classmethod
    def parse(
        cls, raw: Any, *, source: str = "<config>", environ: Mapping[str, str] | None = None
    ) -> LLMConfig:
        return validate_config(cls, raw, source=source, environ=environ)

    def model(self, name: str) -> ModelConfig | None:
        return next((m for m in self.models if m.name == name), None)
