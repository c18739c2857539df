"""Scripted model upstreams: real HTTP servers whose answers a test writes as a function of the
request, `brain(body) -> Reply`. `ScriptedOpenAI` speaks OpenAI chat completions (JSON and SSE,
`reasoning_content` for thinking, streamed `tool_calls`); `ScriptedAnthropic` and
`ScriptedOllama` (in `scripted_providers`) speak Anthropic Messages and Ollama's `/api/chat`.

The brain gets the request body in the upstream's own format. What a brain usually needs reads
the same from all three with `last_role` ("user", "assistant" or "tool": the role the *mesh*
gave the last message, so an Anthropic user turn of tool_result blocks is "tool"), `last_text`,
`tool_results` (the texts of the tool results at the end, in order) and `tool_names` (the tools
offered). `last_message` is the raw last message.

`plan(*replies)` answers with the replies in order (the last one repeats), the common case of
a multi-round script; every request body is recorded in `.requests`. Each server checks a
request as its provider would (tool results answering the calls before them, content types)
and answers what that provider would answer to a bad one (HTTP 400): a test then fails with
the upstream's reason rather than passing on a request the real upstream rejects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.workers.fake_server import FakeServer

Body = dict[str, Any]


@dataclass
class Reply:
    content: str = ""
    thinking: str = ""
    tool_calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering (a slow model, for aborts)


Brain = Callable[[Body], Reply]


def plan(*replies: Reply) -> Brain:
    it = iter(replies)
    last = [replies[-1]]

    def brain(body: Body) -> Reply:
        last[0] = next(it, last[0])
        return last[0]

    return brain


# What a brain reads, the same in the three formats --------------------------------------------
def last_message(body: Body) -> Body:
    return body["messages"][-1]


def _results(message: Body) -> list[Body]:
    """The tool_result blocks of an Anthropic user turn."""
    content = message.get("content")
    if message.get("role") != "user" or not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]


def last_role(body: Body) -> str:
    last = last_message(body)
    return "tool" if _results(last) else last["role"]


def text_of(content: Any) -> str:
    """A string, or the text of OpenAI text parts / Anthropic text blocks."""
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if p.get("type") == "text")
    return content or ""


def last_text(body: Body) -> str:
    """The text of the last message (of a tool result: its result)."""
    results = tool_results(body)
    return "".join(results) if results else text_of(last_message(body).get("content"))


def tool_results(body: Body) -> list[str]:
    """The tool results the request ends with, in order (none if it ends otherwise)."""
    messages = body["messages"]
    blocks = _results(messages[-1]) if messages else []
    if blocks:
        return [text_of(b.get("content")) for b in blocks]
    out: list[str] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        out.insert(0, text_of(message.get("content")))
    return out


def tool_names(body: Body) -> list[str]:
    return [(t.get("function") or t).get("name") for t in body.get("tools") or []]


def model_model(name: str, upstream: ScriptedServer) -> Body:
    """An LLM worker's model entry for alias `name` on this upstream."""
    return {"name": name, "deployments": [upstream.deployment(name)]}


# The servers ----------------------------------------------------------------------------------
class ScriptedServer(FakeServer):
    """What the three share: the brain, the recorded requests, `started`, the scripted delay."""

    provider: ClassVar[str]

    def __init__(self, brain: Brain, routes: list[Route]) -> None:
        self.brain = brain
        self.requests: list[Body] = []
        self.started = asyncio.Event()  # set at each request (a test waits for a call to begin)
        self._ids = itertools.count(1)
        self._stopping = asyncio.Event()
        super().__init__(routes)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def deployment(self, model: str) -> Body:
        """An LLM worker's deployment entry for this upstream."""
        return {
            "provider": self.provider,
            "base_url": self.base_url,
            "model": model,
            "api_key": "sk",
        }

    async def stop(self) -> None:
        self._stopping.set()
        await super().stop()

    async def answer(self, body: Body) -> Reply:
        """Record the request and ask the brain (then wait its delay, cut short by `stop`)."""
        self.requests.append(body)
        self.started.set()
        reply = self.brain(body)
        if reply.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), reply.delay)
        return reply

    def next_id(self) -> int:
        return next(self._ids)


class ScriptedOpenAI(ScriptedServer):
    provider = "openai"

    def __init__(self, brain: Brain) -> None:
        super().__init__(brain, [Route("/v1/chat/completions", self._chat, methods=["POST"])])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        problem = openai_problem(body)
        if problem:
            self.requests.append(body)
            error = {"message": problem, "type": "invalid_request_error", "code": None}
            return JSONResponse({"error": error}, 400)
        reply = await self.answer(body)
        calls = [
            {
                "id": f"call_{self.next_id()}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for name, args in reply.tool_calls
        ]
        finish = "tool_calls" if calls else "stop"
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        base = {"id": f"chatcmpl-{time.time_ns()}", "created": int(time.time()), "model": "m"}
        if not body.get("stream"):
            message: Body = {"role": "assistant", "content": reply.content or None}
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
            deltas: list[Body] = [{"role": "assistant", "content": ""}]
            deltas += [{"reasoning_content": p} for p in pieces(reply.thinking)]
            deltas += [{"content": p} for p in pieces(reply.content)]
            for index, call in enumerate(calls):
                args = call["function"]["arguments"]
                head = {"index": index, "id": call["id"], "type": "function"}
                deltas.append(
                    {"tool_calls": [{**head, "function": {"name": call["function"]["name"]}}]}
                )
                deltas += [
                    {"tool_calls": [{"index": index, "function": {"arguments": p}}]}
                    for p in pieces(args, 7)
                ]
            for delta in deltas:
                c = {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                yield f"data: {json.dumps(c)}\n\n".encode()
            end = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
            yield f"data: {json.dumps(end)}\n\n".encode()
            yield f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")


def openai_problem(body: Body) -> str | None:
    """What OpenAI would reject in these messages: tool messages that answer no call of the
    assistant message before them, and calls left unanswered."""
    pending: set[str] = set()
    for i, message in enumerate(body.get("messages") or []):
        role = message.get("role")
        if role == "tool":
            if message.get("tool_call_id") not in pending:
                return (
                    f"Invalid parameter: messages[{i}]: messages with role 'tool' must be a "
                    "response to a preceeding message with 'tool_calls'."
                )
            pending.discard(message["tool_call_id"])
            continue
        if pending:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id'. Unanswered: {sorted(pending)}"
            )
        if role == "assistant":
            pending = {c.get("id") for c in message.get("tool_calls") or []}
    return None


def pieces(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]
