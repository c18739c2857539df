"""The service registry's records: every process of the mesh is a service instance.

Agents (SDK and WebSocket), gateways, LLM workers and MCP workers each announce one
`ServiceRecord` per instance (docs/PROTOCOL.md §5); later kinds add theirs the same way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentmesh.schemas.agent import AgentCard, PresenceStatus


class ServiceKind(StrEnum):
    """The kinds the mesh itself runs. A record may carry any other kind (a token)."""

    AGENT = "agent"
    GATEWAY = "gateway"
    LLM_WORKER = "llm-worker"
    MCP_WORKER = "mcp-worker"
    EXECUTOR = "executor"
    RUNTIME_WORKER = "runtime-worker"
    A2A_BRIDGE = "a2a-bridge"


class Serves(BaseModel):
    """What an instance serves, by field; each name is indexed (`p:by:<field>:<name>`)."""

    model_config = ConfigDict(extra="allow")  # a later kind may serve a field of its own

    agents: list[str] = Field(default_factory=list)  # agent ids
    agent_types: list[str] = Field(default_factory=list)  # their cards' agent_type (tasks by type)
    models: list[str] = Field(default_factory=list)  # model aliases
    tools: list[str] = Field(default_factory=list)  # MCP server names (with at least one tool up)

    def names(self) -> list[str]:
        """The names served (agent ids, model aliases, tool servers, a later kind's own), not
        the fields that only index them (`agent_types`)."""
        out: list[str] = []
        for field, value in self.model_dump().items():
            if field not in _INDEX_ONLY and isinstance(value, list):
                out.extend(v for v in value if isinstance(v, str))
        return out


_INDEX_ONLY = frozenset({"agent_types"})  # Serves fields that index, not name


class Load(BaseModel):
    in_flight: int = 0  # calls running in the instance now
    served: int = 0  # calls it took since it started


class ServiceRecord(BaseModel):
    """One running instance, as announced at its last heartbeat."""

    model_config = ConfigDict(extra="allow")

    kind: str
    service_id: str  # the agent id for agents; the worker's or gateway's name otherwise
    instance_id: str
    host: str | None = None
    pid: int | None = None
    version: str | None = None
    started_at: float  # Unix seconds
    last_heartbeat: float = 0.0  # from the registry's score, not stored in the record
    via: str = "nats"  # agents: "nats" (attached directly) or "gateway" (a WebSocket)
    serves: Serves = Field(default_factory=Serves)
    load: Load = Field(default_factory=Load)
    card: AgentCard | None = None  # agents only
    detail: dict[str, Any] = Field(default_factory=dict)  # kind-specific, e.g. an MCP catalog


class InvalidRecord(BaseModel):
    """A record that failed validation: listed as such, never used."""

    kind: str = "invalid"
    instance_id: str
    key: str
    error: str
    last_heartbeat: float


class ServiceEvent(BaseModel):
    """Published on `<p>.svc.<kind>.<instance_id>` when an instance comes or goes."""

    event: PresenceStatus
    kind: str
    service_id: str
    instance_id: str
    timestamp: float
    reason: str | None = None  # offline: "deregistered" or "heartbeat timeout"


class KindSummary(BaseModel):
    """The live instances of one kind, added up."""

    instances: int = 0
    in_flight: int = 0
    served: int = 0
    serves: list[str] = Field(default_factory=list)  # every name any of them serves, sorted


def summarize(records: list[ServiceRecord | InvalidRecord]) -> dict[str, KindSummary]:
    """Per kind (sorted): instance count, load, and the names served. Invalid records are
    counted under "invalid"."""
    out: dict[str, KindSummary] = {}
    names: dict[str, set[str]] = {}
    for record in records:
        summary = out.setdefault(record.kind, KindSummary())
        summary.instances += 1
        if isinstance(record, ServiceRecord):
            summary.in_flight += record.load.in_flight
            summary.served += record.load.served
            names.setdefault(record.kind, set()).update(record.serves.names())
    for kind, served in names.items():
        out[kind].serves = sorted(served)
    return dict(sorted(out.items()))
