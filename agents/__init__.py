"""The agent SDK: `Agent`, the handler `Context`, and `MeshClient` for callers."""

from agents.agent import Agent
from agents.client import MeshClient
from agents.context import Context

__all__ = ["Agent", "Context", "MeshClient"]
