"""Seed example `example_vlm_tool_call.py`: a vision model reads an image, understands the
instruction in it, and calls the built-in bash and fetch tools to carry it out. bash is off
unless enabled (here, for this runtime only; it runs in a per-session directory)."""

import base64
import os
import sys
from pathlib import Path

from agentmesh.runtime import (
    InferenceRequest,
    Message,
    ModelConfig,
    ModelRegistry,
    Runtime,
    ToolRegistry,
)


def main() -> None:
    image = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    png = (
        image.read_bytes()
        if image
        else base64.b64decode(
            "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
        )
    )
    model_registry = ModelRegistry()
    model = os.environ.get("MODEL", "echo")
    model_registry.register(ModelConfig(model_id="qwen2.5-vl", model_name=model))
    runtime = Runtime(model_registry=model_registry, tool_registry=ToolRegistry(), enable_bash=True)
    try:
        result = runtime.infer(
            InferenceRequest(
                model_id="qwen2.5-vl",
                tool_ids=["bash", "fetch"],
                messages=[
                    Message(
                        role="user",
                        content="Read the instruction in the image and carry it out.",
                        images=[base64.b64encode(png).decode()],
                    )
                ],
                session_id="new",
            )
        )
        for message in result.messages[1:]:
            for call in message.tool_calls:
                print(f"called {call.name}: {call.arguments}")
        print(result.messages[-1].content)
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
