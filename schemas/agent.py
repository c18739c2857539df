"""The Agent Card (identity and capabilities) and the presence record built from it."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Owner(BaseModel):
    model_config = ConfigDict(extra="allow")

    user_id: str | None = None
    device_id: str | None = None


class AgentCard(BaseModel):
    """An agent's identity, as in the gateway API seed (fields kept verbatim)."""

    model_config = ConfigDict(extra="ignore")

    agent_id: str
    agent_name: str | None = None
    agent_type: str | None = None
    capabilities: list[str] = Field(default_factory=list)
    description: str | None = None
    version: str | None = None
    owner: Owner | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class PresenceStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class InstanceInfo(BaseModel):
    """One running process serving an agent id."""

    instance_id: str
    connected_at: float  # Unix seconds
    last_heartbeat: float
    host: str | None = None
    pid: int | None = None
    via: str = "nats"  # how it is attached: "nats" (SDK) or "gateway" (WebSocket)


class Presence(AgentCard):
    """What the registry knows of an online agent: its card plus liveness."""

    status: PresenceStatus = PresenceStatus.ONLINE
    last_heartbeat: float
    connected_at: float
    instances: list[InstanceInfo] = Field(default_factory=list)


class PresenceEvent(BaseModel):
    """Published on `<prefix>.presence.<agent_id>` when an instance comes or goes."""

    event: PresenceStatus
    agent_id: str
    instance_id: str
    timestamp: float
    reason: str | None = None  # "deregistered" or "heartbeat timeout" for offline events
