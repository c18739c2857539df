"""Message content between the two formats: OpenAI content parts ⇄ Anthropic content blocks,
tool calls ⇄ `tool_use` blocks, and the text of either. Shared by the request and reply
translations (`anthropic_requests`, `anthropic_replies`); pure functions, no I/O.
"""

from __future__ import annotations

import json
from typing import Any

Body = dict[str, Any]


class FormatError(ValueError):
    """A request that has no equivalent in the other format (the caller's mistake: HTTP 400)."""


def parts_to_blocks(content: Any) -> list[Body]:
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


def blocks_to_parts(blocks: list[Any], *, collapse: bool) -> str | list[Body]:
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


def tool_use(call: Body) -> Body:
    """An OpenAI tool call as an Anthropic `tool_use` block (the reverse of `tool_call`)."""
    function = call.get("function") or {}
    return {
        "type": "tool_use",
        "id": call.get("id"),
        "name": function.get("name"),
        "input": tool_input(function.get("arguments")),
    }


def tool_call(call_id: Any, name: Any, arguments: Any) -> Body:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments or {})
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": text}}


def text_of(content: Any) -> str:
    """The text of a string or of a list of text parts/blocks (anything else is ignored)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""
