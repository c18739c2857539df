"""`MCPWorker.apply`: MCP servers of a running worker start, stop and restart live."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.schemas.errors import ToolNotFound
from agentmesh.workers.mcp.config import MCPConfig
from tests.mcp.fixtures import DEMO_STDIO, StartMCPWorker


def servers(**by_name: dict[str, Any]) -> MCPConfig:
    return MCPConfig.parse({"mcpServers": by_name})


async def test_an_added_mcp_server_is_served_and_a_removed_one_is_not(
    start_mcp_worker: StartMCPWorker, mesh: MeshClient
) -> None:
    worker = await start_mcp_worker({"demo": DEMO_STDIO})

    await worker.apply(servers(demo=DEMO_STDIO, extra=DEMO_STDIO))
    await worker.wait_up(timeout=30)
    assert (await mesh.tools.call("extra", "echo", {"text": "new"})).text == "new"
    assert (await mesh.tools.call("demo", "echo", {"text": "old"})).text == "old"

    await worker.apply(servers(extra=DEMO_STDIO))
    with pytest.raises(ToolNotFound):
        await mesh.tools.call("demo", "echo", {"text": "gone"})
    assert (await mesh.tools.call("extra", "echo", {"text": "still"})).text == "still"
    assert sorted(worker.upstreams) == ["extra"]


async def test_a_changed_mcp_server_is_restarted_with_its_new_config(
    start_mcp_worker: StartMCPWorker, mesh: MeshClient
) -> None:
    worker = await start_mcp_worker({"demo": DEMO_STDIO})
    before = (await mesh.tools.call("demo", "pid")).json()

    await worker.apply(servers(demo={**DEMO_STDIO, "env": {"DEMO_RELOADED": "1"}}))
    await worker.wait_up(timeout=30)

    after = (await mesh.tools.call("demo", "pid")).json()
    assert after != before  # a new process: the server was restarted


async def test_a_tool_call_in_flight_finishes_when_its_server_is_removed(
    start_mcp_worker: StartMCPWorker, mesh: MeshClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = await start_mcp_worker({"demo": DEMO_STDIO, "other": DEMO_STDIO})
    upstream = worker.upstreams["demo"]
    calling = asyncio.Event()
    call_upstream = upstream.call

    async def call_seen(*args: Any, **kwargs: Any) -> dict[str, Any]:
        calling.set()  # the worker has the call: it is in flight now
        return await call_upstream(*args, **kwargs)

    monkeypatch.setattr(upstream, "call", call_seen)
    call = asyncio.ensure_future(mesh.tools.call("demo", "sleep", {"seconds": 0.5}))
    async with asyncio.timeout(10):
        await calling.wait()

    await worker.apply(servers(other=DEMO_STDIO))

    result = await call
    assert result.is_error is False, result.raw
    with pytest.raises(ToolNotFound):
        await mesh.tools.call("demo", "echo", {"text": "gone"})
