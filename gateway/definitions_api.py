"""The runtime's definitions over HTTP (the Agent Service seed's management API): saved agents,
prompt templates and secrets, stored in JetStream (broker/definitions.py). HTTP tools and skills
are in runtime_tools_api.py, models and MCP servers (the shared config) in shared_config_api.py.

Every write tells the runtime workers at once: a saved agent is a mesh agent within a second or
so, served by every worker. Reads need `agents:read`, writes `define` (with auth off, anyone
may), an agent with `enable_bash` and everything under `/v1/env` `admin`. Errors use the mesh's
format (`{"error": {"code", "message", "details"}}`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import HTTPConnection, Request

from agentmesh.broker.subjects import ID_PATTERN
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, responses
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.schemas.errors import Conflict, Forbidden, InvalidMessage, NotFound, Unauthorized
from agentmesh.schemas.runtime import AgentDefinition, AgentLimits, PromptTemplate

router = APIRouter(tags=["definitions"], responses=responses(*AUTH_STATUSES))

ENV_NAME = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"
MAX_ENV_VALUE = 64 * 1024
WELL_KNOWN_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OLLAMA_HOST",
    "GEMINI_API_KEY",
    "GOOGLE_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "MISTRAL_API_KEY",
    "GROQ_API_KEY",
    "DEEPSEEK_API_KEY",
    "OPENROUTER_API_KEY",
    "TOGETHER_API_KEY",
    "DASHSCOPE_API_KEY",
    "HF_TOKEN",
)


# `scheme://host[:port]` that every HTTP client parses: a host name or IPv4 address (no user
# info, no IPv6 literal), a port up to 65535. `http://[` or `:99999` match a looser pattern and
# break whoever parses them (the caller's client, the runtime's, a fuzzer reading the echo).
PORT = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}"
ORIGIN = rf"https?://[A-Za-z0-9._-]+(?::(?:{PORT}))?"

# Bodies are strict: `1` is not `true`, `false` is not `0` (the document's types, exactly).
STRICT = ConfigDict(extra="ignore", strict=True)


class Except(Convertor[str]):
    """A path segment other than `words` (which other routes of the same prefix use)."""

    def __init__(self, *words: str) -> None:
        self.regex = "(?!(?:" + "|".join(words) + ")$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("env_key", Except("detect"))


def id_param(what: str) -> Any:
    return PathParam(pattern=ID_PATTERN, description=f"The {what}.")


class ListOf(BaseModel):
    object: Literal["list"] = "list"


# Saved agents --------------------------------------------------------------------------------
def _agent_body(name: str, *, id_required: bool) -> type[BaseModel]:
    """AgentDefinition's fields without the timestamps (the gateway sets them), the id checked
    as the store checks it (400 INVALID_ID otherwise)."""
    fields: dict[str, Any] = {
        n: (f.annotation, f)
        for n, f in AgentDefinition.model_fields.items()
        if n not in ("created_at", "updated_at")
    }
    fields["limits"] = (StrictLimits, AgentDefinition.model_fields["limits"])
    fields["agent_id"] = (
        (str, Field(pattern=ID_PATTERN))
        if id_required
        else (str | None, Field(None, pattern=ID_PATTERN, description="The path's, or absent."))
    )
    return create_model(name, __config__=STRICT, **fields)


class StrictLimits(AgentLimits):
    model_config = STRICT

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, raw: Any) -> Any:
        # JSON Schema's integers include 3.0; strict pydantic's do not.
        if not isinstance(raw, dict):
            return raw
        return {k: _integral(v) if k in _INT_LIMITS else v for k, v in raw.items()}


_INT_LIMITS = frozenset(
    n for n, f in AgentLimits.model_fields.items() if f.annotation in (int, int | None)
)


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**63:
        return int(value)
    return value


AgentBody = _agent_body("AgentBody", id_required=True)
AgentUpdate = _agent_body("AgentUpdate", id_required=False)


class AgentList(ListOf):
    data: list[AgentDefinition]


@router.get("/v1/agents", response_model=AgentList)
async def list_agents(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> AgentList:
    """Every saved agent (online or not: `GET /gateway/agents` lists the online ones)."""
    agents = sorted(await state.definitions.agents(), key=lambda a: a.agent_id)
    return AgentList(data=agents)


@router.get("/v1/agents/{agent_id}", response_model=AgentDefinition, responses=responses(404))
async def get_agent(
    agent_id: str = id_param("saved agent's id"),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> AgentDefinition:
    return await _stored_agent(state, agent_id)


@router.post(
    "/v1/agents",
    response_model=AgentDefinition,
    status_code=201,
    responses=responses(*BODY_STATUSES, 409),
)
async def create_agent(
    conn: Request,
    body: AgentBody,  # type: ignore[valid-type]
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> AgentDefinition:
    """Save an agent: every runtime worker serves it as a mesh agent (`/gateway/send`, tasks,
    delegation). 409 CONFLICT if a saved agent has its id, or a program serves that id; 403 for
    `enable_bash` without the admin scope (bash runs commands on the workers' machines)."""
    now = time.time()
    definition = AgentDefinition(**body.model_dump(), created_at=now, updated_at=now)
    await bash_needs_admin(definition, conn)
    presence = await state.registry.agent(definition.agent_id)
    if presence is not None and any(i.via != "runtime" for i in presence.instances):
        raise Conflict(
            f"agent {definition.agent_id!r} is online, served by a program (not a saved agent)",
            details={"agent_id": definition.agent_id},
        )
    if not await state.definitions.create_agent(definition):
        raise Conflict(
            f"a saved agent {definition.agent_id!r} exists (PUT /v1/agents/{{agent_id}} "
            "replaces it)",
            details={"agent_id": definition.agent_id},
        )
    return definition


@router.put(
    "/v1/agents/{agent_id}",
    response_model=AgentDefinition,
    responses=responses(*BODY_STATUSES, 404),
)
async def replace_agent(
    conn: Request,
    body: AgentUpdate,  # type: ignore[valid-type]
    agent_id: str = id_param("saved agent's id"),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> AgentDefinition:
    """Replace a saved agent's definition; its next call uses it (calls in flight finish)."""
    same_id(body.agent_id, agent_id, "agent_id")  # type: ignore[attr-defined]
    stored = await _stored_agent(state, agent_id)
    fields = body.model_dump() | {"agent_id": agent_id}  # type: ignore[attr-defined]
    definition = AgentDefinition(
        **fields, created_at=stored.created_at, updated_at=max(time.time(), stored.updated_at)
    )
    await bash_needs_admin(definition, conn)
    await state.definitions.put_agent(definition)
    return definition


@router.delete(
    "/v1/agents/{agent_id}", status_code=204, response_model=None, responses=responses(404)
)
async def delete_agent(
    agent_id: str = id_param("saved agent's id"),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> None:
    """Delete a saved agent: every worker stops serving it (it goes offline)."""
    if not await state.definitions.delete_agent(agent_id):
        raise missing("saved agent", agent_id)


async def bash_needs_admin(definition: AgentDefinition, conn: HTTPConnection) -> None:
    """An agent with bash runs commands on the workers' machines: saving one takes what an
    admin route takes (an admin key, or the admin token; with auth off, the token)."""
    if not definition.enable_bash:
        return
    try:
        await require(Scope.ADMIN)(conn)
    except (Unauthorized, Forbidden) as exc:
        raise Forbidden(
            f"an agent with enable_bash runs commands on the runtime workers: saving one needs "
            f"the admin scope ({exc.message})",
            details={"scope": Scope.ADMIN.value, "field": "enable_bash"},
        ) from None


async def _stored_agent(state: GatewayState, agent_id: str) -> AgentDefinition:
    found = await state.definitions.agent(agent_id)
    if found is None:
        raise missing("saved agent", agent_id)
    return found


def same_id(given: str | None, path: str, field: str) -> None:
    if given is not None and given != path:
        raise InvalidMessage(
            f"the body's {field} {given!r} is not the path's {path!r} (ids cannot change)",
            details={"field": field},
        )


def missing(what: str, name: str) -> NotFound:
    return NotFound(f"no {what} {name!r}", details={"id": name})


# Prompt templates ----------------------------------------------------------------------------
class TemplateUpdate(BaseModel):
    model_config = STRICT

    name: str = Field(min_length=1, max_length=128, description="Unique; messages may use it.")
    content: str = Field(description="The text, with {{variable}} placeholders.")
    description: str | None = None


class TemplateBody(TemplateUpdate):
    id: str | None = Field(None, pattern=ID_PATTERN, description="Default: a new `pt_...` id.")


class TemplateList(ListOf):
    data: list[PromptTemplate]


@router.get("/v1/prompt-templates", response_model=TemplateList)
async def list_templates(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> TemplateList:
    return TemplateList(data=sorted(await state.definitions.templates(), key=lambda t: t.name))


@router.get(
    "/v1/prompt-templates/{template_id}", response_model=PromptTemplate, responses=responses(404)
)
async def get_template(
    template_id: str = id_param("template's id"),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> PromptTemplate:
    return await _stored_template(state, template_id)


@router.post(
    "/v1/prompt-templates",
    response_model=PromptTemplate,
    status_code=201,
    responses=responses(*BODY_STATUSES, 409),
)
async def create_template(
    body: TemplateBody,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> PromptTemplate:
    """Store a template; a user message names it (by id or name) in `prompt_template`, with its
    variables in `arguments`. 409 CONFLICT if its id or name is taken."""
    fields = body.model_dump(exclude_none=True)
    template = PromptTemplate(**fields)
    await _name_free(state, template)
    if not await state.definitions.create_template(template):
        raise Conflict(f"a template with id {template.id!r} exists", details={"id": template.id})
    return template


@router.put(
    "/v1/prompt-templates/{template_id}",
    response_model=PromptTemplate,
    responses=responses(*BODY_STATUSES, 404, 409),
)
async def replace_template(
    body: TemplateUpdate,
    template_id: str = id_param("template's id"),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> PromptTemplate:
    stored = await _stored_template(state, template_id)
    template = PromptTemplate(
        id=template_id,
        name=body.name,
        content=body.content,
        description=body.description,
        created_at=stored.created_at,
        updated_at=max(time.time(), stored.updated_at),
    )
    await _name_free(state, template)
    await state.definitions.put_template(template)
    return template


@router.delete(
    "/v1/prompt-templates/{template_id}",
    status_code=204,
    response_model=None,
    responses=responses(404),
)
async def delete_template(
    template_id: str = id_param("template's id"),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.DEFINE)),
) -> None:
    if not await state.definitions.delete_template(template_id):
        raise missing("prompt template", template_id)


async def _stored_template(state: GatewayState, template_id: str) -> PromptTemplate:
    found = await state.definitions.template(template_id)
    if found is None:
        raise missing("prompt template", template_id)
    return found


async def _name_free(state: GatewayState, template: PromptTemplate) -> None:
    """A message names a template by id or name: both must find one template only."""
    for other in await state.definitions.templates():
        if other.id != template.id and template.name in (other.name, other.id):
            raise Conflict(
                f"the template {other.id!r} is already named {template.name!r}",
                details={"id": other.id, "name": template.name},
            )
        if other.id != template.id and other.name == template.id:
            raise Conflict(
                f"the template {other.id!r} is named {template.id!r}: choose another id",
                details={"id": other.id},
            )


# Secrets -------------------------------------------------------------------------------------
class EnvBody(BaseModel):
    model_config = STRICT

    key: str = Field(pattern=ENV_NAME, description="Letters, digits and '_'.")
    value: str = Field(max_length=MAX_ENV_VALUE, description="Stored; never shown again.")


class EnvSet(BaseModel):
    set: bool = True


class EnvList(BaseModel):
    env: dict[str, EnvSet] = Field(description="Every variable stored, by name; never values.")


class EnvStored(BaseModel):
    key: str
    set: bool = True


class Detected(BaseModel):
    detected: list[str] = Field(description="The ones set (non-empty) in the gateway's process.")
    checked: list[str] = Field(description="The provider variables looked for.")


@router.get("/v1/env", response_model=EnvList)
async def list_env(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> EnvList:
    """The names of the stored secrets; their values are never answered."""
    return EnvList(env={name: EnvSet() for name in sorted(await state.definitions.env())})


@router.post("/v1/env", response_model=EnvStored, responses=responses(*BODY_STATUSES))
async def set_env(
    body: EnvBody,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> EnvStored:
    """Store (or replace) a secret, shared by every gateway and runtime worker."""
    await state.definitions.set_env(body.key, body.value)
    return EnvStored(key=body.key)


@router.post("/v1/env/detect", response_model=Detected)
async def detect_env(_: Principal = Depends(require(Scope.ADMIN))) -> Detected:
    """Which well-known provider variables the gateway's own environment sets (names only)."""
    found = [name for name in WELL_KNOWN_ENV if os.environ.get(name)]
    return Detected(detected=found, checked=list(WELL_KNOWN_ENV))


@router.delete(
    "/v1/env/{key:env_key}", status_code=204, response_model=None, responses=responses(404)
)
async def delete_env(
    key: str = PathParam(pattern=ENV_NAME),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> None:
    if not await state.definitions.delete_env(key):
        raise missing("variable", key)
