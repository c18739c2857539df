"""Seed example 3 (`example_skill.py`): load a skill from a directory and stream an inference
with progressive disclosure (the model sees SKILL.md only once it selects the skill)."""

import os
import sys
import tempfile
from pathlib import Path

from agentmesh.runtime import (
    InferenceRequest,
    ModelConfig,
    ModelRegistry,
    Runtime,
    SkillManager,
    ToolRegistry,
)

SKILL_MD = """---
name: latest-data
description: Query the latest data of the sales database and summarize it.
---
# Querying the latest data
Read `query.sql` with the file tool, then report the totals per region.
"""


def make_skill(root: Path) -> Path:
    skill = root / "my_skill"
    skill.mkdir()
    (skill / "SKILL.md").write_text(SKILL_MD)
    (skill / "query.sql").write_text("SELECT region, SUM(amount) FROM sales GROUP BY region;\n")
    return skill


def main() -> None:
    model_registry = ModelRegistry()
    model_registry.register(
        ModelConfig(model_id="my-model", model_name=os.environ.get("MODEL", "echo"))
    )
    tool_registry = ToolRegistry()
    skill_manager = SkillManager(tool_registry)
    with tempfile.TemporaryDirectory() as tmp:
        skill_config = skill_manager.load_skill(make_skill(Path(tmp)))  # directory with SKILL.md
        runtime = Runtime(
            model_registry=model_registry,
            tool_registry=tool_registry,
            skill_manager=skill_manager,
        )
        try:
            for msg in runtime.infer_stream(
                InferenceRequest(
                    model_id="my-model",
                    tool_ids=[skill_config.tool_id],
                    text="Help me query the latest data",
                    max_tool_rounds=20,
                )
            ):
                if msg.content:
                    print(msg.content, end="", flush=True)
                elif msg.thinking:
                    print(f"[thinking] {msg.thinking}", end="", flush=True)
            print()
        finally:
            runtime.close()
    sys.stdout.flush()


if __name__ == "__main__":
    main()
