"""Seed examples 2 (`example_mcp_openai.py`, `example_mcp_ollama.py`): MCP tools with model
inference, and a direct tool call. The MCP servers are served by the mesh's MCP workers (`up`
runs the time server), so `load_config` only checks they are there. `--stream` streams."""

import os
import sys

from agentmesh.runtime import (
    InferenceRequest,
    MCPClientManager,
    ModelConfig,
    ModelRegistry,
    Runtime,
    ToolRegistry,
)


def main() -> None:
    mcp = MCPClientManager()
    mcp.load_config({"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time"]}}})
    print("direct:", mcp.call_tool("time", "get_current_time", {"timezone": "UTC"})["timezone"])
    tool_registry = ToolRegistry()
    all_tools = []
    for server_name in ["time"]:
        tools = mcp.get_tools(server_name)
        for t in tools:
            tool_registry.register(t)
        all_tools.extend(tools)
    model_registry = ModelRegistry()
    model_registry.register(
        ModelConfig(model_id="my-model", model_name=os.environ.get("MODEL", "echo"))
    )
    runtime = Runtime(model_registry=model_registry, tool_registry=tool_registry, mcp_manager=mcp)
    request = InferenceRequest(
        model_id="my-model", tool_ids=[t.tool_id for t in all_tools], text="What time is it now?"
    )
    try:
        if "--stream" in sys.argv:
            for msg in runtime.infer_stream(request):
                if msg.content:
                    print(msg.content, end="", flush=True)
            print()
        else:
            print(runtime.infer(request).messages[-1].content)
    finally:
        runtime.close()
        mcp.close()


if __name__ == "__main__":
    main()
