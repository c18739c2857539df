"""The wire contract: pydantic models and the msgpack codec. No I/O."""

from agentmesh.schemas.agent import (
    AgentCard,
    InstanceInfo,
    Owner,
    Presence,
    PresenceEvent,
    PresenceStatus,
)
from agentmesh.schemas.envelope import (
    Chunk,
    DataPart,
    FilePart,
    ImagePart,
    Message,
    Part,
    TextPart,
    new_id,
)
from agentmesh.schemas.errors import ErrorCode, ErrorInfo

__all__ = [
    "AgentCard",
    "Chunk",
    "DataPart",
    "ErrorCode",
    "ErrorInfo",
    "FilePart",
    "ImagePart",
    "InstanceInfo",
    "Message",
    "Owner",
    "Part",
    "Presence",
    "PresenceEvent",
    "PresenceStatus",
    "TextPart",
    "new_id",
]
