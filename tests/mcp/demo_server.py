"""A small MCP server for the tests and the bench, built with the `mcp` SDK's `MCPServer`.

Run over stdio (`python tests/mcp/demo_server.py`), or import `create_server()` and serve its
`streamable_http_app()` / `sse_app()` in process. Tools:

- `echo(text)` and `add(a, b)`: plain results (text, structured).
- `pid()`: the server's process id, so a test can kill exactly this process.
- `sleep(seconds)`: a slow call, for timeouts and concurrency.
- `fail(message)`: an `isError` result.
- `add_tool(name)`: registers a tool `name` at run time and announces the change.
"""

from __future__ import annotations

import asyncio
import os

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel


class Sum(BaseModel):
    sum: int


def create_server() -> MCPServer:
    server = MCPServer("demo", version="1.0", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    @server.tool()
    def add(a: int, b: int) -> Sum:
        """Add two integers."""
        return Sum(sum=a + b)

    @server.tool()
    def pid() -> int:
        """This server's process id."""
        return os.getpid()

    @server.tool()
    async def sleep(seconds: float) -> str:
        """Wait, then answer."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    def fail(message: str) -> str:
        """Always fails with the message, as a tool error (isError)."""
        raise ToolError(message)

    @server.tool()
    async def add_tool(name: str, ctx: Context) -> str:
        """Register a new tool `name` (it echoes) and tell clients the list changed."""

        def added(text: str) -> str:
            return f"{name}: {text}"

        server.add_tool(added, name=name, description=f"Added at run time as {name}.")
        await ctx.notify_tools_changed()
        return f"added {name}"

    return server


if __name__ == "__main__":
    asyncio.run(create_server().run_stdio_async())
