"""The agent runtime (the Agent Service seed's API) as a client of the mesh: models are LLM
workers, MCP tools are MCP workers, sub-agents are mesh agents or any runtime worker.

from agentmesh.runtime import Runtime, InferenceRequest, Message, ToolConfig, ToolRegistry
"""

from agentmesh.agents.runtime.builtins import Fences
from agentmesh.agents.runtime.mcp_manager import MCPClientManager
from agentmesh.agents.runtime.registry import (
    ModelConfig,
    ModelRegistry,
    ToolRegistry,
    function_tool,
)
from agentmesh.agents.runtime.runtime import Runtime
from agentmesh.agents.runtime.skills import Skill, SkillManager
from agentmesh.agents.runtime.templates import PromptTemplateManager
from agentmesh.agents.runtime.toolset import mcp_config
from agentmesh.schemas.runtime import (
    AgentDefinition,
    EventType,
    InferenceRequest,
    InferenceResult,
    Message,
    PromptTemplate,
    SessionInfo,
    StreamEvent,
    ToolCall,
    ToolConfig,
    ToolType,
    Usage,
)

__all__ = [
    "AgentDefinition",
    "EventType",
    "Fences",
    "InferenceRequest",
    "InferenceResult",
    "MCPClientManager",
    "Message",
    "ModelConfig",
    "ModelRegistry",
    "PromptTemplate",
    "PromptTemplateManager",
    "Runtime",
    "SessionInfo",
    "Skill",
    "SkillManager",
    "StreamEvent",
    "ToolCall",
    "ToolConfig",
    "ToolRegistry",
    "ToolType",
    "Usage",
    "function_tool",
    "mcp_config",
]
