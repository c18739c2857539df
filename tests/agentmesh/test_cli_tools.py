"""`agentmesh tools list` and `agentmesh tools call`, as real processes against this test's
mesh with an MCP worker (the demo server over stdio)."""

from __future__ import annotations

import json

from tests.agentmesh.test_cli import run_cli
from tests.mcp.fixtures import DEMO_STDIO


async def test_list_and_call(agentmesh_exe, start_mcp_worker, env_for):
    await start_mcp_worker({"demo": DEMO_STDIO})
    listed = await run_cli(agentmesh_exe, "tools", "list", env=env_for)
    assert listed.code == 0, listed.err
    assert listed.out.splitlines()[0].split() == ["SERVER", "TOOL", "DESCRIPTION"]
    assert any(line.split()[:2] == ["demo", "add"] for line in listed.out.splitlines())

    as_json = await run_cli(agentmesh_exe, "tools", "list", "--json", env=env_for)
    entries = json.loads(as_json.out)
    add = next(e for e in entries if e["name"] == "add")
    assert add["server"] == "demo" and add["inputSchema"]["required"] == ["a", "b"]

    added = await run_cli(
        agentmesh_exe, "tools", "call", "demo", "add", '{"a": 2, "b": 5}', env=env_for
    )
    assert (added.code, json.loads(added.out)) == (0, {"sum": 7})

    failed = await run_cli(
        agentmesh_exe, "tools", "call", "demo", "fail", '{"message": "no luck"}', env=env_for
    )
    assert failed.code == 2 and "no luck" in failed.out


async def test_bad_calls_exit_1_with_a_clear_line(agentmesh_exe, start_mcp_worker, env_for):
    await start_mcp_worker({"demo": DEMO_STDIO})
    for args, expected in [
        (("demo", "nope"), "TOOL_NOT_FOUND"),
        (("ghost", "x"), "TOOL_NOT_FOUND"),
        (("demo", "add", "{not json"), "not valid JSON"),
        (("demo", "add", "[1]"), "must be a JSON object"),
        (("bad.name", "x"), "INVALID_ID"),
    ]:
        result = await run_cli(agentmesh_exe, "tools", "call", *args, env=env_for)
        assert result.code == 1, (args, result)
        assert expected in result.err and "Traceback" not in result.err


async def test_list_says_when_no_worker_runs(agentmesh_exe, env_for):
    result = await run_cli(agentmesh_exe, "tools", "list", env=env_for)
    assert result.code == 0 and "no MCP worker is running" in result.out
