"""Direct tool calls from Python: `mesh.tools.call(...)`, `ctx.tools.call(...)` in an agent, and
the catalog (`mesh.tools.list()`)."""

from __future__ import annotations

import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.errors import InvalidId, InvalidMessage, ToolNotFound
from tests.mcp.fixtures import DEMO_STDIO, TIME


async def test_mesh_tools_call_and_list(start_mcp_worker, mesh):
    await start_mcp_worker({"time": TIME, "demo": DEMO_STDIO})
    result = await mesh.tools.call("time", "get_current_time", {"timezone": "Asia/Tokyo"})
    assert not result.is_error
    assert result.json()["timezone"] == "Asia/Tokyo"
    assert '"Asia/Tokyo"' in result.text

    echoed = await mesh.tools.call("demo", "echo", {"text": "hello"})
    assert echoed.text == "hello"
    assert echoed.json() == {"result": "hello"}  # MCPServer wraps a plain return value

    tools = await mesh.tools.list()
    names = {(t.server, t.name) for t in tools}
    assert {("time", "get_current_time"), ("time", "convert_time"), ("demo", "add")} <= names
    current = next(t for t in tools if t.name == "get_current_time")
    assert current.federated_name == "time_get_current_time"
    assert current.tool["inputSchema"]["required"] == ["timezone"]
    catalog = await mesh.tools.catalog()
    assert catalog.servers["time"].state == "up" and catalog.servers["time"].workers == 1


async def test_bad_calls_raise_clear_errors(start_mcp_worker, mesh):
    await start_mcp_worker({"demo": DEMO_STDIO})
    with pytest.raises(ToolNotFound, match="no MCP worker serves 'elsewhere'"):
        await mesh.tools.call("elsewhere", "x")
    with pytest.raises(ToolNotFound, match="no tool 'missing'"):
        await mesh.tools.call("demo", "missing")
    with pytest.raises(InvalidId):
        await mesh.tools.call("demo.>", "echo")
    with pytest.raises(InvalidMessage):
        await mesh.tools.call("demo", "echo", ["not", "a", "dict"])  # type: ignore[arg-type]
    failed = await mesh.tools.call("demo", "fail", {"message": "nope"})
    assert failed.is_error and "nope" in failed.text


async def test_an_agent_calls_a_tool_through_its_context(start_mcp_worker, start_agent, mesh):
    await start_mcp_worker({"demo": DEMO_STDIO})
    agent = Agent("adder")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        result = await ctx.tools.call("demo", "add", {"a": 40, "b": 2})
        return f"sum={result.json()['sum']}"

    await start_agent(agent)
    reply = await mesh.ask("adder", "add please")
    assert reply.text == "sum=42"
