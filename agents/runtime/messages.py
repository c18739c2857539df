"""Between the runtime's chat `Message`s and the mesh's model wire format (OpenAI
chat-completions dicts, whatever the provider behind the alias): `to_openai` for the request,
`ModelTurn` to read a streamed answer into events and one assistant message.
"""

from __future__ import annotations

import json
from typing import Any

from agentmesh.schemas.runtime import EventType, Message, StreamEvent, ToolCall, Usage


def to_openai(system_prompt: str | None, conversation: list[Message]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if system_prompt:
        out.append({"role": "system", "content": system_prompt})
    for m in conversation:
        if m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content or ""})
        elif m.role == "assistant":
            entry: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.thinking_blocks:
                entry["thinking_blocks"] = m.thinking_blocks
            if m.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": _arguments_text(c.arguments)},
                    }
                    for c in m.tool_calls
                ]
            out.append(entry)
        else:
            out.append({"role": m.role, "content": _content(m)})
    return out


def _arguments_text(arguments: dict[str, Any] | str) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _content(m: Message) -> str | list[dict[str, Any]]:
    if not m.images and not m.audio:
        return m.content or ""
    parts: list[dict[str, Any]] = []
    if m.content:
        parts.append({"type": "text", "text": m.content})
    for image in m.images:
        url = (
            image
            if image.startswith(("data:", "http://", "https://"))
            else (f"data:image/png;base64,{image}")
        )
        parts.append({"type": "image_url", "image_url": {"url": url}})
    for audio in m.audio:
        data, fmt = _audio(audio)
        parts.append({"type": "input_audio", "input_audio": {"data": data, "format": fmt}})
    return parts


def _audio(value: str) -> tuple[str, str]:
    """(base64 data, format) of `data:audio/<format>;base64,<data>` or bare base64 (WAV)."""
    if value.startswith("data:audio/") and ";base64," in value:
        head, data = value.split(";base64,", 1)
        fmt = head.removeprefix("data:audio/").replace("mpeg", "mp3").replace("x-wav", "wav")
        return data, fmt
    return value, "wav"


class ModelTurn:
    """One streamed model answer: `feed` each chunk (yields its events), then `finish`."""

    def __init__(self, round_: int, path: list[str], *, accept_tools: bool = True) -> None:
        self.round = round_
        self.path = path
        self.accept_tools = accept_tools
        self.content = ""
        self.thinking = ""
        self.thinking_blocks: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self._calls: dict[int, dict[str, str]] = {}  # index → id, name, arguments so far

    def _event(self, kind: EventType, **fields: Any) -> StreamEvent:
        return StreamEvent(type=kind, round=self.round, path=self.path, **fields)

    def feed(self, chunk: dict[str, Any]) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage:
            events.append(self._event(EventType.USAGE, usage=Usage(**_ints(usage))))
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(thinking, str) and thinking:
                self.thinking += thinking
                events.append(self._event(EventType.THINKING, thinking=thinking))
            blocks = [b for b in delta.get("thinking_blocks") or [] if isinstance(b, dict)]
            if blocks:
                self.thinking_blocks.extend(blocks)
                events.append(self._event(EventType.THINKING, thinking_blocks=blocks))
            text = delta.get("content")
            if isinstance(text, str) and text:
                self.content += text
                events.append(self._event(EventType.CONTENT, content=text))
            for call in delta.get("tool_calls") or []:
                if self.accept_tools and isinstance(call, dict):
                    events.extend(self._tool_delta(call))
        return events

    def _tool_delta(self, call: dict[str, Any]) -> list[StreamEvent]:
        index = call.get("index", len(self._calls))
        fn = call.get("function") or {}
        known = self._calls.get(index)
        events = []
        if known is None:
            known = self._calls[index] = {
                "id": call.get("id") or f"call_{self.round}_{index}",
                "name": fn.get("name") or "",
                "arguments": "",
            }
            events.append(
                self._event(
                    EventType.TOOL_CALL_START, tool_call_id=known["id"], tool_name=known["name"]
                )
            )
        elif fn.get("name") and not known["name"]:
            known["name"] = fn["name"]
        fragment = fn.get("arguments")
        if isinstance(fragment, str) and fragment:
            known["arguments"] += fragment
            events.append(
                self._event(EventType.TOOL_CALL_DELTA, tool_call_id=known["id"], arguments=fragment)
            )
        return events

    def finish(self) -> list[StreamEvent]:
        calls = self.tool_calls()
        if self._empty(calls):  # an empty answer is still an answer: "" (assembled alike)
            return [self._event(EventType.CONTENT, content="")]
        return [self._event(EventType.TOOL_CALL, tool_call=call) for call in calls]

    def _empty(self, calls: list[ToolCall]) -> bool:
        return not (self.content or self.thinking or self.thinking_blocks or calls)

    def tool_calls(self) -> list[ToolCall]:
        out = []
        for index in sorted(self._calls):
            call = self._calls[index]
            text = call["arguments"].strip() or "{}"
            try:
                arguments: dict[str, Any] | str = json.loads(text)
            except ValueError:
                arguments = text
            if not isinstance(arguments, dict):
                arguments = text
            out.append(ToolCall(id=call["id"], name=call["name"], arguments=arguments))
        return out

    def message(self) -> Message:
        calls = self.tool_calls()
        return Message(
            role="assistant",
            content="" if self._empty(calls) else (self.content or None),
            thinking=self.thinking or None,
            thinking_blocks=self.thinking_blocks,
            tool_calls=calls,
        )


def _ints(usage: dict[str, Any]) -> dict[str, int]:
    return {
        k: v
        for k, v in usage.items()
        if k in ("prompt_tokens", "completion_tokens", "total_tokens") and isinstance(v, int)
    }
