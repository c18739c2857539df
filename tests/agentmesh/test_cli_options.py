"""`--nats-url`, `--redis-url` and `--prefix`: every command but `up` takes them, and they win
over the environment."""

from __future__ import annotations

from typing import Any

import pytest
import typer

from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.cli import app
from tests.agentmesh.test_cli import echo, run_cli  # noqa: F401 - echo is a fixture

MESH_OPTIONS = {"--nats-url", "--redis-url", "--prefix"}


def _commands(group: Any, path: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer's own click classes)
            found.update(_commands(command, f"{path}{name} "))
        else:
            found[f"{path}{name}"] = command
    return found


def test_every_command_but_up_takes_the_mesh_options() -> None:
    commands = _commands(typer.main.get_command(app))
    assert {"agents", "send", "status", "gateway", "agent run", "keys list"} <= set(commands)
    for name, command in commands.items():
        flags = {opt for param in command.params for opt in param.opts}
        if name == "up":
            assert not flags & MESH_OPTIONS, name
        else:
            assert flags >= MESH_OPTIONS, name


def _unreachable_env(env: dict[str, str]) -> dict[str, str]:
    """The test's environment with the mesh's URLs and prefix pointing elsewhere."""
    return {
        **env,
        "AGENTMESH_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "AGENTMESH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "AGENTMESH_PREFIX": "elsewhere",
    }


@pytest.mark.usefixtures("echo")
async def test_the_options_override_the_environment_for_nats_and_redis(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    env = _unreachable_env(env_for)
    mesh = [
        "--nats-url",
        settings.nats_url,
        "--redis-url",
        settings.redis_url,
        "--prefix",
        settings.prefix,
    ]
    sent = await run_cli(agentmesh_exe, "send", "echo", "hello", *mesh, env=env)
    assert (sent.code, sent.out, sent.err) == (0, "hello\n", "")
    listed = await run_cli(agentmesh_exe, "agents", "--json", *mesh, env=env)
    assert listed.code == 0, listed.err
    assert "echo" in listed.out
    keys = await run_cli(agentmesh_exe, "keys", "list", *mesh, env=env)
    assert keys.code == 0, keys.err


@pytest.mark.usefixtures("echo")
async def test_without_the_options_the_environment_applies(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    result = await run_cli(agentmesh_exe, "send", "echo", "hello", env=_unreachable_env(env_for))
    assert result.code == 1
    assert result.err.startswith("error: ") and "Traceback" not in result.err
