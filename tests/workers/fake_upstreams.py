"""Small real HTTP servers that speak a provider's wire format, scripted per test.

`FakeOpenAI` answers `POST /v1/chat/completions` like OpenAI: JSON, or SSE when `stream` is
set. Queue failures with `fail(status, retry_after=...)`; every request body is recorded.
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


class FakeOpenAI(FakeServer):
    def __init__(
        self, *, reply: str = "hello from upstream", latency: float = 0.0, chunk_delay: float = 0.0
    ) -> None:
        self.reply = reply
        self.latency = latency
        self.chunk_delay = chunk_delay  # seconds between streamed chunks: a slow generation
        self.requests: list[dict[str, Any]] = []
        self.peers: list[int | None] = []  # each request's client port: one per connection
        self.failures: list[tuple[int, float | None]] = []
        super().__init__([Route("/v1/chat/completions", self._chat, methods=["POST"])])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, status: int, *, retry_after: float | None = None, times: int = 1) -> None:
        self.failures.extend([(status, retry_after)] * times)

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append({"body": body, "headers": dict(request.headers)})
        self.peers.append(request.client.port if request.client else None)
        if self.latency:
            await asyncio.sleep(self.latency)  # the upstream's own latency, part of the script
        if self.failures:
            status, retry_after = self.failures.pop(0)
            headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
            return JSONResponse(
                {"error": {"message": f"scripted {status}", "type": "server_error"}},
                status,
                headers=headers,
            )
        base = {
            "id": f"chatcmpl-{time.time_ns()}",
            "created": int(time.time()),
            "model": body["model"],
        }
        if body.get("tools"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": body["tools"][0]["function"]["name"],
                            "arguments": json.dumps({"city": "Paris"}),
                        },
                    }
                ],
            }
            finish = "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": self.reply}, "stop"
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        if not body.get("stream"):
            return JSONResponse(
                {
                    **base,
                    "object": "chat.completion",
                    "usage": usage,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                }
            )

        async def events() -> AsyncIterator[bytes]:
            chunk = {**base, "object": "chat.completion.chunk"}
            pieces = [self.reply[i : i + 5] for i in range(0, len(self.reply), 5)]
            if message.get("tool_calls"):
                deltas = [
                    {"role": "assistant", "tool_calls": [{"index": 0, **message["tool_calls"][0]}]}
                ]
            else:
                deltas = [{"role": "assistant", "content": ""}] + [{"content": p} for p in pieces]
            for i, delta in enumerate(deltas):
                if i and self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                c = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                yield f"data: {json.dumps(c)}\n\n".encode()
            end = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
            yield f"data: {json.dumps(end)}\n\n".encode()
            if (body.get("stream_options") or {}).get("include_usage"):
                yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
