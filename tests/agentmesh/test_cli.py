"""The `agentmesh` console script, run as a real process against this test's mesh.

The CLI runs with `asyncio.create_subprocess_exec` so the event loop keeps serving the agents
the test started in-process while the child talks to them.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.schemas.envelope import Message

ECHO = "agentmesh.agents.examples.echo"

ROOT = Path(__file__).resolve().parents[2]  # `agent run` imports MODULE from the cwd
CLI_TIMEOUT = 30.0


@dataclass
class Result:
    code: int
    out: str
    err: str


async def run_cli(exe: str, *args: str, env: dict[str, str]) -> Result:
    proc = await asyncio.create_subprocess_exec(
        exe,
        *args,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT):
            out, err = await proc.communicate()
    except TimeoutError:
        pytest.fail(f"`agentmesh {' '.join(args)}` did not exit within {CLI_TIMEOUT}s")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@pytest.fixture
async def echo(settings: Settings) -> AsyncIterator[Agent]:
    """A fresh echo agent on this test's mesh (not the module-level demo singleton)."""
    agent = Agent("echo", name="Echo Agent", capabilities=["echo"])

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> AsyncIterator[str]:
        if not ctx.streaming:
            yield msg.text
            return
        words = msg.text.split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "

    await agent.start(settings)
    try:
        yield agent
    finally:
        await agent.stop()


# send ----------------------------------------------------------------------------------------
async def test_send_prints_the_agents_reply(
    agentmesh_exe: str, echo: Agent, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "send", "echo", "hello", env=env_for)
    assert (result.code, result.out, result.err) == (0, "hello\n", "")


async def test_send_with_stream_prints_the_streamed_chunks_as_one_line(
    agentmesh_exe: str, echo: Agent, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "send", "echo", "a b c", "--stream", env=env_for)
    assert (result.code, result.out, result.err) == (0, "a b c\n", "")


async def test_send_to_an_agent_that_is_not_online_exits_1_with_agent_not_found(
    agentmesh_exe: str, echo: Agent, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "send", "nobody", "hi", env=env_for)
    assert result.code == 1
    assert "AGENT_NOT_FOUND" in result.err
    assert "nobody" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""


async def test_send_to_a_wildcard_id_exits_1_with_invalid_id(
    agentmesh_exe: str, echo: Agent, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "send", "a.>", "hi", env=env_for)
    assert result.code == 1
    assert "INVALID_ID" in result.err
    assert "Traceback" not in result.err
    assert result.out == ""


# agents and status ---------------------------------------------------------------------------
async def test_agents_lists_the_online_agent_with_its_name(
    agentmesh_exe: str, echo: Agent, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "agents", env=env_for)
    assert result.code == 0, result.err
    header, *rows = result.out.splitlines()
    assert header.split()[:3] == ["AGENT", "ID", "NAME"]
    assert len(rows) == 1
    assert rows[0].startswith("echo ")
    assert "Echo Agent" in rows[0]


async def test_agents_json_lists_the_online_agent_and_its_instance(
    agentmesh_exe: str, echo: Agent, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "agents", "--json", env=env_for)
    assert result.code == 0, result.err
    found = json.loads(result.out)
    assert [p["agent_id"] for p in found] == ["echo"]
    assert found[0]["agent_name"] == "Echo Agent"
    assert [i["instance_id"] for i in found[0]["instances"]] == [echo.instance_id]


async def test_agents_says_so_when_no_agent_is_online(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "agents", env=env_for)
    assert (result.code, result.out) == (0, "no agents online\n")


async def test_status_exits_0_and_reports_jetstream_on_and_the_online_agent(
    agentmesh_exe: str, echo: Agent, env_for: dict[str, str], settings: Settings
) -> None:
    result = await run_cli(agentmesh_exe, "status", env=env_for)
    assert result.code == 0, result.out + result.err
    assert "JetStream on" in result.out
    assert settings.nats_url in result.out
    assert settings.redis_url in result.out
    agent_row = next(line for line in result.out.splitlines() if line.startswith("agent "))
    assert "1 up" in agent_row and "agents: echo (1)" in agent_row
    assert f"prefix {settings.prefix}: 1 agents online, 1 service instances" in result.out


# servers down --------------------------------------------------------------------------------
def _closed_nats() -> str:
    return f"nats://127.0.0.1:{free_port()}"


def _closed_redis() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


DOWN_CASES = [
    pytest.param(["send", "echo", "hi"], "AGENTMESH_NATS_URL", _closed_nats, id="send-nats"),
    pytest.param(["agents"], "AGENTMESH_NATS_URL", _closed_nats, id="agents-nats"),
    pytest.param(["agents"], "AGENTMESH_REDIS_URL", _closed_redis, id="agents-redis"),
    pytest.param(["status"], "AGENTMESH_NATS_URL", _closed_nats, id="status-nats"),
    pytest.param(["status"], "AGENTMESH_REDIS_URL", _closed_redis, id="status-redis"),
    pytest.param(
        ["agent", "run", "tests.agentmesh.sample_agent:agent"],
        "AGENTMESH_NATS_URL",
        _closed_nats,
        id="agent-run-nats",
    ),
    pytest.param(
        ["agent", "run", "tests.agentmesh.sample_agent:agent"],
        "AGENTMESH_REDIS_URL",
        _closed_redis,
        id="agent-run-redis",
    ),
]


@pytest.mark.parametrize(("args", "variable", "closed_url"), DOWN_CASES)
async def test_a_command_whose_server_is_down_exits_1_naming_the_url_and_make_up(
    agentmesh_exe: str,
    env_for: dict[str, str],
    args: list[str],
    variable: str,
    closed_url: Callable[[], str],
) -> None:
    url = closed_url()
    result = await run_cli(agentmesh_exe, *args, env={**env_for, variable: url})
    output = result.out + result.err
    assert result.code == 1, output
    assert url in output
    assert "make up" in output
    assert "Traceback" not in output


# agent run -----------------------------------------------------------------------------------
async def test_agent_run_serves_the_agent_until_sigterm_then_exits_0_and_leaves_presence(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    proc = await asyncio.create_subprocess_exec(
        agentmesh_exe,
        "agent",
        "run",
        "tests.agentmesh.sample_agent:agent",
        env=env_for,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(CLI_TIMEOUT):
                while not any("agent sample online" in line for line in seen):
                    line = await proc.stderr.readline()
                    if not line:
                        pytest.fail(f"agent run exited before going online:\n{''.join(seen)}")
                    seen.append(line.decode())
        except TimeoutError:
            pytest.fail(f"agent run not online within {CLI_TIMEOUT}s:\n{''.join(seen)}")

        async with MeshClient.connect(settings) as mesh:
            presence = await mesh.agent("sample")
            assert presence is not None
            assert [i.pid for i in presence.instances] == [proc.pid]
            reply = await mesh.ask("sample", "hi")
            assert reply.text == "sample: hi"

            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    _, err = await proc.communicate()
            except TimeoutError:
                pytest.fail("agent run did not exit within 10s of SIGTERM")
            assert proc.returncode == 0, "".join(seen) + err.decode()
            assert "agent sample stopped" in err.decode()
            assert await mesh.agent("sample") is None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("nosuchmodule:agent", "cannot load nosuchmodule:agent"),
        (
            "agentmesh.agents.examples.echo:nosuchattr",
            "cannot load agentmesh.agents.examples.echo:nosuchattr",
        ),
        ("agentmesh.agents.examples.echo:handle", "is a function, not an agentmesh Agent"),
        ("agentmesh.agents.examples.echo", "expected MODULE:ATTR"),
    ],
)
async def test_agent_run_with_a_target_that_is_not_an_agent_exits_1_with_a_clear_error(
    agentmesh_exe: str, env_for: dict[str, str], target: str, message: str
) -> None:
    result = await run_cli(agentmesh_exe, "agent", "run", target, env=env_for)
    assert result.code == 1
    assert message in result.err
    assert "Traceback" not in result.err
