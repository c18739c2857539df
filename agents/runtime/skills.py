"""Skills with progressive disclosure: a directory with a `SKILL.md` (YAML front matter `name`,
`description`) and any files it refers to.

An inference that may use a skill shows the model only its name and description, as a tool of
that name. When the model calls it, the tool result is the whole `SKILL.md` and the list of the
skill's files; from then on `read_skill_file` reads any of them (inside the skill's directory
only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agentmesh.agents.runtime.registry import ToolRegistry
from agentmesh.schemas.errors import InvalidMessage
from agentmesh.schemas.runtime import ToolConfig, ToolType

SKILL_FILE = "SKILL.md"
MAX_FILES_LISTED = 200
MAX_FILE_READ = 256 * 1024  # bytes `read_skill_file` returns at most
READ_FILE_TOOL = "read_skill_file"
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)


@dataclass(slots=True)
class Skill:
    name: str
    description: str
    root: Path
    body: str  # SKILL.md without its front matter
    files: list[str] = field(default_factory=list)  # relative paths, SKILL.md excluded

    @property
    def tool_id(self) -> str:
        return tool_name(self.name)

    def tool_config(self) -> ToolConfig:
        return ToolConfig(
            tool_id=self.tool_id,
            tool_type=ToolType.SKILL,
            name=self.tool_id,
            description=(
                f"Skill '{self.name}': {self.description} "
                "Call it to read its full instructions before doing the task."
            ),
            parameters={"type": "object", "properties": {}},
        )

    def disclosure(self) -> str:
        """What the model reads when it selects the skill."""
        listed = "\n".join(f"- {f}" for f in self.files[:MAX_FILES_LISTED]) or "(none)"
        return (
            f"# Skill: {self.name}\n\n{self.body.strip()}\n\n"
            f"## Files of this skill (read them with `{READ_FILE_TOOL}`)\n{listed}\n"
        )

    def read(self, path: str) -> str:
        """A file of the skill, as text; refuses anything outside its directory."""
        target = (self.root / path).resolve()
        root = self.root.resolve()
        if not target.is_relative_to(root) or not target.is_file():
            raise InvalidMessage(
                f"skill {self.name!r} has no file {path!r}", details={"path": path}
            )
        data = target.read_bytes()[:MAX_FILE_READ]
        return data.decode("utf-8", errors="replace")


def tool_name(skill_name: str) -> str:
    """The model-facing tool name of a skill: `skill_<name>` with other characters as `_`."""
    return ("skill_" + re.sub(r"[^A-Za-z0-9_-]", "_", skill_name))[:64]


def parse_skill(root: Path) -> Skill:
    """Read a skill directory.

    Raises:
        InvalidMessage: no SKILL.md, or its front matter lacks `name` or `description`.
    """
    path = root / SKILL_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        raise InvalidMessage(f"{root} has no readable {SKILL_FILE}") from None
    match = _FRONT_MATTER.match(text)
    meta = {}
    if match:
        try:
            meta = yaml.safe_load(match.group(1)) or {}
        except yaml.YAMLError:
            meta = {}
    if not isinstance(meta, dict) or not meta.get("name") or not meta.get("description"):
        raise InvalidMessage(
            f"{path}: the front matter needs 'name' and 'description'", details={"path": str(path)}
        )
    files = sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.name != SKILL_FILE and not p.name.startswith(".")
    )
    return Skill(
        name=str(meta["name"]),
        description=str(meta["description"]),
        root=root,
        body=text[match.end() :] if match else text,
        files=files,
    )


class SkillManager:
    """Loads skills and registers each as a tool (the seed's `SkillManager(tool_registry)`)."""

    def __init__(self, tool_registry: ToolRegistry | None = None) -> None:
        self.tool_registry = tool_registry
        self._skills: dict[str, Skill] = {}  # by tool id

    def load_skill(self, path: str | Path) -> ToolConfig:
        """Read the skill at `path` and register it; its `tool_id` goes in `tool_ids`."""
        skill = parse_skill(Path(path))
        self.add(skill)
        return skill.tool_config()

    def add(self, skill: Skill) -> None:
        self._skills[skill.tool_id] = skill
        if self.tool_registry is not None:
            self.tool_registry.register(skill.tool_config())

    def remove(self, tool_id: str) -> bool:
        if self.tool_registry is not None:
            self.tool_registry.unregister(tool_id)
        return self._skills.pop(tool_id, None) is not None

    def get(self, tool_id: str) -> Skill | None:
        return self._skills.get(tool_id)

    def list(self) -> list[Skill]:
        return list(self._skills.values())


def read_file_tool() -> ToolConfig:
    return ToolConfig(
        tool_id=READ_FILE_TOOL,
        tool_type=ToolType.SKILL,
        name=READ_FILE_TOOL,
        description="Read a file of a skill you selected, by the path its file list gives.",
        parameters={
            "type": "object",
            "properties": {
                "skill": {"type": "string", "description": "The skill's name."},
                "path": {"type": "string", "description": "The file's path in the skill."},
            },
            "required": ["skill", "path"],
        },
    )
