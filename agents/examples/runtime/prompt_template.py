"""Seed example 4: a prompt template with {{placeholder}} variables, resolved at run time."""

import os

from agentmesh.runtime import (
    InferenceRequest,
    Message,
    ModelConfig,
    ModelRegistry,
    PromptTemplateManager,
    Runtime,
    ToolRegistry,
)


def main() -> None:
    pt_manager = PromptTemplateManager()
    pt_manager.create(
        name="summarize",
        content="Please summarize the following text in {{language}}:\n\n{{text}}",
    )
    model_registry = ModelRegistry()
    model_registry.register(
        ModelConfig(model_id="qwen3-14b", model_name=os.environ.get("MODEL", "echo"))
    )
    runtime = Runtime(
        model_registry=model_registry,
        tool_registry=ToolRegistry(),
        prompt_template_manager=pt_manager,
    )
    try:
        result = runtime.infer(
            InferenceRequest(
                model_id="qwen3-14b",
                messages=[
                    Message(
                        role="user",
                        prompt_template="summarize",
                        arguments={"language": "English", "text": "AgentMesh joins agents."},
                    )
                ],
            )
        )
        print(result.messages[-1].content)
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
