"""The public API of the `agentmesh` facade, pinned: a change to it must change this test."""

from __future__ import annotations

import re
from pathlib import Path

import agentmesh
from agentmesh.schemas import errors


def test_all_is_the_pinned_sorted_list_of_exported_names() -> None:
    assert agentmesh.__all__ == [
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


def test_every_name_in_all_is_an_attribute_of_the_package() -> None:
    missing = [name for name in agentmesh.__all__ if not hasattr(agentmesh, name)]
    assert missing == []


def test_every_public_attribute_of_the_package_is_in_all() -> None:
    # Names defined in the facade but left out of __all__ would be public by accident.
    public = {
        name
        for name, value in vars(agentmesh).items()
        if not name.startswith("_") and not isinstance(value, type(agentmesh))
    }
    assert public - set(agentmesh.__all__) == set()


def test_every_exception_of_the_errors_module_is_exported() -> None:
    exceptions = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.MeshError)
    }
    assert exceptions - set(agentmesh.__all__) == set()


def test_every_error_the_readme_names_is_exported() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", readme))
    # The mesh's names only: the README also names the OpenAI SDK's `APIError`, for one.
    mesh_errors = {name for name in named if name in vars(errors)}
    assert {"AgentNotFound", "MeshTimeout", "ModelNotFound"} <= mesh_errors
    assert mesh_errors - set(agentmesh.__all__) == set()


def test_the_runtime_namespace_is_pinned_and_its_message_is_not_the_mesh_message() -> None:
    import agentmesh.runtime as runtime

    assert runtime.__all__ == [
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
    for name in runtime.__all__:
        assert getattr(runtime, name) is not None
    assert runtime.Message is not agentmesh.Message
    assert runtime.Message(role="user", content="hi").role == "user"
