"""Replies both ways: an Anthropic Message → a `chat.completion`, for the `anthropic` provider,
and a `chat.completion` → an Anthropic Message, for the gateway's `POST /v1/messages`; with
the stop reasons and token usage that streams (`anthropic_stream`) translate the same way.
"""

from __future__ import annotations

import time
from typing import Any

from agentmesh.schemas.llm.anthropic_blocks import Body, text_of, tool_call, tool_use

FINISH_REASONS = {  # Anthropic stop_reason → OpenAI finish_reason
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
STOP_REASONS = {  # OpenAI finish_reason → Anthropic stop_reason
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


# -- Anthropic → OpenAI: the provider's reply ---------------------------------------------------


def from_anthropic_message(message: Body) -> Body:
    """The `chat.completion` for an Anthropic Message."""
    text: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[Body] = []
    calls: list[Body] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "thinking":
            reasoning.append(block.get("thinking") or "")
            thinking_blocks.append(block)
        elif kind == "redacted_thinking":
            thinking_blocks.append(block)
        elif kind == "tool_use":
            calls.append(tool_call(block.get("id"), block.get("name"), block.get("input")))
        # Server-tool blocks (server_tool_use, web_search_tool_result, ...) have no OpenAI shape.
    reply: Body = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    if thinking_blocks:
        reply["reasoning_content"] = "".join(reasoning)
        reply["thinking_blocks"] = thinking_blocks
    return {
        "id": message.get("id") or f"chatcmpl-{time.time_ns():x}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "finish_reason": FINISH_REASONS.get(message.get("stop_reason"), "stop"),
            }
        ],
        "usage": usage_to_openai(message.get("usage")),
    }


def usage_to_openai(usage: Any) -> Body:
    """Anthropic counts cached prompt tokens apart; OpenAI's prompt_tokens include them."""
    usage = usage if isinstance(usage, dict) else {}
    cached = usage.get("cache_read_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
    prompt += cached
    completion = usage.get("output_tokens") or 0
    out: Body = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


# -- OpenAI → Anthropic: the gateway's reply -----------------------------------------------------


def to_anthropic_message(completion: Body, model: str) -> Body:
    """The Anthropic Message for a `chat.completion`, named after the alias the caller used."""
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") or {}
    content: list[Body] = thinking_of(message)
    text = text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    content.extend(tool_use(call) for call in message.get("tool_calls") or [])
    out = {
        "id": message_id(completion.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(choices[0].get("finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": usage_to_anthropic(completion.get("usage")),
    }
    if "agentmesh" in completion:
        out["agentmesh"] = completion["agentmesh"]  # which deployment answered
    return out


def thinking_of(message: Body) -> list[Body]:
    """The thinking blocks of an OpenAI message: its thinking_blocks (signed) or, from an
    OpenAI-compatible reasoning model, its reasoning_content (unsigned)."""
    blocks = [b for b in message.get("thinking_blocks") or [] if isinstance(b, dict)]
    if blocks:
        return blocks
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        return [{"type": "thinking", "thinking": reasoning, "signature": ""}]
    return []


def message_id(completion_id: Any) -> str:
    text = str(completion_id or f"{time.time_ns():x}")
    return text if text.startswith("msg_") else f"msg_{text}"


def usage_to_anthropic(usage: Any) -> Body:
    usage = usage if isinstance(usage, dict) else {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    out: Body = {
        "input_tokens": (usage.get("prompt_tokens") or 0) - cached,
        "output_tokens": usage.get("completion_tokens") or 0,
    }
    if cached:
        out["cache_read_input_tokens"] = cached
    return out
