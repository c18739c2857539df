"""The mesh file's `runtime:` section: what `agentmesh worker runtime -f mesh.yaml` (and `up`)
serve besides what is saved through the API.

    runtime:
      workdir: .agentmesh/runtime/work     # bash's per-session working directories
      bash_timeout: 30                     # seconds; bash runs only for agents with enable_bash
      fetch_allow_private: false           # let `fetch` and HTTP tools reach private addresses
      function_tools:                      # Python functions every worker loads (module:attr,
        - mypackage.tools:search           # a function or a list of them); give every worker
                                           # the same list
      agents:                              # saved into the mesh at start and on every change
        - agent_id: helper
          model_id: gpt-4.1-mini
          system_prompt: You are helpful.
          tool_ids: [time_get_current_time]
      templates:
        - id: summarize
          name: summarize
          content: "Summarize in {{language}}: {{text}}"
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentmesh.agents.runtime.builtins import Fences
from agentmesh.schemas.errors import InvalidMessage
from agentmesh.schemas.runtime import DEFINITION_ID, AgentDefinition

_TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


class TemplateEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=DEFINITION_ID.pattern)
    name: str = Field(min_length=1, max_length=128)
    content: str
    description: str | None = None


class RuntimeSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workdir: Path = Field(Path(".agentmesh/runtime/work"), description="bash working directories")
    bash_timeout: float = Field(30.0, gt=0, le=3600)
    output_cap: int = Field(64 * 1024, ge=1024, description="Bytes of bash output kept.")
    fetch_timeout: float = Field(15.0, gt=0, le=600)
    fetch_max_bytes: int = Field(1024 * 1024, ge=1024)
    fetch_allow_private: bool = False
    function_tools: list[str] = Field(
        default_factory=list, description="module:attr of functions (or lists of them)."
    )
    agents: list[AgentDefinition] = Field(default_factory=list)
    templates: list[TemplateEntry] = Field(default_factory=list)

    @field_validator("function_tools")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        for target in value:
            if not _TARGET.fullmatch(target):
                raise ValueError(f"{target!r} is not module:attr (e.g. mypackage.tools:search)")
        return value

    def fences(self) -> Fences:
        return Fences(
            workdir_root=self.workdir,
            bash_timeout=self.bash_timeout,
            output_cap=self.output_cap,
            fetch_timeout=self.fetch_timeout,
            fetch_max_bytes=self.fetch_max_bytes,
            fetch_allow_private=self.fetch_allow_private,
        )


def load_functions(targets: list[str]) -> list[Any]:
    """The functions `module:attr` names (an attr may be a list or tuple of functions); the
    current directory is importable.

    Raises:
        InvalidMessage: a target that cannot be imported or is not callable.
    """
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    out: list[Any] = []
    for target in targets:
        module_name, _, attr = target.partition(":")
        try:
            obj = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise InvalidMessage(f"cannot load the function tool {target}: {exc}") from None
        items = list(obj) if isinstance(obj, list | tuple) else [obj]
        if not all(callable(item) for item in items):
            raise InvalidMessage(f"{target} is not a function (or a list of functions)")
        out.extend(items)
    return out
