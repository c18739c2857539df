"""A scripted model upstream: a real HTTP server speaking OpenAI chat completions (JSON and
SSE, with `reasoning_content` for thinking and streamed `tool_calls`), whose answers a test
writes as a function of the request: `ScriptedOpenAI(brain)` where `brain(body) -> Reply`.

`plan(*replies)` answers with the replies in order (the last one repeats), the common case of
a multi-round script; every request body is recorded in `.requests`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.workers.fake_server import FakeServer


@dataclass
class Reply:
    content: str = ""
    thinking: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering (a slow model, for aborts)


Brain = Callable[[dict[str, Any]], Reply]


def plan(*replies: Reply) -> Brain:
    it = iter(replies)
    last = [replies[-1]]

    def brain(body: dict[str, Any]) -> Reply:
        last[0] = next(it, last[0])
        return last[0]

    return brain


def last_message(body: dict[str, Any]) -> dict[str, Any]:
    return body["messages"][-1]


def tool_names(body: dict[str, Any]) -> list[str]:
    return [t["function"]["name"] for t in body.get("tools") or []]


def model_model(name: str, upstream: ScriptedOpenAI) -> dict[str, Any]:
    """An LLM worker's model entry for alias `name` on this upstream."""
    return {
        "name": name,
        "deployments": [
            {"provider": "openai", "base_url": upstream.base_url, "model": name, "api_key": "sk"}
        ],
    }


class ScriptedOpenAI(FakeServer):
    def __init__(self, brain: Brain) -> None:
        self.brain = brain
        self.requests: list[dict[str, Any]] = []
        self.started = asyncio.Event()  # set at each request (a test waits for a call to begin)
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()
        super().__init__([Route("/v1/chat/completions", self._chat, methods=["POST"])])

    async def stop(self) -> None:
        self._stopping.set()
        await super().stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.started.set()
        reply = self.brain(body)
        if reply.delay:  # the scripted model's own slowness (cut short by `stop`)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), reply.delay)
        calls = [
            {
                "id": f"call_{next(self._ids)}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args in reply.tool_calls
        ]
        finish = "tool_calls" if calls else "stop"
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        base = {"id": f"chatcmpl-{time.time_ns()}", "created": int(time.time()), "model": "m"}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply.content or None}
            if reply.thinking:
                message["reasoning_content"] = reply.thinking
            if calls:
                message["tool_calls"] = calls
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
            deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
            deltas += [{"reasoning_content": p} for p in _pieces(reply.thinking)]
            deltas += [{"content": p} for p in _pieces(reply.content)]
            for index, call in enumerate(calls):
                args = call["function"]["arguments"]
                head = {"index": index, "id": call["id"], "type": "function"}
                deltas.append(
                    {"tool_calls": [{**head, "function": {"name": call["function"]["name"]}}]}
                )
                deltas += [
                    {"tool_calls": [{"index": index, "function": {"arguments": p}}]}
                    for p in _pieces(args, 7)
                ]
            for delta in deltas:
                c = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                yield f"data: {json.dumps(c)}\n\n".encode()
            end = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
            yield f"data: {json.dumps(end)}\n\n".encode()
            yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def _pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
