"""Prompt templates: `{{placeholder}}` text resolved at run time from a message's `arguments`.

`PromptTemplateManager` keeps templates in the process (the seed's API); the mesh's copy, which
every runtime worker and gateway shares, is `agentmesh.agents.runtime.store.TemplateStore`. Both
answer `find(name_or_id)`, which is all an inference needs.
"""

from __future__ import annotations

import re
import time
from typing import Any, Protocol

from agentmesh.schemas.errors import InvalidMessage, NotFound
from agentmesh.schemas.runtime import Message, PromptTemplate

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")


class TemplateSource(Protocol):
    async def find(self, name_or_id: str) -> PromptTemplate | None: ...


def placeholders(content: str) -> list[str]:
    """The variables a template uses, in order of first use."""
    return list(dict.fromkeys(_PLACEHOLDER.findall(content)))


def render(template: PromptTemplate, arguments: dict[str, Any]) -> str:
    """The template with every `{{name}}` replaced by `arguments[name]` (str() of non-strings).

    Raises:
        InvalidMessage: a variable has no argument (`details.missing` names every one).
    """
    missing = [name for name in placeholders(template.content) if name not in arguments]
    if missing:
        raise InvalidMessage(
            f"prompt template {template.name!r} needs the argument(s) {', '.join(missing)}",
            details={"template": template.name, "missing": missing},
        )

    def value(m: re.Match[str]) -> str:
        v = arguments[m.group(1)]
        return v if isinstance(v, str) else str(v)

    return _PLACEHOLDER.sub(value, template.content)


async def render_messages(messages: list[Message], source: TemplateSource | None) -> list[Message]:
    """The messages with every `prompt_template` reference rendered into `content`.

    Raises:
        NotFound: a message names a template that does not exist.
        InvalidMessage: a variable has no argument.
    """
    out = []
    for message in messages:
        if message.prompt_template:
            template = await source.find(message.prompt_template) if source else None
            if template is None:
                raise NotFound(
                    f"no prompt template {message.prompt_template!r}",
                    details={"template": message.prompt_template},
                )
            message = message.model_copy(
                update={
                    "content": render(template, message.arguments),
                    "prompt_template": None,
                    "arguments": {},
                }
            )
        out.append(message)
    return out


class PromptTemplateManager:
    """Templates in this process: `create(name=, content=)`, `get`, `list`, `update`, `delete`."""

    def __init__(self) -> None:
        self._templates: dict[str, PromptTemplate] = {}

    def create(self, *, name: str, content: str, description: str | None = None) -> PromptTemplate:
        template = PromptTemplate(name=name, content=content, description=description)
        self._templates[template.id] = template
        return template

    def get(self, template_id: str) -> PromptTemplate | None:
        return self._templates.get(template_id)

    def list(self) -> list[PromptTemplate]:
        return list(self._templates.values())

    def update(self, template_id: str, **changes: Any) -> PromptTemplate:
        old = self._templates.get(template_id)
        if old is None:
            raise NotFound(f"no prompt template {template_id!r}")
        allowed = {k: v for k, v in changes.items() if k in ("name", "content", "description")}
        new = old.model_copy(update={**allowed, "updated_at": time.time()})
        self._templates[template_id] = new
        return new

    def delete(self, template_id: str) -> bool:
        return self._templates.pop(template_id, None) is not None

    async def find(self, name_or_id: str) -> PromptTemplate | None:
        """By id, else by name (the seed's messages name templates either way)."""
        found = self._templates.get(name_or_id)
        if found is not None:
            return found
        return next((t for t in self._templates.values() if t.name == name_or_id), None)
