"""`agentmesh worker llm --config models.yaml` and `agentmesh worker mcp --config mcp.json`, run as
real processes against this test's mesh."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agentmesh.agents.client import MeshClient
from agentmesh.broker.registry import Registry
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.schemas.errors import ModelNotFound, ToolNotFound
from tests.agentmesh.test_cli import ROOT, run_cli
from tests.mcp.fixtures import TIME

HELLO = [{"role": "user", "content": "hello worker"}]
MODELS = """\
models:
  - name: echo
    deployments: [{provider: echo, model: echo}]
  - name: my.echo-1.0
    deployments: [{provider: echo, model: echo}]
"""


def config_file(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def models_file(tmp_path: Path, text: str) -> str:
    return config_file(tmp_path / "models.yaml", text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "cannot read"),
        ("models: [\n", "is not valid YAML"),
        ("models:\n  - name: m\n    deployments: [{provider: nope, model: x}]\n", "provider"),
        (
            "models:\n  - name: m\n    deployments:\n"
            "      - {provider: openai, model: x, api_key: '${NO_SUCH_KEY_VAR}'}\n",
            "NO_SUCH_KEY_VAR is not set",
        ),
    ],
    ids=["missing", "bad-yaml", "bad-provider", "unset-variable"],
)
async def test_worker_llm_with_a_bad_models_file_exits_1_with_one_clear_line(
    agentmesh_exe: str, env_for: dict[str, str], tmp_path: Path, text: str | None, expected: str
) -> None:
    path = str(tmp_path / "absent.yaml") if text is None else models_file(tmp_path, text)
    args = ["worker", "llm", "--config", path]
    await exits_1_with_one_line(agentmesh_exe, env_for, args, expected)


async def exits_1_with_one_line(
    exe: str, env: dict[str, str], args: list[str], expected: str
) -> None:
    result = await run_cli(exe, *args, env=env)
    assert result.code == 1
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result.err
    assert expected in result.err
    assert "Traceback" not in result.err


async def test_worker_llm_with_nats_down_exits_1_naming_the_url(
    agentmesh_exe: str, env_for: dict[str, str], tmp_path: Path
) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    env = {**env_for, "AGENTMESH_NATS_URL": url, "AGENTMESH_CONNECT_TIMEOUT": "1"}
    path = models_file(tmp_path, MODELS)
    result = await run_cli(agentmesh_exe, "worker", "llm", "--config", path, env=env)
    assert result.code == 1
    assert f"cannot reach NATS at {url}" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_worker_llm_serves_its_models_until_a_signal_then_withdraws_them(
    agentmesh_exe: str,
    env_for: dict[str, str],
    settings: Settings,
    mesh: MeshClient,
    redis: aioredis.Redis,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        agentmesh_exe,
        "worker",
        "llm",
        "--config",
        models_file(tmp_path, MODELS),
        env=env_for,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    registry = Registry(redis, Subjects(settings.prefix), timeout=settings.heartbeat_timeout)
    try:
        async with asyncio.timeout(30):
            while b"serving" not in (line := await proc.stderr.readline()):
                assert line, "the worker exited before serving"
        assert await registry.names("models") == ["echo", "my.echo-1.0"]
        reply = await mesh.llm("my.echo-1.0").chat(HELLO)
        assert reply["choices"][0]["message"]["content"] == "hello worker"

        proc.send_signal(sig)
        async with asyncio.timeout(15):
            rest = await proc.stderr.read()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, rest
    assert b"Traceback" not in rest
    assert await registry.names("models") == []
    with pytest.raises(ModelNotFound):
        await mesh.llm("echo").chat(HELLO)


def mcp_file(tmp_path: Path, text: str) -> str:
    return config_file(tmp_path / "mcp.json", text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "cannot read"),
        ('{"mcpServers": {', "is not valid JSON"),
        ('{"servers": {}}', 'expected {"mcpServers": {...}}'),
        ('{"mcpServers": {"t": {"args": ["x"]}}}', "a stdio server needs a 'command'"),
        ('{"mcpServers": {"bad name": {"command": "x"}}}', "invalid server name 'bad name'"),
        (
            '{"mcpServers": {"t": {"command": "${NO_SUCH_MCP_VAR}"}}}',
            "NO_SUCH_MCP_VAR is not set",
        ),
    ],
    ids=["missing", "bad-json", "no-mcpServers", "no-command", "bad-name", "unset-variable"],
)
async def test_worker_mcp_with_a_bad_config_exits_1_with_one_clear_line(
    agentmesh_exe: str, env_for: dict[str, str], tmp_path: Path, text: str | None, expected: str
) -> None:
    path = str(tmp_path / "absent.json") if text is None else mcp_file(tmp_path, text)
    args = ["worker", "mcp", "--config", path]
    await exits_1_with_one_line(agentmesh_exe, env_for, args, expected)


async def test_worker_mcp_serves_the_tools_of_its_servers_until_sigterm_then_withdraws_them(
    agentmesh_exe: str,
    env_for: dict[str, str],
    mesh: MeshClient,
    tmp_path: Path,
) -> None:
    proc = await asyncio.create_subprocess_exec(
        agentmesh_exe,
        "worker",
        "mcp",
        "--config",
        mcp_file(tmp_path, json.dumps({"mcpServers": {"time": TIME}})),
        env=env_for,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):  # logged once subscribed and announced
            while b"serving MCP server time" not in (line := await proc.stderr.readline()):
                assert line, "the worker exited before serving"
        result = await mesh.tools.call("time", "get_current_time", {"timezone": "UTC"})
        assert result.is_error is False, result.raw
        assert result.structured["timezone"] == "UTC"
        assert sorted(t.name for t in await mesh.tools.list() if t.server == "time") == [
            "convert_time",
            "get_current_time",
        ]

        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            # Read to the end: the time server shares the pipe, so this also sees it gone.
            rest = await proc.stderr.read()
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, rest
    assert b"Traceback" not in rest
    assert await mesh.tools.list() == []
    with pytest.raises(ToolNotFound):
        await mesh.tools.call("time", "get_current_time", {"timezone": "UTC"})
