"""Seed example 1 (`example_function_register.py`): a search function as a function tool; the
model calls it to answer. (The seed searches SearXNG; this one answers from a small table, so it
runs offline.)"""

import os

from agentmesh.runtime import (
    InferenceRequest,
    Message,
    ModelConfig,
    ModelRegistry,
    Runtime,
    ToolConfig,
    ToolRegistry,
)

FACTS = {"python": "Python 3.14 is the latest release.", "nats": "NATS 2.11 is current."}


def my_search_function(query: str) -> dict:
    hits = [text for key, text in FACTS.items() if key in query.lower()]
    return {"query": query, "results": hits or ["no results"]}


def main() -> None:
    model_registry = ModelRegistry()
    model_registry.register(
        ModelConfig(model_id="qwen3-14b", model_name=os.environ.get("MODEL", "echo"))
    )
    tool_registry = ToolRegistry()
    tool_registry.register(
        ToolConfig(
            tool_id="web_search",
            tool_type="function",
            name="web_search",
            description="Search the internet for information.",
            parameters={
                "type": "object",
                "properties": {"query": {"type": "string", "description": "Search query"}},
                "required": ["query"],
            },
        ),
        callable_fn=my_search_function,
    )
    runtime = Runtime(model_registry=model_registry, tool_registry=tool_registry)
    try:
        result = runtime.infer(
            InferenceRequest(
                model_id="qwen3-14b",
                tool_ids=["web_search"],
                messages=[Message(role="user", content="What is the latest Python version?")],
            )
        )
        print(result.messages[-1].content)
    finally:
        runtime.close()


if __name__ == "__main__":
    main()
