"""Seed example 5 (`example_multi_agents.py`): a PlanAgent delegates to a MainAgent through the
built-in `delegate` tool; the sub-agent gets a subset of the parent's tools (listed for it as a
Markdown table), and its output streams into the parent's stream, tagged with its path."""

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
    model = os.environ.get("MODEL", "echo")
    model_registry = ModelRegistry()
    model_registry.register(ModelConfig(model_id="qwen3-14b", model_name=model))
    templates = PromptTemplateManager()
    templates.create(
        name="plan",
        content="You are PlanAgent. Split the task and delegate the work to MainAgent: {{task}}",
    )
    runtime = Runtime(
        model_registry=model_registry,
        tool_registry=ToolRegistry(),
        prompt_template_manager=templates,
    )
    speaker = None
    try:
        for event in runtime.infer_stream(
            InferenceRequest(
                model_id="qwen3-14b",
                tool_ids=["delegate", "time_get_current_time"],  # delegate + other tools
                messages=[
                    Message(
                        role="user",
                        prompt_template="plan",
                        arguments={"task": "Report the current UTC time."},
                    )
                ],
            )
        ):
            if event.content:
                where = "/".join(event.path) or "plan"  # a sub-agent's path: its delegate call
                if where != speaker:
                    print(f"\n[{where}] ", end="")
                    speaker = where
                print(event.content, end="", flush=True)
        print()
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
