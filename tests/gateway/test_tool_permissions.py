"""API keys and tools: a key limited to some tools sees and calls only those, on `/v1/tools`,
`/v1/tools/call` and `/mcp`; `/mcp` refuses a missing or bad key like every route."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import mcp_types as types
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.state import GatewayConfig
from tests.mcp.fixtures import DEMO_STDIO, TIME


@pytest.fixture
async def replica(start_gateway, start_mcp_worker):
    await start_mcp_worker({"time": TIME, "demo": DEMO_STDIO})
    return await start_gateway(config=GatewayConfig(auth=True))


async def new_key(durable, settings, tools=None, scopes=(Scope.SEND, Scope.AGENTS_READ)) -> str:
    store = KeyStore(durable, Subjects(settings.prefix))
    key, _ = await store.create("tooler", scopes=frozenset(scopes), tools=tools)
    return key


@asynccontextmanager
async def mcp_client(url: str, key: str | None) -> AsyncIterator[Client]:
    """The official client, sending the key as a bearer token."""
    headers = {"Authorization": f"Bearer {key}"} if key else None
    async with create_mcp_http_client(headers=headers) as http:
        async with Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:
            yield client


async def test_a_limited_key_sees_and_calls_only_its_tools(replica, durable, settings):
    key = await new_key(durable, settings, tools=["time/*", "demo/echo"])
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=replica.url, headers=headers, timeout=10) as http:
        listed = (await http.get("/v1/tools")).json()
        assert {t["name"] for t in listed["data"]} == {
            "time_get_current_time",
            "time_convert_time",
            "demo_echo",
        }
        assert {s["name"]: s["tools"] for s in listed["servers"]} == {"demo": 1, "time": 2}
        ok = await http.post(
            "/v1/tools/call", json={"server": "demo", "tool": "echo", "arguments": {"text": "hi"}}
        )
        assert ok.status_code == 200
        refused = await http.post(
            "/v1/tools/call", json={"server": "demo", "tool": "add", "arguments": {"a": 1}}
        )
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "UNAUTHORIZED"

    async with mcp_client(replica.url, key) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"time_get_current_time", "time_convert_time", "demo_echo"}
        assert (await client.call_tool("demo_echo", {"text": "yes"})).content[0].text == "yes"
        with pytest.raises(MCPError) as hidden:
            await client.call_tool("demo_add", {"a": 1, "b": 2})
        assert hidden.value.code == types.INVALID_PARAMS  # not listed, so an unknown tool


async def test_a_key_without_tool_patterns_sees_every_tool(replica, durable, settings):
    key = await new_key(durable, settings)
    async with mcp_client(replica.url, key) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"time_get_current_time", "demo_add", "demo_echo"} <= names


async def test_mcp_needs_a_valid_key_with_the_send_scope(replica, durable, settings):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream"}
    reader = await new_key(durable, settings, scopes=(Scope.AGENTS_READ,))
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        missing = await http.post("/mcp", json=body, headers=accept)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "UNAUTHORIZED"
        assert missing.headers["www-authenticate"] == "Bearer"
        bad = await http.post("/mcp", json=body, headers={**accept, "X-API-Key": "amk_x_y"})
        assert bad.status_code == 401
        scoped = await http.post(
            "/mcp", json=body, headers={**accept, "Authorization": f"Bearer {reader}"}
        )
        assert scoped.status_code == 403
    # The official client without a key: refused before any tool is listed (the SDK reports
    # the 401 as "Server returned an error response", wrapped by its task group).
    with pytest.raises((MCPError, ExceptionGroup)) as refused:
        async with mcp_client(replica.url, None) as client:
            await client.list_tools()
    assert "Server returned an error response" in repr(refused.value)
