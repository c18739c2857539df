"""AgentMesh: a distributed message-bus agent mesh on NATS and Redis.

from agentmesh import Agent, MeshClient
"""

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.settings import Settings
from agentmesh.gateway.client import GatewayClient
from agentmesh.schemas.agent import AgentCard, Presence
from agentmesh.schemas.envelope import Chunk, DataPart, FilePart, ImagePart, Message, TextPart
from agentmesh.schemas.errors import (
    AgentNotFound,
    Cancelled,
    ConnectionFailed,
    ErrorCode,
    Forbidden,
    InvalidId,
    InvalidMessage,
    MeshError,
    MeshTimeout,
    ModelNotFound,
    NoResponders,
    PayloadTooLarge,
    RateLimited,
    RemoteError,
    ToolError,
    ToolNotFound,
    Unauthorized,
    Unavailable,
)
from agentmesh.schemas.tools import ToolResult
from agentmesh.schemas.version import __version__

__all__ = [
    "Agent",
    "AgentCard",
    "AgentNotFound",
    "Cancelled",
    "Chunk",
    "ConnectionFailed",
    "Context",
    "DataPart",
    "ErrorCode",
    "FilePart",
    "Forbidden",
    "GatewayClient",
    "ImagePart",
    "InvalidId",
    "InvalidMessage",
    "MeshClient",
    "MeshError",
    "MeshTimeout",
    "Message",
    "ModelNotFound",
    "NoResponders",
    "PayloadTooLarge",
    "Presence",
    "RateLimited",
    "RemoteError",
    "Settings",
    "TextPart",
    "ToolError",
    "ToolNotFound",
    "ToolResult",
    "Unauthorized",
    "Unavailable",
    "__version__",
]
