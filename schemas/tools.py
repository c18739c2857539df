"""A tool call's result as callers see it: the MCP `CallToolResult`, with helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


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
