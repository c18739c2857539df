"""Key management over HTTP for admins: the same operations as `agentmesh keys`, and the
LLM usage counted per key and model."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, WithJsonSchema

from agentmesh.broker.ratelimit import Limit
from agentmesh.gateway.auth import Principal, Scope, require
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, error_body, responses
from agentmesh.gateway.keys import DEFAULT_SCOPES, MAX_NAME_LEN, KeyRecord, KeyStore, parse_scopes
from agentmesh.gateway.llm_limits import settled
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.gateway.usage import Usage, UsageStore
from agentmesh.schemas.envelope import iso_utc
from agentmesh.schemas.errors import ErrorCode, InvalidMessage

router = APIRouter(tags=["keys"], responses=responses(*AUTH_STATUSES))

# What the store checks (400 INVALID_MESSAGE otherwise), in JSON Schema: limits in their plain
# spelling (the store also reads `2min`, `1hour`), tool parts in ASCII; blank items are skipped.
_NUMBER = r"[1-9][0-9]{0,8}(\.[0-9]{1,3})?"
LIMIT_PATTERN = rf"^\s*{_NUMBER}\s*/\s*({_NUMBER}\s*[smhd]?|[smhd])\s*$"
TOOL_PATTERN = r"^\s*([A-Za-z0-9_*-]+/[!-.0-~]+)?\s*$"
AGENT_PATTERN = r"^\s*[A-Za-z0-9_*?-]{0,128}\s*$"


def _nullable(schema: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [schema, {"type": "null"}]})


def _strings(pattern: str, max_length: int) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {"type": "string", "pattern": pattern, "maxLength": max_length},
    }


class CreateKeyRequest(BaseModel):
    # "printable": Python's str.isprintable, which no JSON Schema pattern spells; not only spaces.
    name: Annotated[
        str,
        WithJsonSchema(
            {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LEN, "format": "printable"}
        ),
    ] = Field(min_length=1, max_length=MAX_NAME_LEN)
    scopes: Annotated[
        list[str] | None,
        _nullable({"type": "array", "minItems": 1, "items": {"enum": [s.value for s in Scope]}}),
    ] = Field(default=None, description="Default: agents:read, send, connect.")
    rate_limit: Annotated[str | None, _nullable({"type": "string", "pattern": LIMIT_PATTERN})] = (
        Field(default=None, examples=["100/60s"])
    )
    token_limit: Annotated[str | None, _nullable({"type": "string", "pattern": LIMIT_PATTERN})] = (
        Field(
            default=None,
            examples=["10000/60s"],
            description="LLM tokens per period: each call reserves an estimate, corrected after.",
        )
    )
    tools: Annotated[list[str] | None, _nullable(_strings(TOOL_PATTERN, 256))] = Field(
        default=None,
        description="MCP tools the key may list and call, as server/tool patterns with * "
        "wildcards (e.g. 'time/*'); omitted: every tool",
        examples=[["time/*", "github/get_issue"]],
    )
    agents: Annotated[list[str] | None, _nullable(_strings(AGENT_PATTERN, 128))] = Field(
        default=None,
        description="Agent ids the key may attach as (WebSocket) and send as (from_agent_id), "
        "as patterns with * and ? wildcards (e.g. 'bot-*'); omitted: none (admin keys: any)",
        examples=[["bot-*", "support"]],
    )
    to_agents: Annotated[list[str] | None, _nullable(_strings(AGENT_PATTERN, 128))] = Field(
        default=None,
        description="Agent ids the key may call (/gateway/send, tasks, WebSocket sends, "
        "/v1/infer agent_id, A2A), as patterns with * and ? wildcards (e.g. 'a*'); omitted: "
        "every agent",
        examples=[["a*", "support"]],
    )


class KeyInfo(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    rate_limit: str | None
    token_limit: str | None = None
    tools: list[str] | None = Field(
        default=None, description="server/tool patterns of the MCP tools allowed; null: every tool."
    )
    agents: list[str] = Field(
        default_factory=list, description="agent id patterns the key may attach and send as."
    )
    to_agents: list[str] | None = Field(
        default=None, description="agent id patterns of the agents it may call; null: every agent."
    )
    created_at: str

    @classmethod
    def of(cls, record: KeyRecord) -> KeyInfo:
        return cls(
            key_id=record.key_id,
            name=record.name,
            scopes=sorted(s.value for s in record.scopes),
            rate_limit=None if record.rate_limit is None else str(record.rate_limit),
            token_limit=None if record.token_limit is None else str(record.token_limit),
            tools=None if record.tools is None else list(record.tools),
            agents=list(record.agents),
            to_agents=None if record.to_agents is None else list(record.to_agents),
            created_at=iso_utc(record.created_at),
        )


class CreatedKey(KeyInfo):
    key: str = Field(description="The API key. Shown in this reply only; store it now.")


class KeysResponse(BaseModel):
    keys: list[KeyInfo]


def _store(state: GatewayState) -> KeyStore:
    return KeyStore(state.durable, state.bus.subjects)


@router.post(
    "/gateway/keys",
    response_model=CreatedKey,
    status_code=201,
    responses=responses(*BODY_STATUSES),
)
async def create_key(
    body: CreateKeyRequest,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> CreatedKey:
    """Create a key; the reply is the only time the key itself is shown."""
    scopes = DEFAULT_SCOPES if body.scopes is None else parse_scopes(body.scopes)
    key, record = await _store(state).create(
        body.name,
        scopes=scopes,
        rate_limit=_limit(body.rate_limit, "rate_limit"),
        token_limit=_limit(body.token_limit, "token_limit"),
        tools=body.tools,
        agents=body.agents,
        to_agents=body.to_agents,
    )
    return CreatedKey(**KeyInfo.of(record).model_dump(), key=key)


def _limit(text: str | None, field: str) -> Limit | None:
    if text is None:
        return None
    try:
        return Limit.parse(text)
    except ValueError as exc:
        message = str(exc).replace("rate limit", field.replace("_", " "), 1)
        raise InvalidMessage(message, details={"field": field}) from None


@router.get("/gateway/keys", response_model=KeysResponse)
async def list_keys(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> KeysResponse:
    """Every key: ids, names, scopes and limits; never keys or hashes."""
    return KeysResponse(keys=[KeyInfo.of(r) for r in await _store(state).list()])


@router.delete(
    "/gateway/keys/{key_id}", status_code=204, response_model=None, responses=responses(404)
)
async def revoke_key(
    key_id: str,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> JSONResponse | None:
    """Revoke a key; every replica refuses it from its next request."""
    if not await _store(state).revoke(key_id):
        return JSONResponse(error_body(ErrorCode.NOT_FOUND, "no key with that id"), 404)
    return None


class UsageRow(BaseModel):
    key_id: str = Field(description='The key\'s id, or "anonymous" for calls without a key.')
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    errors: int

    @classmethod
    def of(cls, usage: Usage) -> UsageRow:
        return cls(**dataclasses.asdict(usage))


class UsageResponse(BaseModel):
    usage: list[UsageRow]


@router.get("/gateway/usage", response_model=UsageResponse)
async def usage(
    key_id: str | None = Query(default=None, description="Only this key's counters."),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.ADMIN)),
) -> UsageResponse:
    """LLM usage per key and model alias, counted by every replica: requests, tokens, errors."""
    await settled()  # this replica's own calls that ended just now are counted too
    rows = await UsageStore(state.durable, state.redis, state.bus.subjects).read(key_id)
    return UsageResponse(usage=[UsageRow.of(r) for r in rows])
