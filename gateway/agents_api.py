"""The agent API of the gateway seed: agents, send, status; plus health and readiness."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Path
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from agentmesh.agents.client import calling_agent, encode_request, not_online
from agentmesh.broker.subjects import ID_PATTERN, validate_id
from agentmesh.gateway.auth import Principal, Scope, require, stamp_sender
from agentmesh.gateway.errors import AUTH_STATUSES, BODY_STATUSES, error_body, responses
from agentmesh.gateway.models import (
    AgentInfo,
    AgentsResponse,
    ResultBody,
    SendRequest,
    SendResponse,
    ServicesResponse,
    StatusResponse,
)
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.schemas.codec import decode
from agentmesh.schemas.envelope import Message, iso_utc, new_id
from agentmesh.schemas.errors import ErrorCode
from agentmesh.schemas.service import summarize
from agentmesh.schemas.task import TaskSpec
from agentmesh.schemas.version import __version__

router = APIRouter()


@router.get(
    "/gateway/agents",
    response_model=AgentsResponse,
    responses=responses(*AUTH_STATUSES),
    tags=["agents"],
)
async def list_agents(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> AgentsResponse:
    """All online agents of the mesh (SDK and WebSocket agents alike)."""
    online = await state.registry.agents()
    return AgentsResponse(
        agents=[AgentInfo.of(p) for p in sorted(online, key=lambda p: p.agent_id)]
    )


@router.get(
    "/gateway/agents/{agent_id}",
    response_model=AgentInfo,
    responses=responses(*AUTH_STATUSES, 400, 404),
    tags=["agents"],
)
async def get_agent(
    # Documented, not enforced here: validate_id answers 400 INVALID_ID, not FastAPI's 422.
    agent_id: str = Path(json_schema_extra={"pattern": ID_PATTERN}),
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> AgentInfo:
    found = await state.registry.agent(validate_id(agent_id))
    if found is None:
        raise not_online(agent_id)
    return AgentInfo.of(found)


@router.post(
    "/gateway/send",
    response_model=SendResponse,
    response_model_exclude_none=True,
    responses=responses(*AUTH_STATUSES, *BODY_STATUSES, 404, 502, 503, 504),
    tags=["messages"],
)
async def send_message(
    body: SendRequest,
    state: GatewayState = Depends(get_state),
    principal: Principal = Depends(require(Scope.SEND)),
) -> SendResponse:
    """Send a message to an agent. Without `wait` it becomes a durable task: the answer (with
    `task_id`) comes once the task is stored, also for an agent that is offline now, and an
    executor delivers it (retrying if an instance dies). With `wait`, a direct call: the answer
    carries the agent's result.

    With auth on, `from_agent_id` must match the key's agent patterns, and the message's
    `metadata.sender_key` is set to the key's id (whatever the body said)."""
    subject = state.bus.subjects.agent(body.to_agent_id)
    principal.check_reach(body.to_agent_id)  # the key's to_agents patterns (403)
    if body.from_agent_id is not None:
        validate_id(body.from_agent_id, what="from_agent_id")
        principal.check_act_as(body.from_agent_id, what="send as")
    message = Message(
        message_id=new_id(),
        from_agent_id=body.from_agent_id,
        to_agent_id=body.to_agent_id,
        conversation_id=body.conversation_id,
        content=body.content,
        metadata=stamp_sender(body.metadata, principal),
    )
    if not body.wait:
        # "delivered" is the seed's word; here it means stored: the executor delivers it.
        spec = TaskSpec(
            agent_id=body.to_agent_id, input=message, metadata=stamp_sender({}, principal)
        )
        ref = await state.tasks.submit(spec)
        return SendResponse(
            message_id=message.message_id,
            status="delivered",
            timestamp=iso_utc(time.time()),
            task_id=ref.task_id,
        )
    data = encode_request(
        message,
        sender=body.from_agent_id,
        target=body.to_agent_id,
        conversation_id=body.conversation_id,
        metadata=None,
    )
    with calling_agent(body.to_agent_id):
        frame = await state.bus.request(subject, data, timeout=body.timeout)
    return SendResponse(
        message_id=message.message_id,
        status="completed",
        timestamp=iso_utc(time.time()),
        result=ResultBody.of(decode(frame.data, Message)),
    )


@router.get(
    "/gateway/status",
    response_model=StatusResponse,
    responses=responses(*AUTH_STATUSES),
    tags=["status"],
)
async def status(
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> StatusResponse:
    """The seed's status fields, plus the mesh's services by kind."""
    return StatusResponse(
        version=__version__,
        uptime_seconds=int(time.time() - state.started_at),
        connected_agents=await state.registry.agent_count(),
        total_messages=await state.registry.messages(),
        services=summarize(await state.registry.instances()),
    )


@router.get(
    "/gateway/services",
    response_model=ServicesResponse,
    response_model_exclude_none=True,
    responses=responses(*AUTH_STATUSES),
    tags=["status"],
)
async def services(
    kind: str | None = None,
    state: GatewayState = Depends(get_state),
    _: Principal = Depends(require(Scope.AGENTS_READ)),
) -> ServicesResponse:
    """Every live service instance of the mesh (or of one `kind`), oldest first."""
    return ServicesResponse(services=await state.registry.instances(kind))


@router.get("/healthz", tags=["status"])
async def healthz() -> dict[str, str]:
    """The process is up (no dependencies checked)."""
    return {"status": "ok"}


@router.get("/readyz", responses=responses(503), tags=["status"])
async def readyz(state: GatewayState = Depends(get_state)) -> JSONResponse:
    """Ready when both NATS and Redis answer."""
    checks = {"nats": state.bus.nc.is_connected}
    try:
        checks["redis"] = bool(await state.redis.ping())
    except (RedisError, OSError):
        checks["redis"] = False
    if all(checks.values()):
        return JSONResponse({"status": "ready", **checks})
    down = ", ".join(name for name, ok in checks.items() if not ok)
    body = error_body(ErrorCode.UNAVAILABLE, f"not ready: {down} unreachable")
    return JSONResponse({**body, **checks}, status_code=503)
