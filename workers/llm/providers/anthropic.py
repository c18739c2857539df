"""Anthropic Messages (`POST {base_url}/v1/messages`), translated to and from the OpenAI shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx

from agentmesh.schemas.llm.anthropic_blocks import FormatError
from agentmesh.schemas.llm.anthropic_replies import from_anthropic_message
from agentmesh.schemas.llm.anthropic_requests import ANTHROPIC_VERSION, to_anthropic_request
from agentmesh.schemas.llm.anthropic_stream import ChunksFromEvents
from agentmesh.workers.llm.config import Deployment
from agentmesh.workers.llm.providers.base import (
    Body,
    ProviderError,
    check_response,
    drain,
    post_json,
    transport_error,
)

# The `error` event of a stream carries a type, not a status: the status it stands for.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicProvider:
    def __init__(self, deployment: Deployment, client: httpx.AsyncClient) -> None:
        self.deployment = deployment
        self.client = client
        self.url = f"{deployment.url}/v1/messages"
        self.headers = {
            "content-type": "application/json",
            "anthropic-version": ANTHROPIC_VERSION,
            **deployment.headers,  # anthropic-beta, for one
        }
        if deployment.api_key:
            self.headers["x-api-key"] = deployment.api_key

    def _request(self, request: Body) -> Body:
        try:
            return to_anthropic_request(request, self.deployment.model)
        except FormatError as exc:
            raise ProviderError(
                f"{self.deployment.describe()} cannot take this request: {exc}",
                status=400,
                retryable=False,
            ) from None

    async def complete(self, request: Body) -> Body:
        body = self._request(request)
        message = await post_json(self.deployment, self.client, self.url, body, self.headers)
        return from_anthropic_message(message)

    async def stream(self, request: Body) -> AsyncIterator[Body]:
        body = {**self._request(request), "stream": True}
        chunks = ChunksFromEvents(self.deployment.model)
        try:
            async with self.client.stream(
                "POST", self.url, json=body, headers=self.headers, timeout=self.deployment.timeout
            ) as response:
                if response.status_code >= 400:
                    check_response(self.deployment, response, await response.aread())
                lines = response.aiter_lines()
                async for line in lines:
                    if not line.startswith("data:"):
                        continue  # event names repeat the data's `type`; blank separators
                    event = self._event(line[5:].strip())
                    for chunk in chunks.feed(event):
                        yield chunk
                    if chunks.done:
                        await drain(lines)
                        return
        except httpx.HTTPError as exc:
            raise transport_error(self.deployment, exc) from None
        raise ProviderError(
            f"{self.deployment.describe()} ended the stream before message_stop", retryable=True
        )

    def _event(self, data: str) -> Body:
        try:
            event = json.loads(data)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            raise ProviderError(
                f"{self.deployment.describe()} streamed invalid JSON", retryable=True
            )
        if event.get("type") == "error":
            error = event.get("error") or {}
            status = _ERROR_STATUS.get(error.get("type"), 500)
            raise ProviderError(
                f"{self.deployment.describe()} stream error: "
                f"{error.get('type')}: {error.get('message')}",
                status=status,
                retryable=status in (408, 409, 429) or status >= 500,
            )
        return event
