"""What an inference can use: `ModelRegistry` (model ids → mesh model aliases) and
`ToolRegistry` (tool ids → tool configs, with the callables of function tools).

Models are served by the mesh's LLM workers: a model id the registry does not know is used as
the alias itself, so `ModelRegistry()` is "every model of the mesh". Tools resolve in order: the
registry's own entries (function, skill and HTTP tools, MCP tools registered by hand), the
built-ins (`delegate`, `bash`, `fetch`), then the MCP workers' catalog: `<server>_<tool>` is one
tool of a server (the gateway's `/mcp` names), `mcp:<server>` is every tool it has.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentmesh.schemas.runtime import ToolConfig, ToolType

ToolFn = Callable[..., Any]  # sync or async; takes the model's arguments as keywords


class ModelConfig(BaseModel):
    """A model id of the runtime and the mesh alias it stands for (the seed's `ModelConfig`).

    `model_name` is the alias LLM workers serve (default: `model_id`). `api_base`,
    `api_protocol` and `api_key` describe a deployment: `POST /v1/models` hands them to the LLM
    workers; in-process they are kept for the listing, the call always goes through the mesh.
    """

    model_config = ConfigDict(extra="ignore", protected_namespaces=())

    model_id: str
    model_name: str | None = None
    api_base: str | None = None
    api_protocol: str | None = Field(None, description="openai, anthropic or ollama")
    api_key: str | None = Field(None, exclude=True)
    context_window: int = Field(32_000, ge=1024, description="Tokens the model takes in.")

    @property
    def alias(self) -> str:
        return self.model_name or self.model_id


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, ModelConfig] = {}

    def register(self, config: ModelConfig) -> ModelConfig:
        self._models[config.model_id] = config
        return config

    def unregister(self, model_id: str) -> bool:
        return self._models.pop(model_id, None) is not None

    def get(self, model_id: str) -> ModelConfig:
        """The model's config; an unknown id is a mesh alias of the same name."""
        return self._models.get(model_id) or ModelConfig(model_id=model_id)

    def list(self) -> list[ModelConfig]:
        return list(self._models.values())


@dataclass(slots=True)
class RegisteredTool:
    config: ToolConfig
    fn: ToolFn | None = None  # function tools


class ToolRegistry:
    def __init__(self) -> None:
        self._tools: dict[str, RegisteredTool] = {}

    def register(
        self, config: ToolConfig | ToolFn, callable_fn: ToolFn | None = None
    ) -> ToolConfig:
        """Add a tool: a `ToolConfig` (with `callable_fn` for a function tool), or a function
        decorated with `@function_tool` (or any plain function: its signature is the schema)."""
        if not isinstance(config, ToolConfig):
            callable_fn, config = config, tool_config_of(config)
        if config.tool_type is ToolType.FUNCTION and callable_fn is None:
            raise ValueError(f"function tool {config.tool_id!r} needs its callable_fn")
        self._tools[config.tool_id] = RegisteredTool(config, callable_fn)
        return config

    def unregister(self, tool_id: str) -> bool:
        return self._tools.pop(tool_id, None) is not None

    def get(self, tool_id: str) -> RegisteredTool | None:
        return self._tools.get(tool_id)

    def list(self) -> list[ToolConfig]:
        return [t.config for t in self._tools.values()]


def function_tool(
    fn: ToolFn | None = None, *, name: str | None = None, description: str | None = None
) -> Any:
    """Make a function a tool: `@function_tool` or `@function_tool(name=..., description=...)`.

    The JSON Schema comes from the signature (str, int, float, bool, list, dict and their
    `X | None` forms; a parameter without a default is required), the description from the
    docstring. The function stays callable as before; `ToolRegistry.register(fn)` adds it.
    """

    def wrap(f: ToolFn) -> ToolFn:
        f.__agentmesh_tool__ = _config_from_signature(f, name, description)  # type: ignore[attr-defined]
        return f

    return wrap(fn) if fn is not None else wrap


def tool_config_of(fn: ToolFn) -> ToolConfig:
    config = getattr(fn, "__agentmesh_tool__", None)
    return config if isinstance(config, ToolConfig) else _config_from_signature(fn, None, None)


_JSON_TYPES: dict[Any, str] = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}


def _config_from_signature(fn: ToolFn, name: str | None, description: str | None) -> ToolConfig:
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        properties[param.name] = {"type": _json_type(hints.get(param.name, str))}
        if param.default is param.empty:
            required.append(param.name)
    tool_name = name or fn.__name__
    doc = inspect.getdoc(fn) or ""
    return ToolConfig(
        tool_id=tool_name,
        tool_type=ToolType.FUNCTION,
        name=tool_name,
        description=description or doc.split("\n\n")[0].strip(),
        parameters={"type": "object", "properties": properties, "required": required},
    )


def _json_type(hint: Any) -> str:
    origin = typing.get_origin(hint) or hint
    if origin in _JSON_TYPES:
        return _JSON_TYPES[origin]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1:  # X | None
        return _json_type(args[0])
    return "string"


MCP_ALL = re.compile(r"^mcp:([A-Za-z0-9_-]+)$")  # every tool of one MCP server
