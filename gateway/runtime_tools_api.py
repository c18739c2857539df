"""Tools registered for the runtime over HTTP (the Agent Service seed's `/v1/tools` writes and
`/v1/tools/skill`): HTTP tools and skills, stored in JetStream (broker/definitions.py) and read
by every runtime worker (a skill's files are fetched from the mesh and unpacked by each).

`GET /v1/tools` and `POST /v1/tools/call` (the MCP catalog, gateway/tools_api.py) stay as they
were; the catalog's answer lists these tools too, under `registered`. Writes need `define`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, Field, StringConstraints
from starlette.convertors import register_url_convertor

from agentmesh.agents.runtime.skills import SKILL_FILE, Skill, parse_skill, tool_name
from agentmesh.broker.definitions import (
    MAX_SKILL_BYTES,
    MAX_SKILL_FILES,
    SkillRecord,
    digest,
    unzip_into,
    zip_directory,
)
from agentmesh.broker.subjects import ID_PATTERN
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.definitions_api import (
    ORIGIN,
    STRICT,
    Except,
    ListOf,
    id_param,
    missing,
    same_id,
)
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, responses
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.schemas.errors import Conflict, InvalidMessage, PayloadTooLarge
from agentmesh.schemas.runtime import ToolConfig, ToolType

router = APIRouter(tags=["definitions"], responses=responses(*AUTH_STATUSES))

TOOL_ID = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # an id and a model-facing name (64 at most)
URL = rf"^{ORIGIN}(?:[/?#]\S*)?$"
# Ids the runtime resolves before any registered tool's; the other /v1/tools/<word> routes.
BUILTIN_TOOLS = frozenset({"bash", "fetch", "delegate", "read_skill_file"})
ROUTES = ("batch", "call", "mcp", "skill")
register_url_convertor("tool_id", Except(*ROUTES))  # PUT /v1/tools/skill is no tool's


# HTTP tools ----------------------------------------------------------------------------------
class ToolUpdate(BaseModel):
    model_config = STRICT

    tool_type: Literal["http"] = Field(
        "http", description="Only HTTP tools are registered over HTTP."
    )
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Model-facing; default: tool_id."
    )
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="The JSON Schema of the arguments.",
    )
    url: str = Field(
        pattern=URL,
        description="The runtime POSTs the arguments (JSON) here and gives the model the "
        "answer's text; private and loopback addresses are refused unless the runtime worker "
        "allows them (runtime.fetch_allow_private).",
    )
    timeout: float = Field(60.0, gt=0, le=3600, description="Seconds per call.")


class ToolBody(ToolUpdate):
    tool_id: str = Field(pattern=TOOL_ID, description="What agents list in `tool_ids`.")


class ToolUpdateBody(ToolUpdate):
    tool_id: str | None = Field(None, pattern=TOOL_ID, description="The path's, or absent.")


class BatchDelete(BaseModel):
    model_config = STRICT

    tool_ids: list[Annotated[str, StringConstraints(pattern=ID_PATTERN)]] = Field(
        min_length=1, max_length=1000
    )


class BatchDeleted(BaseModel):
    deleted: list[str]
    missing: list[str]


def _tool(tool_id: str, body: ToolUpdate) -> ToolConfig:
    """The tool's config. 409 CONFLICT when the name the model sees is a built-in's or a
    skill's: a registered tool never stands in for those."""
    name = body.name or tool_id
    if name in BUILTIN_TOOLS or name.startswith("skill_"):
        raise Conflict(
            f"{name!r} is the name of a built-in tool or of a skill", details={"name": name}
        )
    return ToolConfig(
        tool_id=tool_id,
        tool_type=ToolType.HTTP,
        name=name,
        description=body.description,
        parameters=body.parameters,
        url=body.url,
        timeout=body.timeout,
    )


@router.post(
    "/v1/tools",
    response_model=ToolConfig,
    status_code=201,
    responses=responses(*BODY_STATUSES, 409),
)
async def register_tool(
    body: ToolBody,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> ToolConfig:
    """Register an HTTP tool for the runtime: agents and inferences name it in `tool_ids`.
    409 CONFLICT if the id is taken, or is a built-in's (bash, fetch, delegate, ...)."""
    if body.tool_id in BUILTIN_TOOLS | set(ROUTES) or body.tool_id.startswith("skill_"):
        raise Conflict(
            f"{body.tool_id!r} is a built-in tool's, a skill's or a route's name",
            details={"id": body.tool_id},
        )
    tool = _tool(body.tool_id, body)
    if not await state.definitions.create_tool(tool):
        raise Conflict(f"a tool {tool.tool_id!r} is registered", details={"id": tool.tool_id})
    return tool


# Before /v1/tools/{tool_id}: "batch" is not a tool id here.
@router.delete("/v1/tools/batch", response_model=BatchDeleted, responses=responses(*BODY_STATUSES))
async def delete_tools(
    body: BatchDelete,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> BatchDeleted:
    """Delete several registered tools; the ones that were not registered are `missing`."""
    out = BatchDeleted(deleted=[], missing=[])
    for tool_id in dict.fromkeys(body.tool_ids):
        gone = await state.definitions.delete_tool(tool_id)
        (out.deleted if gone else out.missing).append(tool_id)
    return out


@router.put(
    "/v1/tools/{tool_id:tool_id}",
    response_model=ToolConfig,
    responses=responses(*BODY_STATUSES, 404, 409),
)
async def replace_tool(
    body: ToolUpdateBody,
    tool_id: str = PathParam(pattern=TOOL_ID),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> ToolConfig:
    same_id(body.tool_id, tool_id, "tool_id")
    if await state.definitions.tool(tool_id) is None:
        raise missing("registered tool", tool_id)
    tool = _tool(tool_id, body)
    await state.definitions.put_tool(tool)
    return tool


@router.delete(
    "/v1/tools/{tool_id:tool_id}", status_code=204, response_model=None, responses=responses(404)
)
async def delete_tool(
    tool_id: str = id_param("registered tool's id"),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> None:
    if not await state.definitions.delete_tool(tool_id):
        raise missing("registered tool", tool_id)


async def registered_tools(state: GatewayState, principal: Principal) -> list[dict[str, Any]]:
    """The tools registered at run time (HTTP tools, skills), for `GET /v1/tools`; an HTTP
    tool's `url` only for admins (it may hold a token)."""
    out: list[dict[str, Any]] = []
    for tool in sorted(await state.definitions.tools(), key=lambda t: t.tool_id):
        entry = tool.model_dump(mode="json", exclude_none=True, exclude={"server", "mcp_tool"})
        if not principal.allows(Scope.ADMIN):
            entry.pop("url", None)
        out.append(entry)
    for skill in sorted(await state.definitions.skills(), key=lambda s: s.skill_id):
        out.append(
            {
                "tool_id": skill.skill_id,
                "tool_type": ToolType.SKILL.value,
                "name": skill.skill_id,
                "description": skill.description,
            }
        )
    return out


# Skills --------------------------------------------------------------------------------------
class SkillBody(BaseModel):
    model_config = STRICT

    archive: str | None = Field(
        None,
        description="The skill directory as a zip, base64 (SKILL.md at its root or in "
        "its one top-level folder).",
    )
    files: dict[str, str] | None = Field(
        None, description='Text files by relative path: {"SKILL.md": "---\\nname: ...", ...}.'
    )
    binary_files: dict[str, str] | None = Field(
        None, description="Other files by relative path, base64 (with `files`)."
    )


class SkillInfo(SkillRecord):
    tool_id: str = Field(description="What an agent lists in `skills` or `tool_ids`.")

    @classmethod
    def of(cls, record: SkillRecord) -> SkillInfo:
        return cls(**record.model_dump(), tool_id=record.skill_id)


class SkillList(ListOf):
    data: list[SkillInfo]


@router.post(
    "/v1/tools/skill",
    response_model=SkillInfo,
    status_code=201,
    responses={200: {"model": SkillInfo, "description": "It replaced the skill of that name."}}
    | responses(*BODY_STATUSES),
)
async def register_skill(
    body: SkillBody,
    response: Response,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> SkillInfo:
    """Register a skill (a directory with SKILL.md, its front matter naming `name` and
    `description`): `archive` or `files`. Its id is `skill_<name>`; a saved agent lists it in
    `skills`. The model sees its summary first and reads SKILL.md only when it selects it.
    400 INVALID_MESSAGE without SKILL.md or its front matter; 413 beyond the size limits."""
    skill, archive = await asyncio.to_thread(_pack_skill, body)
    record = SkillRecord(
        skill_id=tool_name(skill.name),
        name=skill.name,
        description=skill.description,
        digest=digest(archive),
        size=len(archive),
    )
    if await state.definitions.skill(record.skill_id) is not None:
        response.status_code = 200
    await state.definitions.put_skill(record, archive)
    return SkillInfo.of(record)


@router.get("/v1/skills", response_model=SkillList)
async def list_skills(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> SkillList:
    skills = sorted(await state.definitions.skills(), key=lambda s: s.skill_id)
    return SkillList(data=[SkillInfo.of(s) for s in skills])


@router.delete(
    "/v1/skills/{skill_id}", status_code=204, response_model=None, responses=responses(404)
)
async def delete_skill(
    skill_id: str = id_param("skill's id (skill_<name>)"),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> None:
    if not await state.definitions.delete_skill(skill_id):
        raise missing("skill", skill_id)


def _pack_skill(body: SkillBody) -> tuple[Skill, bytes]:
    """The skill the body holds, checked by unpacking it, and its zip (hidden files dropped).

    Raises:
        InvalidMessage: not exactly one of archive/files, bad base64, a bad path, no SKILL.md.
        PayloadTooLarge: beyond MAX_SKILL_BYTES or MAX_SKILL_FILES.
    """
    if (body.archive is None) == (body.files is None):
        raise InvalidMessage("give the skill as either `archive` or `files`")
    with tempfile.TemporaryDirectory(prefix="agentmesh-skill-") as tmp:
        top = Path(tmp) / "skill"
        if body.archive is not None:
            data = _base64(body.archive, "archive")
            if len(data) > MAX_SKILL_BYTES:
                raise PayloadTooLarge(f"a skill's zip is at most {MAX_SKILL_BYTES} bytes")
            unzip_into(data, top)
        else:
            _write_files(top, body.files or {}, body.binary_files or {})
        root = _skill_root(top)
        try:
            skill = parse_skill(root)
        except (InvalidMessage, UnicodeDecodeError):
            raise InvalidMessage(
                f"{SKILL_FILE} needs a front matter with 'name' and 'description' "
                "(---\\nname: ...\\ndescription: ...\\n---), in UTF-8",
                details={"field": SKILL_FILE},
            ) from None
        return skill, zip_directory(root)


def _skill_root(top: Path) -> Path:
    if (top / SKILL_FILE).is_file():
        return top
    entries = list(top.iterdir()) if top.is_dir() else []
    if len(entries) == 1 and (entries[0] / SKILL_FILE).is_file():
        return entries[0]
    raise InvalidMessage(
        f"the skill has no {SKILL_FILE} (at its root, or in its one top-level folder)",
        details={"field": SKILL_FILE},
    )


def _write_files(root: Path, text: dict[str, str], binary: dict[str, str]) -> None:
    if len(text) + len(binary) > MAX_SKILL_FILES:
        raise PayloadTooLarge(f"a skill has at most {MAX_SKILL_FILES} files")
    contents = {p: v.encode() for p, v in text.items()}
    contents |= {p: _base64(v, f"binary_files.{p}") for p, v in binary.items()}
    total = 0
    for name, data in contents.items():
        total += len(data)
        if total > MAX_SKILL_BYTES:
            raise PayloadTooLarge(f"a skill's files are at most {MAX_SKILL_BYTES} bytes")
        target = root / _relative(name)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                raise IsADirectoryError
            target.write_bytes(data)
        except OSError:  # `a` and `a/b` both given: one name, a file and a folder
            raise InvalidMessage(
                f"{name!r} is a file and a folder", details={"path": name}
            ) from None


def _relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    bad = (
        not name
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or "\\" in name
        or "\0" in name
        or len(name) > 512
    )
    if bad:
        raise InvalidMessage(
            f"{name!r} is not a relative path inside the skill (a/b.txt)", details={"path": name}
        )
    return path


def _base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidMessage(f"{field} is not base64", details={"field": field}) from None
