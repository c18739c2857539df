"""A small real HTTP server that speaks Anthropic's Messages API, scripted per test.

`FakeAnthropic` answers `POST /v1/messages`: JSON, or server-sent events when `stream` is set.
It checks a request as Anthropic does (required fields, no unknown ones, a thinking budget below
max_tokens, tools defined when the messages hold tool_use or tool_result blocks). Unscripted,
it answers with a tool_use for the first tool when tools are offered (and no tool result came
back yet), else with text; with thinking on, a signed thinking block comes first.
`script(...)` queues exact content, `fail(...)` queues HTTP failures and `break_stream(...)` an
`error` event in the next stream. Every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.workers.fake_server import FakeServer

Body = dict[str, Any]

KNOWN_FIELDS = {
    "model",
    "messages",
    "system",
    "max_tokens",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "cache_control",
    "container",
    "context_management",
    "inference_geo",
    "mcp_servers",
    "output_config",
    "speed",
}
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
USAGE = {"input_tokens": 5, "output_tokens": 3}
THOUGHT = {"type": "thinking", "thinking": "Let me think it over.", "signature": "sig-1"}


class FakeAnthropic(FakeServer):
    def __init__(
        self, *, reply: str = "hello from claude", api_key: str | None = None, latency: float = 0.0
    ) -> None:
        self.reply = reply
        self.api_key = api_key
        self.latency = latency
        self.requests: list[Body] = []
        self.failures: list[tuple[int, float | None]] = []
        self.scripts: list[tuple[list[Body], str]] = []
        self.breaks: list[tuple[str, bool]] = []
        super().__init__([Route("/v1/messages", self._messages, methods=["POST"])])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"  # as Anthropic's: the path adds /v1

    @property
    def last(self) -> Body:
        """The body of the last request."""
        return self.requests[-1]["body"]

    def fail(self, status: int, *, retry_after: float | None = None, times: int = 1) -> None:
        self.failures.extend([(status, retry_after)] * times)

    def script(self, *content: Body, stop_reason: str = "end_turn") -> None:
        """The next reply's content blocks, exactly."""
        self.scripts.append((list(content), stop_reason))

    def break_stream(self, error_type: str = "overloaded_error", *, after_text: bool) -> None:
        """The next stream sends an `error` event: right after message_start, or after text."""
        self.breaks.append((error_type, after_text))

    # ------------------------------------------------------------------------------------------
    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"body": body, "headers": dict(request.headers)})
        if self.latency:
            await asyncio.sleep(self.latency)  # the upstream's own latency, part of the script
        if self.failures:
            status, retry_after = self.failures.pop(0)
            headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
            return _error(status, f"scripted {status}", headers)
        if self.api_key is not None and request.headers.get("x-api-key") != self.api_key:
            return _error(401, "invalid x-api-key")
        problem = _invalid(body, request.headers.get("anthropic-version"))
        if problem:
            return _error(400, problem)
        content, stop_reason = self._content(body)
        message = {
            "id": f"msg_{time.time_ns()}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": USAGE,
        }
        if not body.get("stream"):
            return JSONResponse(message)
        broken = self.breaks.pop(0) if self.breaks else None
        return StreamingResponse(_events(message, broken), media_type="text/event-stream")

    def _content(self, body: Body) -> tuple[list[Body], str]:
        if self.scripts:
            return self.scripts.pop(0)
        content: list[Body] = []
        if (body.get("thinking") or {}).get("type") == "enabled":
            content.append(dict(THOUGHT))
        last = body["messages"][-1]["content"]
        results = (
            [b for b in last if b.get("type") == "tool_result"] if isinstance(last, list) else []
        )
        if body.get("tools") and not results:
            tool = body["tools"][0]["name"]
            content.append(
                {"type": "tool_use", "id": "toolu_1", "name": tool, "input": {"city": "Paris"}}
            )
            return content, "tool_use"
        text = f"the tool said: {results[0]['content']}" if results else self.reply
        content.append({"type": "text", "text": text})
        return content, "end_turn"


def _invalid(body: Any, version: str | None) -> str | None:
    """What Anthropic would reject this request for, if anything."""
    if version != "2023-06-01":
        return "anthropic-version: header is required"
    if not isinstance(body, dict):
        return "body must be an object"
    extra = sorted(set(body) - KNOWN_FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    for field in ("model", "messages", "max_tokens"):
        if field not in body:
            return f"{field}: Field required"
    for message in body["messages"]:
        if message.get("role") not in ("user", "assistant"):
            return f"messages: unexpected role {message.get('role')!r}"
        content = message.get("content")
        if isinstance(content, list) and any(
            b.get("type") == "text" and not b.get("text") for b in content
        ):
            return "messages: text content blocks must be non-empty"
    blocks = [
        b.get("type")
        for m in body["messages"]
        if isinstance(m.get("content"), list)
        for b in m["content"]
    ]
    if ("tool_use" in blocks or "tool_result" in blocks) and not body.get("tools"):
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    thinking = body.get("thinking")
    if thinking and thinking.get("budget_tokens", 0) >= body["max_tokens"]:
        return "max_tokens must be greater than thinking.budget_tokens"
    return None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    error = {"type": ERROR_TYPES.get(status, "api_error"), "message": message}
    return JSONResponse({"type": "error", "error": error}, status, headers=headers)


async def _events(message: Body, broken: tuple[str, bool] | None) -> AsyncIterator[bytes]:
    start = {**message, "content": [], "stop_reason": None, "usage": {**USAGE, "output_tokens": 1}}
    yield _event("message_start", {"message": start})
    yield _event("ping", {})
    if broken and not broken[1]:
        yield _event("error", {"error": {"type": broken[0], "message": "scripted"}})
        return
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        empty = {"text": {"text": ""}, "thinking": {"thinking": "", "signature": ""}}.get(
            kind, {"input": {}}
        )
        empty = {**block, **empty}
        yield _event("content_block_start", {"index": index, "content_block": empty})
        for delta in _deltas(block):
            yield _event("content_block_delta", {"index": index, "delta": delta})
            if broken and kind == "text":
                yield _event("error", {"error": {"type": broken[0], "message": "scripted"}})
                return
        yield _event("content_block_stop", {"index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield _event("message_delta", {"delta": delta, "usage": {"output_tokens": 3}})
    yield _event("message_stop", {})


def _deltas(block: Body) -> list[Body]:
    if block["type"] == "text":
        text = block["text"]
        return [{"type": "text_delta", "text": text[i : i + 5]} for i in range(0, len(text), 5)]
    if block["type"] == "thinking":
        words = block["thinking"].split(" ")
        pieces = [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]
        return [{"type": "thinking_delta", "thinking": p} for p in pieces] + [
            {"type": "signature_delta", "signature": block["signature"]}
        ]
    raw = json.dumps(block["input"])
    half = len(raw) // 2
    return [{"type": "input_json_delta", "partial_json": p} for p in (raw[:half], raw[half:])]


def _event(name: str, data: Body) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()
