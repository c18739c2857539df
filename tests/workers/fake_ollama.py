"""A real HTTP server that speaks Ollama's native API, scripted per test.

`POST /api/chat` answers JSON, or NDJSON lines when `stream` is set (the default, as in
Ollama); with `tools` in the request it calls the first tool; with `think` it thinks first.
`GET /api/tags` lists `models`. Every chat body is recorded in `requests`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.workers.fake_server import FakeServer

CREATED_AT = "2025-01-01T00:00:00.000000Z"


class FakeOllama(FakeServer):
    def __init__(
        self,
        *,
        reply: str = "hello from ollama",
        thinking: str = "let me think",
        models: tuple[str, ...] = ("llama3.2:latest",),
    ) -> None:
        self.reply = reply
        self.thinking = thinking
        self.models = models
        self.requests: list[dict[str, Any]] = []
        self.failures: list[int] = []
        self.break_stream: str | None = None  # an error line after the first piece
        super().__init__(
            [
                Route("/api/chat", self._chat, methods=["POST"]),
                Route("/api/tags", self._tags, methods=["GET"]),
            ]
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, status: int, *, times: int = 1) -> None:
        self.failures.extend([status] * times)

    async def _tags(self, request: Request) -> Response:
        return JSONResponse(
            {"models": [{"name": m, "model": m, "modified_at": CREATED_AT} for m in self.models]}
        )

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if self.failures:
            status = self.failures.pop(0)
            return JSONResponse({"error": f"scripted {status}"}, status)
        if body["model"] not in self.models:
            return JSONResponse({"error": f"model '{body['model']}' not found"}, 404)
        message: dict[str, Any] = {"role": "assistant", "content": self.reply}
        if body.get("think"):
            message["thinking"] = self.thinking
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            message["content"] = ""
            message["tool_calls"] = [{"function": {"name": name, "arguments": {"city": "Paris"}}}]
        counts = {"prompt_eval_count": 7, "eval_count": 4}
        final = {
            "model": body["model"],
            "created_at": CREATED_AT,
            "done": True,
            "done_reason": "stop",
            "total_duration": 1000,
            **counts,
        }
        if not body.get("stream", True):
            return JSONResponse({**final, "message": message})

        async def lines() -> AsyncIterator[bytes]:
            def line(msg: dict[str, Any]) -> bytes:
                return (
                    json.dumps(
                        {
                            "model": body["model"],
                            "created_at": CREATED_AT,
                            "message": {"role": "assistant", "content": "", **msg},
                            "done": False,
                        }
                    ).encode()
                    + b"\n"
                )

            if "thinking" in message:
                yield line({"thinking": message["thinking"]})
            if "tool_calls" in message:
                yield line({"tool_calls": message["tool_calls"]})
            for i, start in enumerate(range(0, len(message["content"]), 5)):
                yield line({"content": message["content"][start : start + 5]})
                if i == 0 and self.break_stream is not None:
                    yield json.dumps({"error": self.break_stream}).encode() + b"\n"
                    return
            done = {**final, "message": {"role": "assistant", "content": ""}}
            yield json.dumps(done).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")
