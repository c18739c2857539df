"""The agent SDK: `Agent`, the handler `Context`, and `MeshClient` for callers."""

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context

__all__ = ["Agent", "Context", "MeshClient"]
