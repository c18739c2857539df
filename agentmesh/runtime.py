"""The agent runtime's public API, in its own namespace so that its chat `Message` does not
clash with the mesh's `agentmesh.Message`:

from agentmesh.runtime import Runtime, InferenceRequest, Message, ToolConfig, ToolRegistry
"""

from agentmesh.agents.runtime import *  # noqa: F403
from agentmesh.agents.runtime import __all__  # noqa: F401
