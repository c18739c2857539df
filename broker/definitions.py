"""The runtime's definitions in JetStream, shared by every gateway and runtime worker:

    agentmesh_runtime_agents     KV      `<p>.<agent_id>`    → AgentDefinition JSON
    agentmesh_prompt_templates   KV      `<p>.<template_id>` → PromptTemplate JSON
    agentmesh_runtime_tools      KV      `<p>.<tool_id>`     → ToolConfig JSON (HTTP tools)
    agentmesh_skills             KV      `<p>.<skill_id>`    → {name, description, digest, size}
    agentmesh_skill_files        object  `<p>.<skill_id>`    → the skill directory as a zip
    agentmesh_runtime_env        KV      `<p>.<NAME>`        → {"value": ...} (a secret)

Every write publishes `<p>.runtime.changed` (core NATS), so workers re-read at once; they also
look at each bucket's last sequence every few seconds, which catches a missed notice.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from pathlib import Path
from typing import Any, TypeVar

import nats.js.errors
from nats.js import api
from pydantic import BaseModel, ValidationError

from agentmesh.broker.durable import DurableState
from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.errors import InvalidMessage, NotFound, PayloadTooLarge
from agentmesh.schemas.runtime import AgentDefinition, PromptTemplate, ToolConfig

logger = logging.getLogger(__name__)

AGENTS_BUCKET = "agentmesh_runtime_agents"
TEMPLATES_BUCKET = "agentmesh_prompt_templates"
TOOLS_BUCKET = "agentmesh_runtime_tools"
SKILLS_BUCKET = "agentmesh_skills"
SKILL_FILES = "agentmesh_skill_files"
ENV_BUCKET = "agentmesh_runtime_env"
MAX_SKILL_BYTES = 16 * 1024 * 1024  # a skill's zip
MAX_SKILL_FILES = 2000

M = TypeVar("M", bound=BaseModel)


class SkillRecord(BaseModel):
    skill_id: str
    name: str
    description: str
    digest: str  # sha256 of the zip: a worker's cached copy is current when it matches
    size: int


class Definitions:
    def __init__(self, durable: DurableState, subjects: Subjects) -> None:
        self.durable = durable
        self.subjects = subjects
        self.prefix = subjects.prefix

    def _key(self, name: str, what: str) -> str:
        return self.subjects.record(name, what=what)

    async def changed(self) -> None:
        """Tell the workers to re-read now (best effort: they also poll)."""
        try:
            await self.durable.nc.publish(self.subjects.runtime_changed(), b"")
        except OSError:
            logger.debug("runtime change notice not published")

    async def version(self) -> tuple[int, ...]:
        """The buckets' last sequences: changes when anything in them changes."""
        out = []
        for bucket in (AGENTS_BUCKET, TEMPLATES_BUCKET, TOOLS_BUCKET, SKILLS_BUCKET, ENV_BUCKET):
            with self.durable.calling(f"reading {bucket}"):
                try:
                    info = await self.durable.js.stream_info(f"KV_{bucket}")
                    out.append(info.state.last_seq)
                except nats.js.errors.NotFoundError:
                    out.append(0)
        return tuple(out)

    # Typed records -----------------------------------------------------------------------------
    async def _all(self, bucket: str, model: type[M]) -> list[M]:
        out = []
        for key, raw in (await self.durable.bucket(bucket).scan(self.prefix)).items():
            try:
                out.append(model.model_validate(raw))
            except ValidationError as exc:
                logger.warning("%s: the record %r is invalid (%s); skipped", bucket, key, exc)
        return out

    async def _one(self, bucket: str, model: type[M], name: str, what: str) -> M | None:
        raw = await self.durable.bucket(bucket).get(self._key(name, what))
        if raw is None:
            return None
        try:
            return model.model_validate(raw)
        except ValidationError:
            logger.warning("%s: the record %r is invalid; ignored", bucket, name)
            return None

    async def _put(self, bucket: str, name: str, what: str, record: BaseModel) -> None:
        await self.durable.bucket(bucket).put(self._key(name, what), record.model_dump(mode="json"))
        await self.changed()

    async def _create(self, bucket: str, name: str, what: str, record: BaseModel) -> bool:
        """Store `record` only if there is none under `name`; False if there is one."""
        created = await self.durable.bucket(bucket).create(
            self._key(name, what), record.model_dump(mode="json")
        )
        if created:
            await self.changed()
        return created

    async def _delete(self, bucket: str, name: str, what: str) -> bool:
        gone = await self.durable.bucket(bucket).delete(self._key(name, what))
        if gone:
            await self.changed()
        return gone

    # Saved agents ------------------------------------------------------------------------------
    async def agents(self) -> list[AgentDefinition]:
        return await self._all(AGENTS_BUCKET, AgentDefinition)

    async def agent(self, agent_id: str) -> AgentDefinition | None:
        return await self._one(AGENTS_BUCKET, AgentDefinition, agent_id, "agent id")

    async def put_agent(self, definition: AgentDefinition) -> None:
        await self._put(AGENTS_BUCKET, definition.agent_id, "agent id", definition)

    async def create_agent(self, definition: AgentDefinition) -> bool:
        """Save a new agent; False if one with its id exists."""
        return await self._create(AGENTS_BUCKET, definition.agent_id, "agent id", definition)

    async def delete_agent(self, agent_id: str) -> bool:
        return await self._delete(AGENTS_BUCKET, agent_id, "agent id")

    # Prompt templates --------------------------------------------------------------------------
    async def templates(self) -> list[PromptTemplate]:
        return await self._all(TEMPLATES_BUCKET, PromptTemplate)

    async def template(self, template_id: str) -> PromptTemplate | None:
        return await self._one(TEMPLATES_BUCKET, PromptTemplate, template_id, "template id")

    async def put_template(self, template: PromptTemplate) -> None:
        await self._put(TEMPLATES_BUCKET, template.id, "template id", template)

    async def create_template(self, template: PromptTemplate) -> bool:
        """Store a new template; False if one with its id exists."""
        return await self._create(TEMPLATES_BUCKET, template.id, "template id", template)

    async def delete_template(self, template_id: str) -> bool:
        return await self._delete(TEMPLATES_BUCKET, template_id, "template id")

    async def find(self, name_or_id: str) -> PromptTemplate | None:
        """A template by id, else by name (a `TemplateSource`)."""
        try:
            found = await self.template(name_or_id)
        except InvalidMessage:  # a name that is not an id token
            found = None
        if found is not None:
            return found
        return next((t for t in await self.templates() if t.name == name_or_id), None)

    # Tools registered at run time --------------------------------------------------------------
    async def tools(self) -> list[ToolConfig]:
        return await self._all(TOOLS_BUCKET, ToolConfig)

    async def tool(self, tool_id: str) -> ToolConfig | None:
        return await self._one(TOOLS_BUCKET, ToolConfig, tool_id, "tool id")

    async def create_tool(self, tool: ToolConfig) -> bool:
        """Register a new tool; False if one with its id exists."""
        return await self._create(TOOLS_BUCKET, tool.tool_id, "tool id", tool)

    async def put_tool(self, tool: ToolConfig) -> None:
        await self._put(TOOLS_BUCKET, tool.tool_id, "tool id", tool)

    async def delete_tool(self, tool_id: str) -> bool:
        return await self._delete(TOOLS_BUCKET, tool_id, "tool id")

    # Skills ------------------------------------------------------------------------------------
    async def skills(self) -> list[SkillRecord]:
        return await self._all(SKILLS_BUCKET, SkillRecord)

    async def skill(self, skill_id: str) -> SkillRecord | None:
        return await self._one(SKILLS_BUCKET, SkillRecord, skill_id, "skill id")

    async def put_skill(self, record: SkillRecord, archive: bytes) -> None:
        """Store the zip first, then its record: a reader never sees a record without files."""
        store = await self._object_store()
        with self.durable.calling("writing a skill"):
            await store.put(self._key(record.skill_id, "skill id"), archive)
        await self._put(SKILLS_BUCKET, record.skill_id, "skill id", record)

    async def skill_archive(self, skill_id: str) -> bytes:
        store = await self._object_store()
        with self.durable.calling("reading a skill"):
            try:
                result = await store.get(self._key(skill_id, "skill id"))
            except nats.js.errors.ObjectNotFoundError:
                raise NotFound(f"no files for skill {skill_id!r}") from None
        return result.data or b""

    async def delete_skill(self, skill_id: str) -> bool:
        gone = await self._delete(SKILLS_BUCKET, skill_id, "skill id")
        store = await self._object_store()
        with self.durable.calling("deleting a skill"):
            try:
                await store.delete(self._key(skill_id, "skill id"))
            except nats.js.errors.NotFoundError:
                pass
        return gone

    async def _object_store(self) -> Any:
        js = self.durable.js
        with self.durable.calling(f"opening {SKILL_FILES}"):
            try:
                return await js.object_store(SKILL_FILES)
            except nats.js.errors.BucketNotFoundError:
                config = api.ObjectStoreConfig(bucket=SKILL_FILES, storage=api.StorageType.FILE)
                try:
                    # nats-py sets config.bucket from its first argument, even when None.
                    return await js.create_object_store(SKILL_FILES, config=config)
                except nats.js.errors.BadRequestError:
                    return await js.object_store(SKILL_FILES)

    # Secrets (the seed's /v1/env) --------------------------------------------------------------
    async def env(self) -> dict[str, str]:
        raw = await self.durable.bucket(ENV_BUCKET).scan(self.prefix)
        return {k: str(v.get("value", "")) for k, v in raw.items()}

    async def set_env(self, name: str, value: str) -> None:
        await self.durable.bucket(ENV_BUCKET).put(self._key(name, "variable"), {"value": value})
        await self.changed()

    async def delete_env(self, name: str) -> bool:
        return await self._delete(ENV_BUCKET, name, "variable")


def zip_directory(root: Path) -> bytes:
    """A skill directory as a zip (hidden files left out), the same bytes for the same files
    (no timestamps): its digest names its content, so a worker's cached copy stays current.

    Raises:
        PayloadTooLarge: above `MAX_SKILL_BYTES` or `MAX_SKILL_FILES`.
    """
    buffer = io.BytesIO()
    count = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not any(p.startswith(".") for p in path.relative_to(root).parts):
                count += 1
                if count > MAX_SKILL_FILES:
                    raise PayloadTooLarge(f"a skill has at most {MAX_SKILL_FILES} files")
                info = zipfile.ZipInfo(path.relative_to(root).as_posix())
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (0o755 if path.stat().st_mode & 0o111 else 0o644) << 16
                archive.writestr(info, path.read_bytes())
    data = buffer.getvalue()
    if len(data) > MAX_SKILL_BYTES:
        raise PayloadTooLarge(f"a skill's zip is at most {MAX_SKILL_BYTES} bytes")
    return data


def unzip_into(archive: bytes, target: Path) -> None:
    """Extract a skill's zip into `target`, refusing paths that leave it.

    Raises:
        InvalidMessage: not a zip, or a member's path escapes `target`.
    """
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            total = 0
            for member in zf.infolist():
                dest = (root / member.filename).resolve()
                if not dest.is_relative_to(root):
                    raise InvalidMessage(f"the skill archive has a bad path {member.filename!r}")
                total += member.file_size
                if total > 8 * MAX_SKILL_BYTES:
                    raise PayloadTooLarge("the skill archive expands too far")
            zf.extractall(root)
    except zipfile.BadZipFile:
        raise InvalidMessage("the skill is not a zip archive") from None
    except (OSError, NotImplementedError, RuntimeError) as exc:
        # a file and a directory of one name, an unsupported compression, an encrypted member
        raise InvalidMessage(f"the skill archive cannot be unpacked: {exc}") from None


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
