"""Anthropic Messages ⇄ OpenAI chat completions, requests and replies, both ways.

The `anthropic` provider translates the canonical (OpenAI-shaped) request out and Anthropic's
reply back; the gateway's `POST /v1/messages` does the reverse. Streams are in
`workers.llm.anthropic_stream`. What maps to what is in docs/DECISIONS.md ("Anthropic mapping").
"""

from __future__ import annotations

import json
import time
from typing import Any

Body = dict[str, Any]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI callers rarely send it
# OpenAI's reasoning_effort → an Anthropic thinking budget (1,024 tokens is the minimum).
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}

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
# Anthropic rejects unknown fields, so of the caller's other fields only these go upstream:
# shared ones, and Anthropic's own whose names OpenAI does not use (from /v1/messages callers).
_PASSED_UPSTREAM = """temperature top_p top_k cache_control container context_management
    inference_geo mcp_servers output_config speed""".split()
# Fields of an Anthropic request the gateway translates; the rest pass through unchanged.
_TRANSLATED = frozenset(
    """model messages system max_tokens stop_sequences tools tool_choice
    metadata stream""".split()
)


class FormatError(ValueError):
    """A request that has no equivalent in the other format (the caller's mistake: HTTP 400)."""


# -- OpenAI → Anthropic: the provider's request -----------------------------------------------


def to_anthropic_request(request: Body, model: str) -> Body:
    """The Anthropic Messages request for a canonical request (without `stream`)."""
    system, messages = _messages_to_anthropic(request.get("messages") or [])
    out: Body = {"model": model, "messages": messages}
    if system:
        out["system"] = system
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    thinking, out["max_tokens"] = _thinking(request, limit)
    if thinking is not None:
        out["thinking"] = thinking
    out.update({k: request[k] for k in _PASSED_UPSTREAM if request.get(k) is not None})
    stop = request.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if request.get("tools"):
        out["tools"] = [_tool_to_anthropic(t) for t in request["tools"]]
        choice = _tool_choice_to_anthropic(
            request.get("tool_choice"), request.get("parallel_tool_calls")
        )
        if choice is not None:
            out["tool_choice"] = choice
    if request.get("service_tier") in ("auto", "standard_only"):  # OpenAI's other tiers differ
        out["service_tier"] = request["service_tier"]
    user = request.get("user") or (request.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


def _thinking(request: Body, limit: int | None) -> tuple[Body | None, int]:
    """Anthropic's `thinking` (a pass-through one wins over reasoning_effort) and max_tokens,
    which must exceed the thinking budget."""
    thinking = request.get("thinking")
    if not isinstance(thinking, dict):
        effort = request.get("reasoning_effort")
        if effort in (None, "none"):
            return None, limit or DEFAULT_MAX_TOKENS
        if effort not in THINKING_BUDGETS:
            raise FormatError(f"unknown reasoning_effort {effort!r}")
        budget = THINKING_BUDGETS[effort]
        if limit is not None and limit <= budget:
            budget = max(1024, limit - 1)
        thinking = {"type": "enabled", "budget_tokens": budget}
    budget = thinking.get("budget_tokens")
    if limit is None:
        limit = DEFAULT_MAX_TOKENS + (budget if isinstance(budget, int) else 0)
    return thinking, limit


def _messages_to_anthropic(messages: list[Any]) -> tuple[str | None, list[Body]]:
    system: list[str] = []
    out: list[Body] = []
    for message in messages:
        if not isinstance(message, dict):
            raise FormatError("every message must be an object")
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(text_of(message.get("content")))
            continue
        if role == "user":
            blocks = _parts_to_blocks(message.get("content"))
        elif role == "assistant":
            blocks = _assistant_blocks(message)
        elif role == "tool":
            role, blocks = "user", [_tool_result(message)]
        else:
            raise FormatError(f"a message with role {role!r} has no Anthropic equivalent")
        if not blocks:
            continue
        # Anthropic wants one user turn holding every tool result: consecutive turns merge.
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for message in out:
        blocks = message["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            message["content"] = blocks[0]["text"]
    return "\n\n".join(s for s in system if s) or None, out


def _parts_to_blocks(content: Any) -> list[Body]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise FormatError("message content must be a string or a list of parts")
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind) or ""
            if text:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            url = part.get("image_url")
            blocks.append(_image_block(url.get("url") if isinstance(url, dict) else url))
        elif kind == "file":
            blocks.append(_document_block(part.get("file") or {}))
        else:
            raise FormatError(f"a content part of type {kind!r} has no Anthropic equivalent")
    return blocks


def _image_block(url: Any) -> Body:
    if not isinstance(url, str) or not url:
        raise FormatError("an image_url part needs a url")
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = _data_url(url)
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document_block(file: Body) -> Body:
    data_url = file.get("file_data")
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise FormatError(
            "a file part needs file_data as a base64 data URL (file ids are not sent)"
        )
    media_type, data = _data_url(data_url)
    source = {"type": "base64", "media_type": media_type, "data": data}
    block: Body = {"type": "document", "source": source}
    if file.get("filename"):
        block["title"] = file["filename"]
    return block


def _data_url(url: str) -> tuple[str, str]:
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        raise FormatError("only base64 data URLs can be sent inline")
    return header[5:-7] or "application/octet-stream", data


def _assistant_blocks(message: Body) -> list[Body]:
    # Anthropic only takes thinking back with its signature: reasoning_content alone is dropped.
    blocks = [
        b
        for b in message.get("thinking_blocks") or []
        if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
    ]
    blocks.extend(_parts_to_blocks(message.get("content")))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": tool_input(function.get("arguments")),
            }
        )
    return blocks


def _tool_result(message: Body) -> Body:
    if not message.get("tool_call_id"):
        raise FormatError("a tool message needs its tool_call_id")
    content = message.get("content")
    block: Body = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    block["content"] = content if isinstance(content, str) else _parts_to_blocks(content)
    return block


def tool_input(arguments: Any) -> Body:
    """A tool call's JSON-string arguments as an object (Anthropic's `input`)."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments:
        return {}
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        value = arguments
    return value if isinstance(value, dict) else {"arguments": value}


def _tool_to_anthropic(tool: Any) -> Body:
    if not isinstance(tool, dict):
        raise FormatError("every tool must be an object")
    if tool.get("type") != "function":
        return tool  # an Anthropic-native tool (web_search, bash, ...), as it is
    function = tool.get("function") or {}
    if not function.get("name"):
        raise FormatError("a function tool needs a name")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out: Body = {"name": function["name"], "input_schema": schema}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice_to_anthropic(choice: Any, parallel: Any) -> Body | None:
    if choice is None:
        out = None
    elif isinstance(choice, str) and choice in ("auto", "required", "none"):
        out = {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}
    elif isinstance(choice, dict) and (choice.get("function") or {}).get("name"):
        out = {"type": "tool", "name": choice["function"]["name"]}
    else:
        raise FormatError(f"tool_choice {choice!r} has no Anthropic equivalent")
    if parallel is False and (out is None or out["type"] != "none"):
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


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


def tool_call(call_id: Any, name: Any, arguments: Any) -> Body:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


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


# -- Anthropic → OpenAI: the gateway's request ---------------------------------------------------


def from_anthropic_request(body: Body) -> Body:
    """The canonical request for an Anthropic Messages request; unknown fields pass through."""
    out: Body = {k: v for k, v in body.items() if k not in _TRANSLATED}
    messages: list[Body] = []
    system = text_of(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or []:
        messages.extend(_message_to_openai(message))
    out.update(model=body.get("model"), messages=messages)
    if body.get("stream"):
        out["stream"] = True
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    if body.get("tools"):
        out["tools"] = [_tool_to_openai(t) for t in body["tools"]]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in ("auto", "any", "none"):
            out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
        else:
            raise FormatError(f"unknown tool_choice type {kind!r}")
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    user = (body.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        out["user"] = user
    return out


def _message_to_openai(message: Any) -> list[Body]:
    if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
        raise FormatError("every message needs the role 'user' or 'assistant'")
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise FormatError("message content must be a string or a list of content blocks")
    if role == "assistant":
        return [_assistant_to_openai(content)]
    out: list[Body] = []
    parts: list[Body] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            # OpenAI has no is_error: the result's text says what went wrong.
            result = block.get("content")
            if isinstance(result, list):
                result = _blocks_to_parts(result, collapse=True)
            out.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": result or ""}
            )
        else:
            parts.append(block)
    if parts:
        out.append({"role": "user", "content": _blocks_to_parts(parts, collapse=True)})
    return out


def _blocks_to_parts(blocks: list[Any], *, collapse: bool) -> str | list[Body]:
    parts: list[Body] = []
    for block in blocks:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text") or ""})
        elif kind in ("image", "document"):
            parts.append(_source_to_part(kind, block))
        else:
            raise FormatError(f"a content block of type {kind!r} cannot be sent here")
    if collapse and all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _source_to_part(kind: str, block: Body) -> Body:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url" and kind == "image":
        url = source.get("url")
    else:
        raise FormatError(f"a {kind} with a source of type {source.get('type')!r} is not supported")
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": url}}
    file: Body = {"file_data": url}
    if block.get("title"):
        file["filename"] = block["title"]
    return {"type": "file", "file": file}


def _assistant_to_openai(content: list[Any]) -> Body:
    text: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[Body] = []
    calls: list[Body] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(tool_call(block.get("id"), block.get("name"), block.get("input")))
        elif kind in ("thinking", "redacted_thinking"):
            reasoning.append(block.get("thinking") or "")
            thinking_blocks.append(block)
        else:
            raise FormatError(f"an assistant content block of type {kind!r} is not supported")
    message: Body = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    if thinking_blocks:
        message["reasoning_content"] = "".join(reasoning)
        message["thinking_blocks"] = thinking_blocks
    return message


def _tool_to_openai(tool: Any) -> Body:
    if not isinstance(tool, dict):
        raise FormatError("every tool must be an object")
    if tool.get("type") not in (None, "custom"):
        return tool  # a server tool (web_search, ...): only an Anthropic deployment knows it
    if not tool.get("name"):
        raise FormatError("a tool needs a name")
    function: Body = {"name": tool["name"], "parameters": tool.get("input_schema") or {}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


# -- OpenAI → Anthropic: the gateway's reply -----------------------------------------------------


def to_anthropic_message(completion: Body, model: str) -> Body:
    """The Anthropic Message for a `chat.completion`, named after the alias the caller used."""
    choices = completion.get("choices") or [{}]
    message = choices[0].get("message") or {}
    content: list[Body] = thinking_of(message)
    text = text_of(message.get("content"))
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": tool_input(function.get("arguments")),
            }
        )
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


def text_of(content: Any) -> str:
    """The text of a string or of a list of text parts/blocks (anything else is ignored)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""
