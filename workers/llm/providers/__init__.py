"""Provider adapters: each speaks one upstream wire format, in and out of the OpenAI shape."""

from __future__ import annotations

import httpx

from agentmesh.workers.llm.config import Deployment
from agentmesh.workers.llm.providers.base import Provider, ProviderError


def make_provider(deployment: Deployment, client: httpx.AsyncClient) -> Provider:
    """The adapter for a deployment; all of a worker's adapters share one pooled client."""
    if deployment.provider == "echo":
        from agentmesh.workers.llm.providers.echo import EchoProvider

        return EchoProvider(deployment)
    if deployment.provider == "openai":
        from agentmesh.workers.llm.providers.openai import OpenAIProvider

        return OpenAIProvider(deployment, client)
    if deployment.provider == "anthropic":
        from agentmesh.workers.llm.providers.anthropic import AnthropicProvider

        return AnthropicProvider(deployment, client)
    if deployment.provider == "ollama":
        from agentmesh.workers.llm.providers.ollama import OllamaProvider

        return OllamaProvider(deployment, client)
    raise ValueError(f"unknown provider {deployment.provider!r}")


__all__ = ["Provider", "ProviderError", "make_provider"]
