"""The mesh file's `runtime:` section: what `agentmesh worker runtime -f mesh.yaml` (and `up`)
serve besides what is saved through the API.

    runtime:
      workdir: .agentmesh/runtime/work     # bash's per-session working directories
      bash_timeout: 30                     # seconds; bash runs only for agents with enable_bash
      fetch_allow_private: false           # let `fetch` and HTTP tools reach private addresses
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

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from agentmesh.agents.runtime.builtins import Fences
from agentmesh.schemas.runtime import DEFINITION_ID, AgentDefinition


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
    agents: list[AgentDefinition] = Field(default_factory=list)
    templates: list[TemplateEntry] = Field(default_factory=list)

    def fences(self) -> Fences:
        return Fences(
            workdir_root=self.workdir,
            bash_timeout=self.bash_timeout,
            output_cap=self.output_cap,
            fetch_timeout=self.fetch_timeout,
            fetch_max_bytes=self.fetch_max_bytes,
            fetch_allow_private=self.fetch_allow_private,
        )
