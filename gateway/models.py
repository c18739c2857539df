"""The gateway's HTTP bodies, field for field as in the gateway API seed (extensions additive)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from agentmesh.broker.subjects import ID_PATTERN
from agentmesh.schemas.agent import Presence
from agentmesh.schemas.envelope import Message, Part, iso_utc
from agentmesh.schemas.service import InvalidRecord, KindSummary, ServiceRecord


class AgentInfo(BaseModel):
    """An online agent (`GET /gateway/agents` items, `GET /gateway/agents/{agent_id}`)."""

    agent_id: str
    agent_name: str | None = None
    agent_type: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    description: str | None = None
    version: str | None = None
    owner: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    status: str = "online"
    last_heartbeat: str
    connected_at: str
    instances: int = 1  # extension: how many replicas serve this id

    @classmethod
    def of(cls, p: Presence) -> AgentInfo:
        return cls(
            **p.model_dump(
                include={
                    "agent_id",
                    "agent_name",
                    "agent_type",
                    "capabilities",
                    "description",
                    "version",
                    "owner",
                    "metadata",
                }
            ),
            status=p.status.value,
            last_heartbeat=iso_utc(p.last_heartbeat),
            connected_at=iso_utc(p.connected_at),
            instances=len(p.instances),
        )


class AgentsResponse(BaseModel):
    agents: list[AgentInfo]


class SendRequest(BaseModel):
    """`POST /gateway/send`. `wait` and `timeout` are extensions."""

    # The id rule is documented, not enforced here: the route answers 400 INVALID_ID.
    from_agent_id: str | None = Field(None, json_schema_extra={"pattern": ID_PATTERN})
    to_agent_id: str = Field(json_schema_extra={"pattern": ID_PATTERN})
    conversation_id: str | None = None
    content: list[Part] = Field(min_length=1)
    metadata: dict[str, Any] = Field(default_factory=dict)
    wait: bool = Field(
        False,
        strict=True,  # `0` or `"no"` is not a boolean: refused, not taken for "store a task"
        description="Call the agent directly and return its result. Without it the message "
        "becomes a durable task, answered once stored.",
    )
    timeout: float | None = Field(
        None, gt=0, le=3600, description="Seconds to wait, with `wait` (default 30)."
    )


class ResultBody(BaseModel):
    """The agent's reply, shaped like the seed's WebSocket `result` frame."""

    conversation_id: str | None = None
    success: bool = True
    result: str | None = Field(None, description="The reply's text parts joined.")
    content: list[Part] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    from_agent_id: str | None = None
    message_id: str | None = None

    @classmethod
    def of(cls, reply: Message) -> ResultBody:
        return cls(
            conversation_id=reply.conversation_id,
            result=reply.text,
            content=reply.content,
            metadata=reply.metadata,
            from_agent_id=reply.from_agent_id,
            message_id=reply.message_id,
        )


class SendResponse(BaseModel):
    message_id: str
    status: str = Field(
        description='"delivered": stored as a durable task (`task_id`) that an executor delivers; '
        '"completed" when waited for'
    )
    timestamp: str
    result: ResultBody | None = None
    task_id: str | None = Field(
        None, description="Without `wait`: the task that delivers the message (/v1/tasks)."
    )


class StatusResponse(BaseModel):
    status: str = "running"
    version: str
    uptime_seconds: int
    connected_agents: int = Field(description="Agents online in the whole mesh.")
    total_messages: int = Field(description="Requests served in the whole mesh.")
    services: dict[str, KindSummary] = Field(
        default_factory=dict,
        description="Live service instances of the mesh by kind (agent, gateway, llm-worker, "
        "mcp-worker, ...): how many, their load, and what they serve. An extension of the seed.",
    )


class ServicesResponse(BaseModel):
    """`GET /gateway/services`: every live instance of every kind; invalid records included."""

    services: list[ServiceRecord | InvalidRecord]
