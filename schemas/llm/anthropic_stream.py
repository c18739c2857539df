"""Anthropic's streaming events ⇄ OpenAI `chat.completion.chunk`s, one response at a time.

`ChunksFromEvents` serves the `anthropic` provider (events in, chunks out); `EventsFromChunks`
serves the gateway's `POST /v1/messages` (chunks in, events out).
"""

from __future__ import annotations

import time
from typing import Any

from agentmesh.schemas.llm.anthropic_blocks import Body
from agentmesh.schemas.llm.anthropic_replies import (
    FINISH_REASONS,
    STOP_REASONS,
    message_id,
    usage_to_anthropic,
    usage_to_openai,
)

Event = tuple[str, Body]  # (event name, data)


class ChunksFromEvents:
    """Feed Anthropic events (`message_start` ... `message_stop`); get OpenAI chunks.

    The role chunk waits for the first content, so an `error` event before any token (an
    overload, say) can still fail over to another deployment.
    """

    def __init__(self, model: str) -> None:
        self.base: Body = {
            "id": f"chatcmpl-{time.time_ns():x}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        self.usage: Body = {}
        self.finish_reason = "stop"
        self.done = False
        self._started = False
        self._tools: dict[int, int] = {}  # content block index → tool_calls index
        self._thinking: dict[int, Body] = {}  # content block index → the block so far

    def feed(self, event: Body) -> list[Body]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.base["id"] = message.get("id") or self.base["id"]
            self.base["model"] = message.get("model") or self.base["model"]
            self.usage.update(message.get("usage") or {})
            return []
        if kind == "content_block_start":
            return self._block_start(event.get("index", 0), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._delta(event.get("index", 0), event.get("delta") or {})
        if kind == "message_delta":
            reason = (event.get("delta") or {}).get("stop_reason")
            self.finish_reason = FINISH_REASONS.get(reason, self.finish_reason)
            # Counts on message_delta are totals: they replace those of message_start.
            self.usage.update(
                {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            )
            return []
        if kind == "message_stop":
            self.done = True
            return [
                *self._chunk({}, finish_reason=self.finish_reason),
                {**self.base, "choices": [], "usage": usage_to_openai(self.usage)},
            ]
        return []  # ping, content_block_stop, and event types added later

    def _block_start(self, index: int, block: Body) -> list[Body]:
        kind = block.get("type")
        if kind == "tool_use":
            self._tools[index] = position = len(self._tools)
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if kind == "thinking":
            self._thinking[index] = {"type": "thinking", "thinking": "", "signature": ""}
        elif kind == "redacted_thinking":
            return self._chunk({"thinking_blocks": [block]})
        elif kind == "text" and block.get("text"):
            return self._chunk({"content": block["text"]})
        return []

    def _delta(self, index: int, delta: Body) -> list[Body]:
        kind = delta.get("type")
        if kind == "text_delta":
            return self._chunk({"content": delta.get("text") or ""})
        if kind == "input_json_delta" and index in self._tools:
            fragment = {
                "index": self._tools[index],
                "function": {"arguments": delta.get("partial_json") or ""},
            }
            return self._chunk({"tool_calls": [fragment]})
        if kind == "thinking_delta":
            text = delta.get("thinking") or ""
            if index in self._thinking:
                self._thinking[index]["thinking"] += text
            return self._chunk({"reasoning_content": text})
        if kind == "signature_delta" and index in self._thinking:
            # The signed block, whole: what a caller sends back to continue with thinking on.
            block = {**self._thinking[index], "signature": delta.get("signature") or ""}
            return self._chunk({"thinking_blocks": [block]})
        return []

    def _chunk(self, delta: Body, *, finish_reason: str | None = None) -> list[Body]:
        chunks = []
        if not self._started:
            self._started = True
            role = {"role": "assistant", "content": ""}
            chunks.append({**self.base, "choices": [_choice(role, None)]})
        chunks.append({**self.base, "choices": [_choice(delta, finish_reason)]})
        return chunks


def _choice(delta: Body, finish_reason: str | None) -> Body:
    return {"index": 0, "delta": delta, "finish_reason": finish_reason}


class EventsFromChunks:
    """Feed OpenAI chunks; get Anthropic events, with content blocks opened and closed in
    order (thinking, text and each tool call a block of its own). `finish()` ends the message.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.stop_reason = "end_turn"
        self.usage: Body = {}
        self._started = False
        self._index = -1  # of the content block opened last
        self._open: str | None = None  # "text", "thinking" or "tool:<n>"
        self._tools: dict[int, int] = {}  # tool_calls index → content block index

    def feed(self, chunk: Body) -> list[Event]:
        events = self._start(chunk)
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue  # n > 1 has no Anthropic equivalent: the first choice is the message
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events += self._open_block("thinking", {"thinking": "", "signature": ""})
                events.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
            for block in delta.get("thinking_blocks") or []:
                events += self._thinking_block(block)
            if isinstance(delta.get("content"), str) and delta["content"]:
                events += self._open_block("text", {"text": ""})
                events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
            for call in delta.get("tool_calls") or []:
                events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
        return events

    def finish(self) -> list[Event]:
        events = self._start({})
        events += self._close()
        usage = usage_to_anthropic(self.usage)
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _start(self, chunk: Body) -> list[Event]:
        if self._started:
            return []
        self._started = True
        message = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known at the end: message_delta
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _thinking_block(self, block: Any) -> list[Event]:
        if not isinstance(block, dict):
            return []
        if block.get("type") == "redacted_thinking":
            fields = {"data": block.get("data")}
            return self._open_block("redacted", fields, "redacted_thinking") + self._close()
        signature = block.get("signature")
        if self._open != "thinking" or not signature:
            return []
        return [self._delta({"type": "signature_delta", "signature": signature})]

    def _tool_call(self, call: Body) -> list[Event]:
        position = call.get("index", 0)
        function = call.get("function") or {}
        events: list[Event] = []
        if position not in self._tools:
            block = {"id": call.get("id"), "name": function.get("name"), "input": {}}
            events += self._open_block(f"tool:{position}", block, "tool_use")
            self._tools[position] = self._index
        arguments = function.get("arguments")
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            events.append(self._delta(delta, self._tools[position]))
        return events

    def _open_block(self, key: str, fields: Body, kind: str | None = None) -> list[Event]:
        if self._open == key:
            return []
        events = self._close()
        self._index += 1
        self._open = key
        block = {"type": kind or key, **fields}
        start = {"type": "content_block_start", "index": self._index, "content_block": block}
        return [*events, ("content_block_start", start)]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]

    def _delta(self, delta: Body, index: int | None = None) -> Event:
        at = self._index if index is None else index
        return ("content_block_delta", {"type": "content_block_delta", "index": at, "delta": delta})
