"""Ollama's native `POST /api/chat`, in and out of the OpenAI chat-completions shape.

Images travel as base64 on the message (`images`), tool-call arguments as objects rather than
JSON strings, thinking as `message.thinking` (our `reasoning_content`), and a stream as NDJSON
lines ending with one `"done": true` line that carries the token counts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agentmesh.workers.llm.config import Deployment
from agentmesh.workers.llm.providers.base import (
    Body,
    ProviderError,
    check_response,
    completion_id,
    drain,
    post_json,
    transport_error,
)

# OpenAI request fields that become Ollama `options`, under Ollama's names.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "max_tokens": "num_predict",
    "max_completion_tokens": "num_predict",
}
_LEVELS = ("low", "medium", "high")


class OllamaProvider:
    def __init__(self, deployment: Deployment, client: httpx.AsyncClient) -> None:
        self.deployment = deployment
        self.client = client
        self.url = f"{deployment.url}/api/chat"
        self.headers = {"content-type": "application/json", **deployment.headers}
        if deployment.api_key:  # Ollama itself has no keys; a proxy in front of it may
            self.headers["authorization"] = f"Bearer {deployment.api_key}"

    async def complete(self, request: Body) -> Body:
        body = to_ollama(request, self.deployment, stream=False)
        data = await post_json(self.deployment, self.client, self.url, body, self.headers)
        if not isinstance(data.get("message"), dict):
            raise ProviderError(
                f"{self.deployment.describe()} answered with invalid JSON", retryable=True
            )
        return from_ollama(data, self.deployment)

    async def stream(self, request: Body) -> AsyncIterator[Body]:
        body = to_ollama(request, self.deployment, stream=True)
        chunks = _Chunks(self.deployment.model)
        try:
            async with self.client.stream(
                "POST", self.url, json=body, headers=self.headers, timeout=self.deployment.timeout
            ) as response:
                if response.status_code >= 400:
                    check_response(self.deployment, response, await response.aread())
                lines = response.aiter_lines()
                async for line in lines:
                    if not line.strip():
                        continue
                    try:
                        data = json.loads(line)
                    except ValueError:
                        data = None
                    if not isinstance(data, dict):
                        raise ProviderError(
                            f"{self.deployment.describe()} streamed invalid JSON", retryable=True
                        )
                    if "error" in data:
                        raise ProviderError(
                            f"{self.deployment.describe()} stream error: {data['error']}",
                            retryable=False,
                        )
                    for chunk in chunks.feed(data):
                        yield chunk
                    if data.get("done"):
                        await drain(lines)
                        return
        except httpx.HTTPError as exc:
            raise transport_error(self.deployment, exc) from None
        raise ProviderError(
            f"{self.deployment.describe()} ended the stream before it was done", retryable=True
        )


# Request --------------------------------------------------------------------------------------
def to_ollama(request: Body, deployment: Deployment, *, stream: bool) -> Body:
    """An OpenAI chat-completions request as an Ollama `/api/chat` body."""
    body: Body = {
        "model": deployment.model,
        "messages": _messages(request.get("messages") or [], deployment),
        "stream": stream,
    }
    tools = [t for t in request.get("tools") or [] if isinstance(t, dict) and "function" in t]
    if tools and request.get("tool_choice") != "none":
        body["tools"] = [{"type": "function", "function": t["function"]} for t in tools]
    options = {
        name: request[field] for field, name in _OPTIONS.items() if request.get(field) is not None
    }
    stop = request.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if options:
        body["options"] = options
    think = _think(request, deployment)
    if think is not None:
        body["think"] = think
    fmt = request.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            body["format"] = "json"
        elif fmt.get("type") == "json_schema":
            body["format"] = (fmt.get("json_schema") or {}).get("schema") or "json"
    if "keep_alive" in request:  # an Ollama extra some callers send
        body["keep_alive"] = request["keep_alive"]
    return body


def _think(request: Body, deployment: Deployment) -> bool | str | None:
    if "think" in request:  # Ollama's own field, sent as is
        return request["think"]
    effort = request.get("reasoning_effort")
    if not isinstance(effort, str):
        return None
    if effort == "none":
        return False
    # gpt-oss takes a level; other thinking models take a switch (a level reads as the default).
    if deployment.model.startswith("gpt-oss"):
        return effort if effort in _LEVELS else "low"
    return True


def _messages(messages: list[Any], deployment: Deployment) -> list[Body]:
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results after it
    out: list[Body] = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        text, images = _content(message.get("content"), deployment)
        converted: Body = {"role": "system" if role == "developer" else role, "content": text}
        if images:
            converted["images"] = images
        if role == "assistant":
            thinking = message.get("reasoning_content")
            if isinstance(thinking, str) and thinking:
                converted["thinking"] = thinking
            calls = []
            for call in message.get("tool_calls") or []:
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                if call.get("id"):
                    names[call["id"]] = function.get("name", "")
                calls.append(
                    {
                        "function": {
                            "name": function.get("name", ""),
                            "arguments": _arguments(function.get("arguments")),
                        }
                    }
                )
            if calls:
                converted["tool_calls"] = calls
        elif role == "tool":
            name = message.get("name") or names.get(message.get("tool_call_id", ""))
            if name:
                converted["tool_name"] = name
        out.append(converted)
    return out


def _content(content: Any, deployment: Deployment) -> tuple[str, list[str]]:
    """The text of a message's content and its images as bare base64 strings."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            url = part.get("image_url")
            url = url.get("url", "") if isinstance(url, dict) else str(url or "")
            header, sep, data = url.partition(",")
            if not (sep and header.startswith("data:") and header.endswith(";base64")):
                raise ProviderError(
                    f"{deployment.describe()} takes images as base64 data URLs "
                    "(data:image/png;base64,...), not links",
                    status=400,
                    retryable=False,
                )
            images.append(data)
    return "".join(texts), images


def _arguments(value: Any) -> Any:
    """OpenAI sends arguments as a JSON string; Ollama wants the object."""
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except ValueError:
            return value  # not JSON: let Ollama judge it
    return value if value is not None else {}


# Response -------------------------------------------------------------------------------------
def from_ollama(data: Body, deployment: Deployment) -> Body:
    """An Ollama `/api/chat` answer (not streamed) as a `chat.completion`."""
    message = data.get("message") or {}
    calls = _tool_calls(message.get("tool_calls"))
    content = message.get("content") or ""
    reply: Body = {"role": "assistant", "content": content or (None if calls else "")}
    if message.get("thinking"):
        reply["reasoning_content"] = message["thinking"]
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": data.get("model") or deployment.model,
        "choices": [{"index": 0, "message": reply, "finish_reason": _finish(data, bool(calls))}],
        "usage": _usage(data),
    }


def _tool_calls(calls: Any, start: int = 0) -> list[Body]:
    out = []
    calls = [c for c in calls or [] if isinstance(c, dict)]
    for i, call in enumerate(calls, start):
        function = call.get("function") or {}
        arguments = function.get("arguments")
        out.append(
            {
                "index": i,
                "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {
                    "name": function.get("name", ""),
                    "arguments": arguments
                    if isinstance(arguments, str)
                    else json.dumps(arguments if arguments is not None else {}),
                },
            }
        )
    return out


def _finish(data: Body, called: bool) -> str:
    if called:
        return "tool_calls"
    return "length" if data.get("done_reason") == "length" else "stop"


def _usage(data: Body) -> dict[str, int]:
    prompt = int(data.get("prompt_eval_count") or 0)
    completion = int(data.get("eval_count") or 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class _Chunks:
    """Turns Ollama's NDJSON stream lines into `chat.completion.chunk` objects."""

    def __init__(self, model: str) -> None:
        self.base = {
            "id": completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.started = False
        self.calls = 0  # tool calls so far: each gets the next index

    def _chunk(self, delta: Body, finish: str | None = None) -> Body:
        return {
            **self.base,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def feed(self, data: Body) -> list[Body]:
        if data.get("model"):
            self.base["model"] = data["model"]
        message = data.get("message") or {}
        delta: Body = {}
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        if message.get("content"):
            delta["content"] = message["content"]
        calls = _tool_calls(message.get("tool_calls"), self.calls)
        if calls:
            delta["tool_calls"] = calls
            self.calls += len(calls)
        out = []
        if delta or (not self.started and not data.get("done")):
            if not self.started:
                delta = {"role": "assistant", **delta}
                delta.setdefault("content", "")
                self.started = True
            out.append(self._chunk(delta))
        if data.get("done"):
            out.append(self._chunk({}, _finish(data, self.calls > 0)))
            out.append({**self.base, "choices": [], "usage": _usage(data)})
        return out
