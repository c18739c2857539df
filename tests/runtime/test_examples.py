"""The seed's example programs (agents/examples/runtime/), run as the user would run them,
against this test's mesh: a scripted model that plays each example's part, real LLM and MCP
workers."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import StartGateway, start_gateway  # noqa: F401 - the fixture
from tests.mcp.fixtures import TIME, StartMCPWorker
from tests.runtime.conftest import StartModel, StartRuntime
from tests.runtime.scripted_llm import Reply, last_message, tool_names


def _arguments(tool: dict[str, Any], user_text: str) -> dict[str, Any]:
    params = tool["function"]["parameters"]
    out: dict[str, Any] = {}
    for name in params.get("required", []):
        out[name] = "UTC" if name == "timezone" else user_text
    return out


def example_brain(body: dict[str, Any]) -> Reply:
    """Plays the model in each example: calls the offered tool, reads a disclosed skill's
    file, delegates when it can, and answers with what the tools said."""
    messages = body["messages"]
    last = last_message(body)
    offered = body.get("tools") or []
    names = tool_names(body)
    subagent = messages[0]["role"] == "system" and "delegated" in messages[0]["content"]
    if last["role"] == "tool":
        skill = re.search(r"^# Skill: (.+)$", last["content"], re.M)
        if skill and "read_skill_file" in names:
            path = re.search(r"^- (.+)$", last["content"], re.M)
            args = {"skill": skill.group(1), "path": path.group(1) if path else ""}
            return Reply(tool_calls=[("read_skill_file", args)])
        who = "MainAgent" if subagent else "Answer"
        return Reply(content=f"{who}: {last['content'][:200]}")
    text = str(last["content"])
    if "delegate" in names and not subagent:
        task = {"task": "Get the current UTC time", "tool_names": ["time_get_current_time"]}
        return Reply(tool_calls=[("delegate", task)])
    callable_tools = [t for t in offered if t["function"]["name"] != "delegate"]
    callable_tools.sort(key=lambda t: not t["function"]["name"].endswith("get_current_time"))
    if callable_tools:
        tool = callable_tools[0]
        return Reply(tool_calls=[(tool["function"]["name"], _arguments(tool, text))])
    return Reply(content=f"Answer: {text}")


async def run_example(
    name: str, env: dict[str, str], *args: str, cwd: Path | None = None, **extra: str
) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"agentmesh.agents.examples.runtime.{name}",
        *args,
        env={**env, "MODEL": "m", **extra},
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode() + out.decode()
    return out.decode()


async def test_function_register(start_model: StartModel, env_for: dict[str, str]) -> None:
    upstream = await start_model(example_brain)
    out = await run_example("function_register", env_for)
    assert "Python 3.14 is the latest release." in out
    assert tool_names(upstream.requests[0]) == ["web_search"]


@pytest.mark.parametrize("stream", [False, True], ids=["infer", "stream"])
async def test_mcp_tools(
    start_model: StartModel,
    start_mcp_worker: StartMCPWorker,
    env_for: dict[str, str],
    stream: bool,
) -> None:
    await start_mcp_worker({"time": TIME})
    await start_model(example_brain)
    out = await run_example("mcp_tools", env_for, *(["--stream"] if stream else []))
    assert "direct: UTC" in out
    assert re.search(r'Answer: \{\s*"timezone": "UTC"', out)


async def test_skill_progressive_disclosure(
    start_model: StartModel, env_for: dict[str, str]
) -> None:
    upstream = await start_model(example_brain)
    out = await run_example("skill", env_for)
    assert "Answer: SELECT region, SUM(amount) FROM sales GROUP BY region;" in out
    assert "Read `query.sql`" not in str(upstream.requests[0])  # not disclosed in round one
    assert "Read `query.sql`" in str(upstream.requests[1])


async def test_prompt_template(start_model: StartModel, env_for: dict[str, str]) -> None:
    upstream = await start_model(example_brain)
    out = await run_example("prompt_template", env_for)
    sent = upstream.requests[0]["messages"][-1]["content"]
    assert sent == "Please summarize the following text in English:\n\nAgentMesh joins agents."
    assert out.startswith("Answer: Please summarize")


async def test_multi_agents(
    start_model: StartModel, start_mcp_worker: StartMCPWorker, env_for: dict[str, str]
) -> None:
    await start_mcp_worker({"time": TIME})
    upstream = await start_model(example_brain)
    out = await run_example("multi_agents", env_for)
    assert "[call_1] MainAgent:" in out  # the sub-agent's stream, tagged with its path
    assert "[plan] Answer: MainAgent:" in out
    sub = next(r for r in upstream.requests if "delegated" in str(r["messages"][0]))
    assert "| time_get_current_time |" in sub["messages"][0]["content"]


async def test_stream_as_infer_over_http(
    start_model: StartModel,
    start_mcp_worker: StartMCPWorker,
    start_runtime: StartRuntime,
    start_gateway: StartGateway,  # noqa: F811
    env_for: dict[str, str],
) -> None:
    await start_mcp_worker({"time": TIME})
    # Deterministic, so that the two calls can be the same: no clock reading, no call ids.
    await start_model(lambda body: Reply(thinking="The user wants the time.", content="Noon."))
    await start_runtime()
    replica = await start_gateway()
    out = await run_example("stream_as_infer", env_for, "--compare", GATEWAY=replica.url)
    assert out.startswith("Noon.\n")
    assert '"thinking": "The user wants the time."' in out
    assert "identical to /v1/infer" in out


async def test_vlm_tool_call(
    start_model: StartModel, env_for: dict[str, str], tmp_path: Path
) -> None:
    def vision_brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=f"done: {last['content'].splitlines()[1]}")
        parts = last["content"]
        assert parts[1]["type"] == "image_url"  # the image reached the vision model
        return Reply(
            tool_calls=[("bash", {"command": "echo the image said hello > out.txt; cat out.txt"})]
        )

    await start_model(vision_brain)
    out = await run_example("vlm_tool_call", env_for, cwd=tmp_path)
    assert "called bash:" in out and out.strip().endswith("done: the image said hello")
    assert list((tmp_path / ".agentmesh" / "runtime" / "work").glob("sess-*/out.txt"))
