"""Direct tool calls over HTTP: `GET /v1/tools` and `POST /v1/tools/call`, with real MCP
servers behind a real MCP worker."""

from __future__ import annotations

from tests.mcp.fixtures import DEMO_STDIO, TIME


async def test_list_the_federated_catalog(start_mcp_worker, http):
    await start_mcp_worker({"time": TIME, "demo": DEMO_STDIO})
    response = await http.get("/v1/tools")
    assert response.status_code == 200
    body = response.json()
    by_name = {t["name"]: t for t in body["data"]}
    current = by_name["time_get_current_time"]
    assert current["server"] == "time" and current["tool"] == "get_current_time"
    assert current["input_schema"]["required"] == ["timezone"]
    assert "output_schema" in current
    assert {"demo_add", "demo_echo", "time_convert_time"} <= set(by_name)
    servers = {s["name"]: s for s in body["servers"]}
    assert servers["time"] == {"name": "time", "state": "up", "workers": 1, "tools": 2}


async def test_call_a_tool_in_mcp_and_json_formats(start_mcp_worker, http):
    await start_mcp_worker({"time": TIME, "demo": DEMO_STDIO})
    call = {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"}}
    mcp = await http.post("/v1/tools/call", json=call)
    assert mcp.status_code == 200
    assert mcp.json()["isError"] is False
    assert mcp.json()["structuredContent"]["timezone"] == "UTC"

    parsed = await http.post("/v1/tools/call", json={**call, "format": "json"})
    assert parsed.status_code == 200
    assert parsed.json()["result"]["timezone"] == "UTC"

    add = {"server": "demo", "tool": "add", "arguments": {"a": 1, "b": 2}, "format": "json"}
    assert (await http.post("/v1/tools/call", json=add)).json()["result"] == {"sum": 3}


async def test_failures_have_stable_codes(start_mcp_worker, http):
    await start_mcp_worker({"demo": DEMO_STDIO})

    async def post(body: dict) -> tuple[int, dict]:
        response = await http.post("/v1/tools/call", json=body)
        return response.status_code, response.json()

    fail = {"server": "demo", "tool": "fail", "arguments": {"message": "it broke"}}
    status, body = await post(fail)  # the MCP format returns the isError result as is
    assert status == 200 and body["isError"] is True and "it broke" in body["content"][0]["text"]
    status, body = await post({**fail, "format": "json"})
    assert status == 422 and body["error"]["code"] == "TOOL_ERROR"
    assert "it broke" in body["error"]["message"]

    status, body = await post({"server": "demo", "tool": "nope"})
    assert status == 404 and body["error"]["code"] == "TOOL_NOT_FOUND"
    status, body = await post({"server": "ghost", "tool": "x"})
    assert status == 404 and body["error"]["code"] == "TOOL_NOT_FOUND"
    status, body = await post({"server": "demo.*", "tool": "echo"})
    assert status == 400 and body["error"]["code"] == "INVALID_ID"
    status, body = await post({"server": "demo", "tool": "echo", "arguments": [1]})
    assert status == 422 and body["error"]["code"] == "INVALID_MESSAGE"
    status, body = await post({"server": "demo", "tool": "echo", "extra": 1})
    assert status == 422 and body["error"]["code"] == "INVALID_MESSAGE"
    slow = {"server": "demo", "tool": "sleep", "arguments": {"seconds": 5}, "timeout": 0.3}
    status, body = await post(slow)
    assert status == 504 and body["error"]["code"] == "TIMEOUT"
    status, body = await post({"server": "demo", "tool": "echo", "arguments": {"text": "ok"}})
    assert status == 200 and body["content"][0]["text"] == "ok"
