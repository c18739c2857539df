"""Requests both ways: a canonical (OpenAI chat-completions) request → Anthropic Messages, for
the `anthropic` provider, and an Anthropic Messages request → canonical, for the gateway's
`POST /v1/messages`. What maps to what is in docs/DECISIONS.md ("Anthropic mapping").
"""

from __future__ import annotations

from typing import Any

from agentmesh.schemas.llm.anthropic_blocks import (
    Body,
    FormatError,
    blocks_to_parts,
    parts_to_blocks,
    text_of,
    tool_call,
    tool_use,
)

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI callers rarely send it
# OpenAI's reasoning_effort → an Anthropic thinking budget (1,024 tokens is the minimum).
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
# Anthropic rejects unknown fields, so of the caller's other fields only these go upstream:
# shared ones, and Anthropic's own whose names OpenAI does not use (from /v1/messages callers).
_PASSED_UPSTREAM = """temperature top_p top_k cache_control container context_management
    inference_geo mcp_servers output_config speed""".split()
# Fields of an Anthropic request the gateway translates; the rest pass through unchanged.
_TRANSLATED = frozenset(
    """model messages system max_tokens stop_sequences tools tool_choice
    metadata stream""".split()
)


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
    else:
        out.update(_tools_for_history(messages))
    if request.get("service_tier") in ("auto", "standard_only"):  # OpenAI's other tiers differ
        out["service_tier"] = request["service_tier"]
    user = request.get("user") or (request.get("metadata") or {}).get("user_id")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    return out


def _tools_for_history(messages: list[Body]) -> Body:
    """Anthropic refuses `tool_use`/`tool_result` blocks in a request that defines no tools (an
    agent's last call after its tool rounds, a summary of a conversation with tool calls): the
    tools called are defined again, bare, with tool_choice none so that none is called."""
    names = [
        block["name"]
        for message in messages
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_use" and block.get("name")
    ]
    if not names:
        return {}
    tools = [{"name": name, "input_schema": {"type": "object"}} for name in dict.fromkeys(names)]
    return {"tools": tools, "tool_choice": {"type": "none"}}


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
            blocks = parts_to_blocks(message.get("content"))
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


def _assistant_blocks(message: Body) -> list[Body]:
    # Anthropic only takes thinking back with its signature: reasoning_content alone is dropped.
    blocks = [
        b
        for b in message.get("thinking_blocks") or []
        if isinstance(b, dict) and b.get("type") in ("thinking", "redacted_thinking")
    ]
    blocks.extend(parts_to_blocks(message.get("content")))
    blocks.extend(tool_use(call) for call in message.get("tool_calls") or [])
    return blocks


def _tool_result(message: Body) -> Body:
    if not message.get("tool_call_id"):
        raise FormatError("a tool message needs its tool_call_id")
    content = message.get("content")
    block: Body = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    block["content"] = content if isinstance(content, str) else parts_to_blocks(content)
    return block


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
                result = blocks_to_parts(result, collapse=True)
            out.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": result or ""}
            )
        else:
            parts.append(block)
    if parts:
        out.append({"role": "user", "content": blocks_to_parts(parts, collapse=True)})
    return out


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
