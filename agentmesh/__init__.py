"""AgentMesh: a distributed message-bus agent mesh on NATS and Redis.

from agentmesh import Agent, MeshClient
"""

from agents.agent import Agent
from agents.client import MeshClient
from agents.context import Context
from broker.errors import (
    AgentNotFound,
    Cancelled,
    ConnectionFailed,
    InvalidId,
    InvalidMessage,
    MeshError,
    MeshTimeout,
    PayloadTooLarge,
    RateLimited,
    RemoteError,
    ToolError,
    ToolNotFound,
    Unauthorized,
    Unavailable,
)
from broker.settings import Settings
from gateway.client import GatewayClient
from schemas.agent import AgentCard, Presence
from schemas.envelope import Chunk, DataPart, FilePart, ImagePart, Message, TextPart
from schemas.errors import ErrorCode
from schemas.tools import ToolResult

__version__ = "0.1.0"

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
    "GatewayClient",
    "ImagePart",
    "InvalidId",
    "InvalidMessage",
    "MeshClient",
    "MeshError",
    "MeshTimeout",
    "Message",
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
