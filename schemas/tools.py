"""Tool calls on the wire: the request body a tool worker accepts (`parse_call`) and the
result as callers see it (the MCP `CallToolResult`, with helpers)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from agentmesh.schemas.codec import unpack
from agentmesh.schemas.errors import InvalidMessage

MAX_TIMEOUT = 3600.0  # the longest `timeout` a tool call may ask for, in seconds


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned. `raw` is the MCP `CallToolResult` as JSON, verbatim.

    `is_error` is the MCP `isError` flag: the tool ran and reports a failure (bad arguments, an
    error it anticipated); the text says why. Failures to reach the tool raise instead.
    """

    content: list[dict[str, Any]] = field(default_factory=list)
    structured: Any = None  # `structuredContent`, when the tool gives one
    is_error: bool = False
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mcp(cls, result: dict[str, Any]) -> ToolResult:
        content = result.get("content")
        return cls(
            content=content if isinstance(content, list) else [],
            structured=result.get("structuredContent"),
            is_error=bool(result.get("isError", False)),
            raw=result,
        )

    @property
    def text(self) -> str:
        """The text blocks of the content, joined by newlines."""
        return "\n".join(
            block.get("text", "") for block in self.content if block.get("type") == "text"
        )

    def json(self) -> Any:
        """The result as a value: `structuredContent` if given, else the text parsed as JSON,
        else the text itself."""
        if self.structured is not None:
            return self.structured
        text = self.text
        try:
            return json.loads(text)
        except ValueError:
            return text


def parse_call(data: bytes) -> tuple[str, dict[str, Any], float | None]:
    """(tool, arguments, timeout) of a tool-call request; `InvalidMessage` if malformed."""
    body = unpack(data)
    if not isinstance(body, dict):
        raise InvalidMessage("a tool call must be a map with 'tool' and 'arguments'")
    tool = body.get("tool")
    if not isinstance(tool, str) or not tool:
        raise InvalidMessage("'tool' must be a non-empty string", details={"field": "tool"})
    arguments = body.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise InvalidMessage("'arguments' must be a map", details={"field": "arguments"})
    timeout = body.get("timeout")
    if timeout is not None:
        ok = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if not ok or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
            raise InvalidMessage(
                f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT:g}]",
                details={"field": "timeout"},
            )
    return tool, arguments, timeout
