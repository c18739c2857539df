"""Models and MCP servers over HTTP (the Agent Service seed's `POST /v1/models` and
`POST /v1/tools/mcp`): entries of the mesh's shared config, which the LLM and MCP workers
started with `--shared` follow and apply live.

The shared config is one text (the mesh file's YAML, JetStream KV `agentmesh_config`, key = the
mesh prefix; broker/watch.py). A write reads it, changes its `models` or `mcpServers` section,
and writes it back only if nobody wrote in between (compare-and-set on the KV revision), else
reads again: two gateways never lose each other's change. The other sections are kept as they
are (comments and key order are not: the text is written again as YAML).

Values posted here may not contain `${`: each worker expands `${VAR}` from its own environment,
so a posted reference would read that worker's variables (and an unset one makes every worker
refuse the whole version). Use the value itself, or put references in the mesh file.

`GET /v1/models` stays the OpenAI list of the aliases live workers serve (openai_api.py), and
the /v1/models writes answer errors in OpenAI's format like it; an `api_key` is never answered.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import yaml
from fastapi import APIRouter, Depends
from fastapi import Path as PathParam
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, StringConstraints

from agentmesh.broker.subjects import ID_PATTERN
from agentmesh.broker.watch import SharedSource
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.definitions_api import ORIGIN
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, responses
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.schemas.errors import Conflict, Forbidden, InvalidMessage, ModelNotFound, NotFound

router = APIRouter(tags=["shared config"], responses=responses(*AUTH_STATUSES))
models_router = APIRouter(tags=["llm"], responses=responses(*AUTH_STATUSES, api="openai"))

T = TypeVar("T")
WRITE_ATTEMPTS = 40  # reads and compare-and-sets before a write gives up (409)
MAX_BACKOFF = 0.2  # seconds, at most, between two attempts (random: writers spread out)
# Text without `${` (regex without look-around: JSON Schema, Rust and Python read it alike).
NO_REF = r"^(?:[^$]|\$+[^${])*\$*$"
URL = rf"^{ORIGIN}(?:[/?#](?:[^\s$]|\$+[^\s${{])*\$*)?$"
HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$"
HEADER_VALUE = r"^(?:[^$\r\n]|\$+[^${\r\n])*\$*$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,255}$"
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
AGENTGATEWAY_KEYS = ("llm", "mcp", "binds")

Text = Annotated[str, StringConstraints(pattern=NO_REF, max_length=4096)]
_CLOSED = {"additionalProperties": False}  # a map whose keys are checked: no other keys


# The shared config -----------------------------------------------------------------------
async def _source(state: GatewayState, *, create: bool) -> SharedSource | None:
    with state.durable.calling("opening the shared config"):
        try:
            return await SharedSource.open(state.bus.nc, state.settings.prefix, create=create)
        except LookupError:
            return None


async def read_shared(state: GatewayState) -> dict[str, Any]:
    """The shared config's sections now ({} if none was written)."""
    source = await _source(state, create=False)
    if source is None:
        return {}
    with state.durable.calling("reading the shared config"):
        text, _ = await source.entry()
    return _parse(text)


async def edit_shared(state: GatewayState, change: Callable[[dict[str, Any]], T]) -> T:
    """Apply `change` (which edits the document in place, or raises to refuse) to the shared
    config, retrying on a concurrent write; `change`'s result.

    Raises:
        Conflict: the shared config is not a mesh file this can edit, or it kept changing.
        Unavailable: JetStream is unreachable.
    """
    source = await _source(state, create=True)
    assert source is not None
    for attempt in range(WRITE_ATTEMPTS):
        if attempt:
            await asyncio.sleep(random.uniform(0, min(MAX_BACKOFF, 0.005 * 2**attempt)))
        with state.durable.calling("reading the shared config"):
            text, revision = await source.entry()
        doc = _parse(text)
        result = change(doc)
        new = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        if text is not None and new == text:
            return result
        with state.durable.calling("writing the shared config"):
            if await source.put_if(new, revision) is not None:
                return result
    raise Conflict("the shared config kept changing while this write was made; retry")


def _parse(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise Conflict(
            "the shared config is not valid YAML: fix it with `agentmesh config apply -f FILE`"
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise Conflict("the shared config is not a mapping of sections")
    if any(key in doc for key in AGENTGATEWAY_KEYS):
        raise Conflict(
            "the shared config is in agentgateway's format (llm:, mcp:): rewrite it with "
            "`models` and `mcpServers` sections to edit it over HTTP"
        )
    return doc


def _section(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise Conflict(f"the shared config's {key!r} section is not a {kind.__name__}")
    return value


# MCP servers -----------------------------------------------------------------------------
class _Server(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)

    timeout: float | None = Field(None, gt=0, le=86400, description="Seconds per call (60).")
    disabled: bool | None = None

    def entry(self) -> dict[str, Any]:
        """What the shared config holds for it (the fields given; other keys dropped)."""
        return self.model_dump(exclude_none=True, exclude_unset=True)


class StdioServer(_Server):
    """Runs `command` on every MCP worker: refused unless the gateway allows MCP commands."""

    type: Literal["stdio"] | None = Field(None, validation_alias=AliasChoices("type", "transport"))
    command: str = Field(min_length=1, max_length=4096, pattern=NO_REF)
    args: list[Text] | None = None
    env: dict[Annotated[str, StringConstraints(pattern=ENV_NAME)], Text] | None = Field(
        None, json_schema_extra=_CLOSED
    )
    cwd: Text | None = None


class UrlServer(_Server):
    """A server reached over Streamable HTTP (`type: sse`: the older HTTP+SSE transport)."""

    type: Literal["http", "streamable-http", "streamable_http", "streamableHttp", "sse"] | None = (
        Field(None, validation_alias=AliasChoices("type", "transport"))
    )
    url: str = Field(max_length=4096, pattern=URL)
    headers: (
        dict[
            Annotated[str, StringConstraints(pattern=HEADER_NAME)],
            Annotated[str, StringConstraints(pattern=HEADER_VALUE, max_length=8192)],
        ]
        | None
    ) = Field(None, json_schema_extra=_CLOSED)


ServerName = Annotated[str, StringConstraints(pattern=ID_PATTERN)]


class McpServers(BaseModel):
    """The seed's (and mcp.json's) shape."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, strict=True)

    servers: dict[ServerName, StdioServer | UrlServer] = Field(
        alias="mcpServers", min_length=1, max_length=100, json_schema_extra=_CLOSED
    )


class McpRegistered(BaseModel):
    added: list[str]
    replaced: list[str]


class McpServerInfo(BaseModel):
    name: str
    source: Literal["shared", "worker"] = Field(
        description="shared: in the shared config (deletable here); worker: only in some "
        "worker's own file."
    )
    transport: str | None = None
    command: str | None = None
    args: list[str] | None = None
    url: str | None = None
    env: list[str] | None = Field(None, description="Names only.")
    headers: list[str] | None = Field(None, description="Names only.")
    disabled: bool = False
    state: str = Field(description="up, down, or not_served (no live worker reports it).")
    workers: int = 0
    tools: int = 0
    error: str | None = None


class McpServerList(BaseModel):
    object: Literal["list"] = "list"
    data: list[McpServerInfo]


@router.post(
    "/v1/tools/mcp", response_model=McpRegistered, responses=responses(*BODY_STATUSES, 409)
)
async def register_mcp_servers(
    body: McpServers,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> McpRegistered:
    """Add MCP servers to the shared config (a server of the same name is replaced): every MCP
    worker following it (`--shared`) connects to them. A server with a `command` runs that
    program on every such worker: 403 unless the gateway allows it (allow_mcp_commands)."""
    commands = sorted(n for n, s in body.servers.items() if isinstance(s, StdioServer))
    if commands and not state.config.allow_mcp_commands:
        raise Forbidden(
            f"stdio MCP servers ({', '.join(commands)}) run a program on every MCP worker: this "
            "gateway does not allow them (AGENTMESH_GATEWAY_ALLOW_MCP_COMMANDS=on, or "
            "gateway.allow_mcp_commands); URL servers are allowed",
            details={"reason": "mcp_commands_off", "servers": commands},
        )

    def change(doc: dict[str, Any]) -> McpRegistered:
        servers = _section(doc, "mcpServers", dict)
        out = McpRegistered(added=[], replaced=[])
        for name, server in body.servers.items():
            (out.replaced if name in servers else out.added).append(name)
            servers[name] = server.entry()
        _check_enabled(servers)
        doc["mcpServers"] = servers
        return out

    return await edit_shared(state, change)


@router.get("/v1/mcp-servers", response_model=McpServerList, responses=responses(409))
async def list_mcp_servers(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> McpServerList:
    """The shared config's MCP servers with their live state (and the servers live workers
    report from their own files). Env and header values are never answered."""
    shared = _section(await read_shared(state), "mcpServers", dict)
    catalog = await state.tools.catalog(fresh=True)
    out = []
    for name, raw in shared.items():
        entry = raw if isinstance(raw, dict) else {}
        live = catalog.servers.get(str(name))
        out.append(
            McpServerInfo(
                name=str(name),
                source="shared",
                transport=_transport(entry),
                command=_text(entry.get("command")),
                args=[str(a) for a in entry["args"]]
                if isinstance(entry.get("args"), list)
                else None,
                url=_text(entry.get("url")),
                env=_names(entry.get("env")),
                headers=_names(entry.get("headers")),
                disabled=entry.get("disabled") is True,
                state=live.state if live else "not_served",
                workers=live.workers if live else 0,
                tools=len(live.tools) if live else 0,
                error=live.error if live else None,
            )
        )
    for name, live in catalog.servers.items():
        if name not in shared:
            out.append(
                McpServerInfo(
                    name=name,
                    source="worker",
                    state=live.state,
                    workers=live.workers,
                    tools=len(live.tools),
                    error=live.error,
                )
            )
    return McpServerList(data=sorted(out, key=lambda s: s.name))


@router.delete(
    "/v1/mcp-servers/{server_name}",
    status_code=204,
    response_model=None,
    responses=responses(404, 409),
)
async def delete_mcp_server(
    server_name: str = PathParam(pattern=ID_PATTERN),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> None:
    """Remove a server from the shared config: the MCP workers following it stop serving it.
    The last one removes the section (the workers then keep theirs until restarted)."""

    def change(doc: dict[str, Any]) -> None:
        servers = _section(doc, "mcpServers", dict)
        if server_name not in servers:
            raise NotFound(
                f"no MCP server {server_name!r} in the shared config",
                details={"server": server_name},
            )
        del servers[server_name]
        if servers:
            _check_enabled(servers)
        else:
            doc.pop("mcpServers", None)

    await edit_shared(state, change)


def _check_enabled(servers: dict[str, Any]) -> None:
    if all(isinstance(s, dict) and s.get("disabled") is True for s in servers.values()):
        raise Conflict("MCP workers refuse an mcpServers section without an enabled server")


def _transport(entry: dict[str, Any]) -> str | None:
    given = entry.get("type") or entry.get("transport")
    if isinstance(given, str):
        return "sse" if given == "sse" else "stdio" if given == "stdio" else "http"
    if "command" in entry:
        return "stdio"
    return "http" if "url" in entry else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _names(value: Any) -> list[str] | None:
    return sorted(str(k) for k in value) if isinstance(value, dict) else None


# Models ----------------------------------------------------------------------------------
class ModelUpdate(BaseModel):
    """The seed's ModelConfig: one deployment of an alias for the LLM workers."""

    model_config = ConfigDict(extra="ignore", protected_namespaces=(), strict=True)

    api_protocol: Literal["openai", "anthropic", "ollama"] = Field(
        "openai", description="The provider: OpenAI-compatible, Anthropic, or Ollama's own API."
    )
    api_base: str | None = Field(
        None, max_length=4096, pattern=URL, description="Default: the provider's public URL."
    )
    model_name: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        pattern=NO_REF,
        description="The upstream's model name; default: model_id.",
    )
    api_key: str | None = Field(
        None, max_length=4096, pattern=NO_REF, description="Stored; never answered."
    )


class ModelBody(ModelUpdate):
    model_id: str = Field(pattern=MODEL_ID, description="The alias callers use.")


class ModelUpdateBody(ModelUpdate):
    model_id: str | None = Field(None, pattern=MODEL_ID, description="The path's, or absent.")


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_id: str
    api_protocol: str
    api_base: str | None = None
    model_name: str
    api_key_set: bool


def _deployment(model_id: str, body: ModelUpdate) -> tuple[dict[str, Any], ModelInfo]:
    deployment: dict[str, Any] = {
        "provider": body.api_protocol,
        "model": body.model_name or model_id,
    }
    if body.api_base is not None:
        deployment["base_url"] = body.api_base
    if body.api_key is not None:
        deployment["api_key"] = body.api_key
    info = ModelInfo(
        model_id=model_id,
        api_protocol=body.api_protocol,
        api_base=body.api_base,
        model_name=deployment["model"],
        api_key_set=body.api_key is not None,
    )
    return {"name": model_id, "deployments": [deployment]}, info


def _model_index(models: list[Any], model_id: str) -> int | None:
    return next(
        (i for i, m in enumerate(models) if isinstance(m, dict) and m.get("name") == model_id),
        None,
    )


_OPENAI_BODY = responses(*BODY_STATUSES, api="openai")


@models_router.post(
    "/v1/models",
    response_model=ModelInfo,
    status_code=201,
    responses=_OPENAI_BODY | responses(409, api="openai"),
)
async def register_model(
    body: ModelBody,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> ModelInfo:
    """Add a model alias to the shared config's `models`: the LLM workers following it serve it
    (then `GET /v1/models` lists it). 409 if the alias is there already (PUT replaces it)."""
    entry, info = _deployment(body.model_id, body)

    def change(doc: dict[str, Any]) -> ModelInfo:
        models = _section(doc, "models", list)
        if _model_index(models, body.model_id) is not None:
            raise Conflict(
                f"the shared config has a model {body.model_id!r} (PUT replaces it)",
                details={"model_id": body.model_id},
            )
        models.append(entry)
        doc["models"] = models
        return info

    return await edit_shared(state, change)


@models_router.put(
    "/v1/models/{model_id}",
    response_model=ModelInfo,
    responses=_OPENAI_BODY | responses(404, 409, api="openai"),
)
async def replace_model(
    body: ModelUpdateBody,
    model_id: str = PathParam(pattern=MODEL_ID),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> ModelInfo:
    """Replace a model's entry (all its deployments) with this one deployment."""
    if body.model_id is not None and body.model_id != model_id:
        raise InvalidMessage(
            f"the body's model_id {body.model_id!r} is not the path's {model_id!r}",
            details={"field": "model_id"},
        )
    entry, info = _deployment(model_id, body)

    def change(doc: dict[str, Any]) -> ModelInfo:
        models = _section(doc, "models", list)
        at = _model_index(models, model_id)
        if at is None:
            raise ModelNotFound(f"no model {model_id!r} in the shared config")
        models[at] = entry
        return info

    return await edit_shared(state, change)


@models_router.delete(
    "/v1/models/{model_id}",
    status_code=204,
    response_model=None,
    responses=responses(404, 409, api="openai"),
)
async def delete_model(
    model_id: str = PathParam(pattern=MODEL_ID),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> None:
    """Remove a model from the shared config: the LLM workers following it stop serving it.
    The last one removes the section (the workers then keep theirs until restarted)."""

    def change(doc: dict[str, Any]) -> None:
        models = _section(doc, "models", list)
        at = _model_index(models, model_id)
        if at is None:
            raise ModelNotFound(f"no model {model_id!r} in the shared config")
        del models[at]
        if models:
            doc["models"] = models
        else:
            doc.pop("models", None)

    await edit_shared(state, change)
