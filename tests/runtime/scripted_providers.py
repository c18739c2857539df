"""`ScriptedAnthropic` and `ScriptedOllama`: `ScriptedOpenAI`'s brains (`scripted_llm`) served
in Anthropic's and Ollama's own wire formats, to put each provider translation of the LLM
worker between the runtime and a scripted model.

`ScriptedAnthropic` answers `POST /v1/messages` with a Message, or with its server-sent events
as Anthropic sends them (message_start, a content_block_start/delta.../stop per block, a ping,
message_delta with the stop reason and usage, message_stop): thinking as a signed `thinking`
block (thinking_delta pieces, then one signature_delta), text as text_delta pieces, each tool
call a `tool_use` block whose input arrives as input_json_delta fragments (the first empty).
It checks what Anthropic checks: every tool_use answered by a tool_result first in the next
user turn and no tool_result without its tool_use, tools defined whenever the messages hold
tool_use or tool_result blocks, content block types and non-empty text,
base64 images with an image media type, thinking blocks sent back with the signature given.

`ScriptedOllama` answers `POST /api/chat` with one JSON object, or NDJSON lines when `stream`
is true or missing (thinking pieces, content pieces, each tool call whole in a line, then a
`done` line with `prompt_eval_count`/`eval_count`). It checks what Ollama's Go decoder would
refuse: content that is not a string, tool-call arguments that are not objects, images that
are not bare base64, unknown roles.

Both think when the reply says so, whatever the request asked (as ScriptedOpenAI does): a
brain that cares reads the request's `thinking` (Anthropic) or `think` (Ollama) itself.
Token usage is 10 in and 5 out per call, as with ScriptedOpenAI.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.runtime.scripted_llm import Body, Brain, Reply, ScriptedServer, pieces
from tests.workers.fake_anthropic import KNOWN_FIELDS

IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
USER_BLOCKS = {"text", "image", "document", "tool_result"}
ASSISTANT_BLOCKS = {"text", "thinking", "redacted_thinking", "tool_use"}


# Anthropic ------------------------------------------------------------------------------------
class ScriptedAnthropic(ScriptedServer):
    provider = "anthropic"

    def __init__(self, brain: Brain) -> None:
        self.signatures: dict[str, str] = {}  # signature given → the thinking it signs
        super().__init__(brain, [Route("/v1/messages", self._messages, methods=["POST"])])

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        problem = anthropic_problem(body, request.headers, self.signatures)
        if problem:
            self.requests.append(body)
            error = {"type": "invalid_request_error", "message": problem}
            return JSONResponse({"type": "error", "error": error}, 400)
        reply = await self.answer(body)
        message = {
            "id": f"msg_{time.time_ns()}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": self._content(reply),
            "stop_reason": "tool_use" if reply.tool_calls else "end_turn",
            "stop_sequence": None,
            "usage": _usage(5),
        }
        if not body.get("stream"):
            return JSONResponse(message)
        return StreamingResponse(_sse(message), media_type="text/event-stream")

    def _content(self, reply: Reply) -> list[Body]:
        content: list[Body] = []
        if reply.thinking:
            digest = hashlib.sha256(reply.thinking.encode()).digest()
            signature = base64.b64encode(b"sig" + digest).decode()
            self.signatures[signature] = reply.thinking
            content.append({"type": "thinking", "thinking": reply.thinking, "signature": signature})
        if reply.content:
            content.append({"type": "text", "text": reply.content})
        for name, args in reply.tool_calls:
            call_id = f"toolu_{self.next_id()}"
            content.append({"type": "tool_use", "id": call_id, "name": name, "input": args})
        return content


def _usage(output_tokens: int) -> Body:
    return {
        "input_tokens": 10,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


async def _sse(message: Body) -> AsyncIterator[bytes]:
    start = {**message, "content": [], "stop_reason": None, "usage": _usage(1)}
    yield _event("message_start", {"message": start})
    for index, block in enumerate(message["content"]):
        yield _event("content_block_start", {"index": index, "content_block": _opening(block)})
        if index == 0:
            yield _event("ping", {})
        for delta in _deltas(block):
            yield _event("content_block_delta", {"index": index, "delta": delta})
        yield _event("content_block_stop", {"index": index})
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    yield _event("message_delta", {"delta": delta, "usage": _usage(5)})
    yield _event("message_stop", {})


def _opening(block: Body) -> Body:
    """A block as content_block_start shows it: before any delta."""
    if block["type"] == "text":
        return {"type": "text", "text": ""}
    if block["type"] == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    return {**block, "input": {}}


def _deltas(block: Body) -> Iterator[Body]:
    if block["type"] == "text":
        for piece in pieces(block["text"]):
            yield {"type": "text_delta", "text": piece}
    elif block["type"] == "thinking":
        for piece in pieces(block["thinking"]):
            yield {"type": "thinking_delta", "thinking": piece}
        yield {"type": "signature_delta", "signature": block["signature"]}
    else:
        for piece in ["", *pieces(json.dumps(block["input"]), 7)]:
            yield {"type": "input_json_delta", "partial_json": piece}


def _event(name: str, data: Body) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def anthropic_problem(
    body: Any, headers: Mapping[str, str], signatures: Mapping[str, str]
) -> str | None:
    """What Anthropic would answer 400 (or 401) for, in Anthropic's words where it has some."""
    # The worker sends version 2023-06-01 and x-api-key; the SDK a later one and a bearer key.
    key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
    if not headers.get("anthropic-version") or not key:
        return "anthropic-version and x-api-key headers are required"
    if not isinstance(body, dict):
        return "body must be an object"
    extra = sorted(set(body) - KNOWN_FIELDS)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            return f"{name}: Field required"
    thinking = body.get("thinking") or {}
    on = thinking.get("type") == "enabled"
    if on and not 1024 <= thinking.get("budget_tokens", 0) < body["max_tokens"]:
        return "thinking.budget_tokens must be ≥ 1024 and less than max_tokens"
    for tool in body.get("tools") or []:
        if tool.get("type") in (None, "custom") and not (
            tool.get("name") and isinstance(tool.get("input_schema"), dict)
        ):
            return "tools: a custom tool needs a name and an input_schema"
    messages = body["messages"]
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        problem = _message_problem(i, message, signatures)
        if problem:
            return f"messages.{i}: {problem}"
    kinds = {b.get("type") for m in messages for b in _blocks(m)}
    if kinds & {"tool_use", "tool_result"} and not body.get("tools"):
        return "Requests which include `tool_use` or `tool_result` blocks must define tools."
    for i in range(len(messages)):
        problem = _pairing_problem(messages, i)
        if problem:
            return f"messages.{i}: {problem}"
    last_assistant = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None
    )
    if on and last_assistant is not None and _uses(messages[last_assistant]):
        first = _blocks(messages[last_assistant])[0]["type"]
        if first not in ("thinking", "redacted_thinking"):
            return (
                f"messages.{last_assistant}.content.0.type: Expected `thinking` or "
                f"`redacted_thinking`, but found `{first}`. When `thinking` is enabled, a final "
                "`assistant` message must start with a thinking block"
            )
    return None


def _blocks(message: Body) -> list[Body]:
    content = message.get("content")
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _uses(message: Body) -> list[str]:
    return [b["id"] for b in _blocks(message) if b["type"] == "tool_use"]


def _message_problem(i: int, message: Any, signatures: Mapping[str, str]) -> str | None:
    role = message.get("role") if isinstance(message, dict) else None
    if role not in ("user", "assistant"):
        return f"unexpected role {role!r}: only 'user' and 'assistant' are accepted"
    content = message.get("content")
    if not isinstance(content, str | list) or not content:
        return "all messages must have non-empty content"
    allowed = USER_BLOCKS if role == "user" else ASSISTANT_BLOCKS
    for j, block in enumerate(_blocks(message)):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind not in allowed:
            return f"content.{j}: a {role} message cannot hold a {kind!r} block"
        problem = _block_problem(block, signatures)
        if problem:
            return f"content.{j}: {problem}"
    return None


def _block_problem(block: Body, signatures: Mapping[str, str]) -> str | None:
    kind = block["type"]
    if kind == "text" and not block.get("text"):
        return "text content blocks must be non-empty"
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "url":
            return None if source.get("url") else "image.source.url: Field required"
        if source.get("type") != "base64" or source.get("media_type") not in IMAGE_TYPES:
            return f"image.source: media_type must be one of {sorted(IMAGE_TYPES)}"
        if not _is_base64(source.get("data")):
            return "image.source.data: the image is not valid base64"
    if kind == "thinking" and signatures.get(block.get("signature", "")) != block.get("thinking"):
        return "Invalid `signature` in `thinking` block"
    if kind == "tool_use" and not (
        block.get("id") and block.get("name") and isinstance(block.get("input"), dict)
    ):
        return "tool_use: id, name and an object input are required"
    if kind == "tool_result":
        if not block.get("tool_use_id"):
            return "tool_result.tool_use_id: Field required"
        result = block.get("content", "")
        if not isinstance(result, str) and any(
            b.get("type") not in ("text", "image") for b in result
        ):
            return "tool_result.content: only text and image blocks"
    return None


def _pairing_problem(messages: list[Body], i: int) -> str | None:
    """Tool results answer exactly the tool_use blocks just before them, and come first."""
    message = messages[i]
    if message["role"] == "assistant" and _uses(message):
        after = messages[i + 1] if i + 1 < len(messages) else {"role": "assistant", "content": []}
        answered = [b.get("tool_use_id") for b in _blocks(after) if b["type"] == "tool_result"]
        missing = [u for u in _uses(message) if after["role"] != "user" or u not in answered]
        if missing:
            return (
                f"`tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(missing)}. Each `tool_use` block must have a corresponding "
                "`tool_result` block in the next message."
            )
    if message["role"] == "user":
        blocks = _blocks(message)
        kinds = [b["type"] for b in blocks]
        if "tool_result" in kinds[kinds.count("tool_result") :]:
            return "tool_result blocks must come before any other content"
        before = _uses(messages[i - 1]) if i and messages[i - 1]["role"] == "assistant" else []
        for j, block in enumerate(blocks):
            if block["type"] == "tool_result" and block.get("tool_use_id") not in before:
                return (
                    f"content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{block.get('tool_use_id')}. Each `tool_result` block must have a "
                    "corresponding `tool_use` block in the previous message."
                )
    return None


def _is_base64(data: Any) -> bool:
    try:
        return bool(data) and bool(base64.b64decode(data, validate=True))
    except (binascii.Error, TypeError, ValueError):
        return False


# Ollama ---------------------------------------------------------------------------------------
CREATED_AT = "2025-01-01T00:00:00.000000Z"
OLLAMA_ROLES = {"system", "user", "assistant", "tool"}


class ScriptedOllama(ScriptedServer):
    provider = "ollama"

    def __init__(self, brain: Brain) -> None:
        super().__init__(brain, [Route("/api/chat", self._chat, methods=["POST"])])

    def deployment(self, model: str) -> Body:
        return {"provider": "ollama", "base_url": self.base_url, "model": model}  # no keys

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        problem = ollama_problem(body)
        if problem:
            self.requests.append(body)
            return JSONResponse({"error": problem}, 400)
        reply = await self.answer(body)
        calls = [
            {"function": {"index": i, "name": name, "arguments": args}}
            for i, (name, args) in enumerate(reply.tool_calls)
        ]
        final = {
            "model": body["model"],
            "created_at": CREATED_AT,
            "done": True,
            "done_reason": "stop",  # after tool calls too
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": 10,
            "prompt_eval_duration": 100,
            "eval_count": 5,
            "eval_duration": 500,
        }
        if not body.get("stream", True):
            message: Body = {"role": "assistant", "content": reply.content}
            if reply.thinking:
                message["thinking"] = reply.thinking
            if calls:
                message["tool_calls"] = calls
            return JSONResponse({**final, "message": message})

        async def lines() -> AsyncIterator[bytes]:
            parts: list[Body] = [{"thinking": p} for p in pieces(reply.thinking)]
            parts += [{"content": p} for p in pieces(reply.content)]
            parts += [{"tool_calls": [call]} for call in calls]
            for part in parts:
                message = {"role": "assistant", "content": "", **part}
                line = {"model": body["model"], "created_at": CREATED_AT, "message": message}
                yield json.dumps({**line, "done": False}).encode() + b"\n"
            done = {**final, "message": {"role": "assistant", "content": ""}}
            yield json.dumps(done).encode() + b"\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")


def ollama_problem(body: Any) -> str | None:
    """What Ollama would answer 400 for (its JSON decoder's complaints, in short)."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "model is required"
    for i, message in enumerate(body.get("messages") or []):
        if message.get("role") not in OLLAMA_ROLES:
            return f"messages[{i}]: invalid role {message.get('role')!r}"
        if not isinstance(message.get("content", ""), str):
            return f"json: cannot unmarshal {type(message['content']).__name__} into string"
        for image in message.get("images") or []:
            if not _is_base64(image):
                return f"messages[{i}]: illegal base64 data in images"
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            if not function.get("name") or not isinstance(function.get("arguments"), dict):
                return f"messages[{i}]: tool_calls need a name and object arguments"
    for tool in body.get("tools") or []:
        if tool.get("type") != "function" or not (tool.get("function") or {}).get("name"):
            return "tools: each tool needs type function and a function name"
    return None
