"""The models `agentmesh up` serves with no models file: whatever the environment gives.

Always the built-in `echo` model; OpenAI's and Anthropic's models when their keys are set; and
every model of a local Ollama server, if one answers quickly.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import httpx

from agentmesh.workers.llm.config import DEFAULT_BASE_URLS, LLMConfig

logger = logging.getLogger(__name__)

OLLAMA_URL = DEFAULT_BASE_URLS["ollama"]
OPENAI_MODELS = ("gpt-4.1-mini", "gpt-4.1")
ANTHROPIC_MODELS = ("claude-haiku-4-5", "claude-sonnet-4-5")
ECHO_LABEL = "echo (built-in, repeats your message; no key needed)"


def config_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    ollama_url: str | None = OLLAMA_URL,
    probe_timeout: float = 0.5,
) -> LLMConfig:
    """The models to serve: echo, plus what OPENAI_API_KEY, ANTHROPIC_API_KEY and a running
    Ollama server (at `ollama_url`; `None` skips it) make available."""
    env = os.environ if environ is None else environ
    models: list[dict[str, Any]] = [_model("echo", "echo", "echo")]
    if env.get("OPENAI_API_KEY"):
        for name in OPENAI_MODELS:
            models.append(
                _model(
                    name,
                    "openai",
                    name,
                    api_key=env["OPENAI_API_KEY"],
                    base_url=env.get("OPENAI_BASE_URL") or None,
                )
            )
    if env.get("ANTHROPIC_API_KEY"):
        for name in ANTHROPIC_MODELS:
            models.append(
                _model(
                    name,
                    "anthropic",
                    name,
                    api_key=env["ANTHROPIC_API_KEY"],
                    base_url=env.get("ANTHROPIC_BASE_URL") or None,
                )
            )
    if ollama_url:
        taken = {m["name"] for m in models}
        for name in ollama_models(ollama_url, timeout=probe_timeout):
            if name not in taken:
                models.append(_model(name, "ollama", name, base_url=ollama_url))
    # Built from values, not from a file: no ${VAR} expansion.
    return LLMConfig.model_validate({"models": models})


def ollama_models(url: str, *, timeout: float = 0.5) -> list[str]:
    """The models a local Ollama server has pulled; empty when none answers within `timeout`."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/api/tags", timeout=timeout)
        response.raise_for_status()
        found = response.json().get("models") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return []  # no Ollama here (the common case): nothing to say
    names = [m.get("name") for m in found if isinstance(m, dict)]
    return sorted({n for n in names if isinstance(n, str) and n})


def describe(config: LLMConfig) -> list[str]:
    """One line per provider for a banner: `echo` clearly labelled, the others grouped."""
    lines: list[str] = []
    groups: dict[str, list[str]] = {}
    for model in config.models:
        provider = model.deployments[0].provider
        if provider == "echo" and model.name == "echo":
            lines.append(ECHO_LABEL)
        else:
            groups.setdefault(provider, []).append(model.name)
    for provider, names in groups.items():
        lines.append(f"{', '.join(names)} ({provider})")
    return lines


def _model(name: str, provider: str, model: str, **deployment: Any) -> dict[str, Any]:
    fields = {k: v for k, v in deployment.items() if v is not None}
    return {"name": name, "deployments": [{"provider": provider, "model": model, **fields}]}
