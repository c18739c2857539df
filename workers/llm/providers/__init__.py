"""Provider adapters: each speaks one upstream wire format, in and out of the OpenAI shape."""

from __future__ import annotations

import httpx

from workers.llm.config import Deployment
from workers.llm.providers.base import Provider, ProviderError


def make_provider(deployment: Deployment, client: httpx.AsyncClient) -> Provider:
    """The adapter for a deployment; all of a worker's adapters share one pooled client."""
    if deployment.provider == "echo":
        from workers.llm.providers.echo import EchoProvider

        return EchoProvider(deployment)
    if deployment.provider == "openai":
        from workers.llm.providers.openai import OpenAIProvider

        return OpenAIProvider(deployment, client)
    if deployment.provider == "anthropic":
        from workers.llm.providers.anthropic import AnthropicProvider

        return AnthropicProvider(deployment, client)
    if deployment.provider == "ollama":
        from workers.llm.providers.ollama import OllamaProvider

        return OllamaProvider(deployment, client)
    raise ValueError(f"unknown provider {deployment.provider!r}")


__all__ = ["Provider", "ProviderError", "make_provider"]
