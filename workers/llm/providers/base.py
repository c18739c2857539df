"""The provider contract. Requests and responses are OpenAI chat-completions shaped dicts.

A request is the caller's body (unknown fields pass through) with `model` set to the
deployment's model. `complete` returns a `chat.completion` object; `stream` yields
`chat.completion.chunk` objects, the last one carrying `usage`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from agentmesh.workers.llm.config import Deployment

Body = dict[str, Any]


class ProviderError(Exception):
    """An upstream call failed. `retryable` failures move on to the next deployment."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class Provider(Protocol):
    deployment: Deployment

    async def complete(self, request: Body) -> Body: ...

    def stream(self, request: Body) -> AsyncIterator[Body]: ...


async def post_json(
    deployment: Deployment,
    client: httpx.AsyncClient,
    url: str,
    body: Body,
    headers: dict[str, str],
) -> Body:
    """POST a JSON request and return the JSON object answered; every failure a ProviderError."""
    try:
        response = await client.post(url, json=body, headers=headers, timeout=deployment.timeout)
    except httpx.HTTPError as exc:
        raise transport_error(deployment, exc) from None
    check_response(deployment, response, response.content)
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ProviderError(f"{deployment.describe()} answered with invalid JSON", retryable=True)
    return answer


def check_response(deployment: Deployment, response: httpx.Response, body: bytes) -> None:
    """Raise `ProviderError` for a failed upstream answer: 429, 5xx and 408 are retryable."""
    if response.status_code < 400:
        return
    retry_after = _retry_after(response.headers.get("retry-after"))
    retryable = response.status_code in (408, 409, 429) or response.status_code >= 500
    text = body.decode("utf-8", "replace")[:500]
    raise ProviderError(
        f"{deployment.describe()} answered {response.status_code}: {text}",
        status=response.status_code,
        retryable=retryable,
        retry_after=retry_after,
    )


def transport_error(deployment: Deployment, exc: Exception) -> ProviderError:
    """Connection refused, reset, timed out: always retryable elsewhere."""
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return ProviderError(
        f"{deployment.describe()} {kind}: {type(exc).__name__} {exc}".strip(), retryable=True
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare for APIs; fall back to the default cooldown


async def drain(lines: AsyncIterator[str]) -> None:
    """Read a streamed response to its end after its last event: a response closed before its
    end closes its connection too, and the next call would open a new one (a TCP connect, and
    TLS, per streamed call)."""
    async for _ in lines:
        pass


def completion_id() -> str:
    return f"chatcmpl-{time.time_ns():x}"
