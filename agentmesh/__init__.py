"""AgentMesh: a distributed message-bus agent mesh on NATS and Redis.

from agentmesh import Agent, MeshClient
"""

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.settings import Settings
from agentmesh.gateway.client import GatewayClient
from agentmesh.gateway.management_client import ManagementClient
from agentmesh.schemas.agent import AgentCard, Presence
from agentmesh.schemas.envelope import Chunk, DataPart, FilePart, ImagePart, Message, TextPart
from agentmesh.schemas.errors import (
    AgentNotFound,
    Cancelled,
    Conflict,
    ConnectionFailed,
    ErrorCode,
    Forbidden,
    InvalidId,
    InvalidMessage,
    MeshError,
    MeshTimeout,
    ModelNotFound,
    NoResponders,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RemoteError,
    ToolError,
    ToolNotFound,
    Unauthorized,
    Unavailable,
)
from agentmesh.schemas.task import TaskRecord, TaskStatus, Trace, needs_input
from agentmesh.schemas.tools import ToolResult
from agentmesh.schemas.version import __version__

__all__ = [
    "Agent",
    "AgentCard",
    "AgentNotFound",
    "Cancelled",
    "Chunk",
    "Conflict",
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
    "ManagementClient",
    "MeshClient",
    "MeshError",
    "MeshTimeout",
    "Message",
    "ModelNotFound",
    "NoResponders",
    "NotFound",
    "PayloadTooLarge",
    "Presence",
    "RateLimited",
    "RemoteError",
    "Settings",
    "TaskRecord",
    "TaskStatus",
    "TextPart",
    "ToolError",
    "ToolNotFound",
    "ToolResult",
    "Trace",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "needs_input",
]
