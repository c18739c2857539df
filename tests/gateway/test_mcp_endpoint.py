"""The gateway's `/mcp`, with the official `mcp` client: every tool of the mesh under
`{server}_{tool}`, over both protocol eras, across replicas."""

from __future__ import annotations

import httpx
import mcp_types as types
import pytest
from mcp import Client, MCPError

from tests.mcp.fixtures import DEMO_STDIO, TIME


@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28, and the 2025-11-25 handshake
async def test_list_and_call_federated_tools(start_mcp_worker, gateway, mode):
    await start_mcp_worker({"time": TIME, "demo": DEMO_STDIO})
    async with Client(f"{gateway.url}/mcp", mode=mode) as client:
        assert client.server_info is not None and client.server_info.name == "agentmesh"
        listed = {t.name: t for t in (await client.list_tools()).tools}
        assert {"time_get_current_time", "time_convert_time", "demo_add"} <= set(listed)
        current = listed["time_get_current_time"]
        assert current.input_schema["required"] == ["timezone"]
        assert current.meta == {
            "agentmesh/server": "time",
            "agentmesh/tool": "get_current_time",
        }

        result = await client.call_tool("time_get_current_time", {"timezone": "Europe/Berlin"})
        assert result.is_error is False
        assert result.structured_content["timezone"] == "Europe/Berlin"

        added = await client.call_tool("demo_add", {"a": 20, "b": 22})
        assert added.structured_content == {"sum": 42}

        failed = await client.call_tool("demo_fail", {"message": "bad day"})
        assert failed.is_error and "bad day" in failed.content[0].text

        invalid = await client.call_tool("demo_add", {"a": "x", "b": 1})
        assert invalid.is_error  # the upstream's own validation error, as an isError result

        with pytest.raises(MCPError) as unknown:
            await client.call_tool("demo_nope", {})
        assert unknown.value.code == types.INVALID_PARAMS

        slept = await client.call_tool("demo_echo", {"text": "still serving"})
        assert slept.content[0].text == "still serving"


async def test_a_session_spans_replicas(start_mcp_worker, start_gateway):
    """Stateless: no session id is handed out, so each request of one client may reach any
    replica (here: initialize on one, list on the other, call on the first)."""
    await start_mcp_worker({"demo": DEMO_STDIO})
    first, second = await start_gateway(), await start_gateway()
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }

    async def rpc(replica, method: str, params: dict, id_: int | None = 1) -> httpx.Response:
        message = {"jsonrpc": "2.0", "method": method, "params": params}
        if id_ is not None:
            message["id"] = id_
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.post(f"{replica.url}/mcp", json=message, headers=headers)

    init = await rpc(
        first,
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    )
    assert init.status_code == 200 and "mcp-session-id" not in init.headers
    assert init.json()["result"]["serverInfo"]["name"] == "agentmesh"
    assert (await rpc(second, "notifications/initialized", {}, None)).status_code == 202
    listed = await rpc(second, "tools/list", {}, 2)
    assert "demo_echo" in {t["name"] for t in listed.json()["result"]["tools"]}
    called = await rpc(first, "tools/call", {"name": "demo_echo", "arguments": {"text": "hi"}}, 3)
    assert called.json()["result"]["content"][0]["text"] == "hi"


@pytest.mark.parametrize("version", ["2025-11-25", "2026-07-28", None])
async def test_a_get_for_a_server_stream_is_answered_405_at_once_not_held_open(gateway, version):
    headers = {"Accept": "text/event-stream"}
    if version:
        headers["MCP-Protocol-Version"] = version
    async with httpx.AsyncClient(base_url=gateway.url, timeout=5) as http:
        r = await http.get("/mcp", headers=headers)
    assert r.status_code == 405 and r.headers["allow"] == "POST, DELETE"
    assert r.json()["error"]["code"] == "INVALID_MESSAGE"
