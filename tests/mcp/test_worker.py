"""The MCP worker over real MCP servers: mcp-server-time over stdio, the demo server over
Streamable HTTP and SSE; tool calls over the bus with the raw request shape."""

from __future__ import annotations

import pytest

from agentmesh.broker.bus import Bus
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import InvalidMessage, NoResponders, ToolError, ToolNotFound
from tests.mcp.fixtures import DEMO_STDIO, TIME, DemoHTTP


async def call(bus: Bus, server: str, body: object, timeout: float = 10) -> dict:
    frame = await bus.request(bus.subjects.tool(server), pack(body), timeout=timeout)
    return unpack(frame.data)


async def test_stdio_time_server_tools_are_called_over_the_bus(start_mcp_worker, mesh):
    worker = await start_mcp_worker({"time": TIME})
    names = {t["name"] for t in worker.upstreams["time"].tools}
    assert names == {"get_current_time", "convert_time"}
    result = await call(
        mesh.bus, "time", {"tool": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}
    )
    assert result["isError"] is False
    assert result["structuredContent"]["timezone"] == "Europe/Paris"


async def test_http_and_sse_servers(start_mcp_worker, demo_http, mesh):
    await start_mcp_worker(
        {"web": {"url": demo_http.url}, "old": {"url": demo_http.sse_url, "type": "sse"}}
    )
    for server in ("web", "old"):
        result = await call(mesh.bus, server, {"tool": "add", "arguments": {"a": 2, "b": 3}})
        assert result["structuredContent"] == {"sum": 5}


async def test_remote_headers_are_sent_and_a_refused_server_stays_down(
    start_mcp_worker, mesh, monkeypatch
):
    monkeypatch.setenv("DEMO_TOKEN", "s3cret")  # mcp.json's ${VAR} expansion
    server = await DemoHTTP(token="s3cret").start()
    try:
        worker = await start_mcp_worker(
            {
                "keyed": {"url": server.url, "headers": {"Authorization": "Bearer ${DEMO_TOKEN}"}},
                "keyless": {"url": server.url},
            },
            wait=False,
        )
        keyed, keyless = worker.upstreams["keyed"], worker.upstreams["keyless"]
        await worker.wait_for(lambda: keyed.state == "up" and keyless.state == "down", 20)
        assert "401" in (keyless.error or "")
        result = await call(mesh.bus, "keyed", {"tool": "echo", "arguments": {"text": "in"}})
        assert result["content"][0]["text"] == "in"
        catalog = await mesh.tools.catalog()
        assert catalog.servers["keyless"].state == "down"
        assert "401" in (catalog.servers["keyless"].error or "")
    finally:
        await server.stop()


async def test_tool_errors_and_bad_requests_leave_the_worker_serving(start_mcp_worker, mesh):
    await start_mcp_worker({"demo": DEMO_STDIO})
    failed = await call(mesh.bus, "demo", {"tool": "fail", "arguments": {"message": "boom"}})
    assert failed["isError"] is True and "boom" in failed["content"][0]["text"]
    invalid = await call(mesh.bus, "demo", {"tool": "add", "arguments": {"a": "x"}})
    assert invalid["isError"] is True
    with pytest.raises(ToolNotFound):
        await call(mesh.bus, "demo", {"tool": "nope", "arguments": {}})
    for bad in (
        [1],
        {"tool": ""},
        {"tool": "add", "arguments": [1]},
        {"tool": "add", "timeout": -1},
    ):
        with pytest.raises(InvalidMessage):
            await call(mesh.bus, "demo", bad)
    with pytest.raises(NoResponders):
        await call(mesh.bus, "nobody", {"tool": "x"})
    ok = await call(mesh.bus, "demo", {"tool": "echo", "arguments": {"text": "still here"}})
    assert ok["content"][0]["text"] == "still here"
    assert ToolError  # used by the fault tests
