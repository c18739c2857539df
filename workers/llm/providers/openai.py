"""OpenAI-compatible chat completions (OpenAI, vLLM, LM Studio, DeepSeek, Groq, ...)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from agentmesh.workers.llm.config import Deployment
from agentmesh.workers.llm.providers.base import (
    Body,
    ProviderError,
    check_response,
    drain,
    post_json,
    transport_error,
)


class OpenAIProvider:
    def __init__(self, deployment: Deployment, client: httpx.AsyncClient) -> None:
        self.deployment = deployment
        self.client = client
        self.url = f"{deployment.url}/chat/completions"
        self.headers = {"content-type": "application/json", **deployment.headers}
        if deployment.api_key:
            self.headers["authorization"] = f"Bearer {deployment.api_key}"

    async def complete(self, request: Body) -> Body:
        body = {**request, "model": self.deployment.model, "stream": False}
        body.pop("stream_options", None)
        return await post_json(self.deployment, self.client, self.url, body, self.headers)

    async def stream(self, request: Body) -> AsyncIterator[Body]:
        body = {
            **request,
            "model": self.deployment.model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            async with self.client.stream(
                "POST", self.url, json=body, headers=self.headers, timeout=self.deployment.timeout
            ) as response:
                if response.status_code >= 400:
                    check_response(self.deployment, response, await response.aread())
                lines = response.aiter_lines()
                async for line in lines:
                    if not line.startswith("data:"):
                        continue  # SSE comments, event names and blank separators
                    data = line[5:].strip()
                    if data == "[DONE]":
                        await drain(lines)
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise ProviderError(
                            f"{self.deployment.describe()} streamed invalid JSON", retryable=True
                        ) from None
                    if isinstance(chunk, dict) and "error" in chunk:
                        raise ProviderError(
                            f"{self.deployment.describe()} stream error: {chunk['error']}",
                            retryable=False,
                        )
                    yield chunk
        except httpx.HTTPError as exc:
            raise transport_error(self.deployment, exc) from None
