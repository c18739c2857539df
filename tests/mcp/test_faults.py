"""Faults around MCP workers: a stdio server killed (restarted, calls meanwhile fail at once),
an HTTP server that goes away and comes back, two workers sharing load and covering for each
other, a server whose tools change, slow and concurrent calls."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from agentmesh.schemas.errors import MeshTimeout, ToolNotFound, Unavailable
from tests.mcp.fixtures import DEMO_STDIO, DemoHTTP


async def pid_of(mesh, server: str = "demo") -> int:
    return (await mesh.tools.call(server, "pid")).json()["result"]


async def test_a_killed_stdio_server_is_restarted_and_calls_meanwhile_fail_fast(
    start_mcp_worker, mesh
):
    worker = await start_mcp_worker({"demo": DEMO_STDIO})
    upstream = worker.upstreams["demo"]
    upstream.backoff_first = 2.0  # a wide window in which the server is surely down
    first = await pid_of(mesh)

    os.kill(first, signal.SIGKILL)
    await worker.wait_for(lambda: upstream.state == "down", timeout=10)
    started = time.monotonic()
    with pytest.raises(Unavailable, match="'demo' is down"):
        await mesh.tools.call("demo", "echo", {"text": "anyone?"})
    assert time.monotonic() - started < 1.0  # at once, not at a timeout
    catalog = await mesh.tools.catalog()
    assert catalog.servers["demo"].state == "down"

    await worker.wait_up(timeout=20)
    second = await pid_of(mesh)
    assert second != first and upstream.restarts == 1
    assert (await mesh.tools.call("demo", "echo", {"text": "back"})).text == "back"


async def test_a_call_in_flight_when_the_server_dies_fails_with_unavailable(start_mcp_worker, mesh):
    worker = await start_mcp_worker({"demo": DEMO_STDIO})
    pid = await pid_of(mesh)
    slow = asyncio.create_task(mesh.tools.call("demo", "sleep", {"seconds": 30}))
    # One round trip behind it on the same connection: the slow call has reached the worker.
    await mesh.tools.call("demo", "echo", {"text": "after"})
    assert not slow.done()
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await slow
    assert time.monotonic() - started < 5
    await worker.wait_up(timeout=20)


async def test_an_http_server_that_comes_back_is_reconnected(start_mcp_worker, mesh):
    server = await DemoHTTP().start()
    try:
        worker = await start_mcp_worker({"web": {"url": server.url}})
        assert (await mesh.tools.call("web", "echo", {"text": "one"})).text == "one"
        await server.stop()
        with pytest.raises(Unavailable):
            await mesh.tools.call("web", "echo", {"text": "two"})
        await worker.wait_for(lambda: worker.upstreams["web"].state == "down", timeout=10)

        server = await DemoHTTP(port=server.port).start()
        await worker.wait_up(timeout=20)
        assert (await mesh.tools.call("web", "echo", {"text": "three"})).text == "three"
    finally:
        await server.stop()


async def test_two_workers_share_the_load_and_cover_for_each_other(start_mcp_worker, mesh):
    one = await start_mcp_worker({"demo": DEMO_STDIO})
    two = await start_mcp_worker({"demo": DEMO_STDIO})
    pids = await asyncio.gather(*(pid_of(mesh) for _ in range(40)))
    assert len(set(pids)) == 2  # both workers' servers answered
    catalog = await mesh.tools.catalog()
    assert catalog.servers["demo"].workers == 2

    one.upstreams["demo"].backoff_first = 30.0  # stays down for the rest of the test
    dead = await _pid_via(one)
    os.kill(dead, signal.SIGKILL)
    await one.wait_for(lambda: one.upstreams["demo"].state == "down", timeout=10)
    survivors = await asyncio.gather(*(pid_of(mesh) for _ in range(20)))
    assert set(survivors) == {await _pid_via(two)}  # every call went to the live copy


async def _pid_via(worker) -> int:
    result = await worker.upstreams["demo"].call("pid", {}, 10)
    return result["structuredContent"]["result"]


async def test_changed_tools_reach_the_catalog(start_mcp_worker, mesh):
    worker = await start_mcp_worker({"demo": DEMO_STDIO})
    upstream = worker.upstreams["demo"]
    with pytest.raises(ToolNotFound):
        await mesh.tools.call("demo", "shout", {"text": "x"})
    await mesh.tools.call("demo", "add_tool", {"name": "shout"})
    await worker.wait_for(lambda: any(t["name"] == "shout" for t in upstream.tools), timeout=10)
    assert "shout" in {t.name for t in await mesh.tools.list()}
    assert (await mesh.tools.call("demo", "shout", {"text": "hi"})).text == "shout: hi"


async def test_slow_calls_time_out_and_calls_run_concurrently(start_mcp_worker, mesh):
    await start_mcp_worker({"demo": DEMO_STDIO})
    with pytest.raises(MeshTimeout, match="within 0.2s"):
        await mesh.tools.call("demo", "sleep", {"seconds": 10}, timeout=0.2)
    started = time.monotonic()
    results = await asyncio.gather(
        *(mesh.tools.call("demo", "sleep", {"seconds": 0.5}) for _ in range(8))
    )
    assert all(r.text == "slept 0.5" for r in results)
    assert time.monotonic() - started < 8 * 0.5 / 2  # they overlapped on one session


async def test_a_stopping_worker_finishes_the_calls_in_flight(start_mcp_worker, mesh):
    worker = await start_mcp_worker({"demo": DEMO_STDIO})
    slow = asyncio.create_task(mesh.tools.call("demo", "sleep", {"seconds": 0.5}))
    await mesh.tools.call("demo", "echo", {"text": "behind it"})  # the slow call has arrived
    await worker.stop()
    assert (await slow).text == "slept 0.5"
    with pytest.raises(ToolNotFound):  # withdrawn from the catalog, nobody serves it
        await mesh.tools.call("demo", "echo", {"text": "too late"})
