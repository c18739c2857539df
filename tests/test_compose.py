"""The deployment files: docker-compose.yml as `docker-compose config` resolves it, the NATS
configs as nats-server reads them, and the Dockerfile.

No Docker engine is needed: `config` only parses and validates. docker-compose v1 prints YAML
only (v2 also prints JSON), and PyYAML is not a dependency, so `_parse_yaml` reads the plain
block-style YAML that `config` prints.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentmesh.broker.servers import ServerError, find_nats_server
from agentmesh.local import MCP_SERVERS
from agentmesh.workers.llm.config import LLMConfig
from agentmesh.workers.mcp.config import MCPConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
NATS_CONFIG = ROOT / "deploy" / "nats" / "nats.conf"
CLUSTER_CONFIG = ROOT / "deploy" / "nats" / "cluster.conf"
MODELS_FILE = ROOT / "deploy" / "models.yaml"
MCP_FILE = ROOT / "deploy" / "mcp.json"
URL_VARIABLES = ("AGENTMESH_NATS_URL", "AGENTMESH_REDIS_URL")


def _docker_compose() -> str:
    found = shutil.which("docker-compose")
    if not found:
        pytest.skip(
            "docker-compose is not installed, so docker-compose.yml cannot be validated "
            "(apt-get install docker-compose, or run .ci/run as root)"
        )
    return found


@functools.cache
def _run_compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_docker_compose(), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _compose_major_version() -> int:
    out = _run_compose("version", "--short").stdout.strip().lstrip("v")
    match = re.match(r"\d+", out)
    return int(match.group()) if match else 1


def _config() -> dict[str, Any]:
    """The resolved compose file (anchors merged, variables interpolated, paths absolute)."""
    if _compose_major_version() >= 2:
        done = _run_compose("config", "--format", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    done = _run_compose("config")
    assert done.returncode == 0, done.stderr
    return _parse_yaml(done.stdout)


def _parse_yaml(text: str) -> Any:
    """Block-style YAML as `docker-compose config` prints it: mappings, lists, plain or quoted
    scalars. Flow collections other than `{}` / `[]`, anchors and multi-line strings are not
    needed there and not supported."""
    lines = [
        (len(line) - len(line.lstrip(" ")), line.strip())
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    value, end = _parse_block(lines, 0)
    assert end == len(lines), f"unparsed YAML from line {end}: {lines[end : end + 3]}"
    return value


def _parse_block(lines: list[tuple[int, str]], i: int) -> tuple[Any, int]:
    indent, text = lines[i]
    if text == "-" or text.startswith("- "):
        items: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("-"):
            item = lines[i][1][1:].strip()
            if not item:  # the item is the nested block below
                value, i = _parse_block(lines, i + 1)
            elif _split_key(item):  # a mapping starting on the dash line
                lines[i] = (indent + 2, item)
                value, i = _parse_block(lines, i)
            else:
                value, i = _scalar(item), i + 1
            items.append(value)
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
        key_value = _split_key(lines[i][1])
        assert key_value, f"not a mapping entry: {lines[i][1]!r}"
        key, rest = key_value
        i += 1
        if rest:
            mapping[key] = _scalar(rest)
        elif i < len(lines) and (
            lines[i][0] > indent or (lines[i][0] == indent and lines[i][1].startswith("-"))
        ):
            mapping[key], i = _parse_block(lines, i)
        else:
            mapping[key] = None
    return mapping, i


def _split_key(text: str) -> tuple[str, str] | None:
    match = re.match(r"""^("[^"]*"|'[^']*'|[^\s'"][^:]*?):(?:\s+(.*))?$""", text)
    if not match:
        return None
    return str(_scalar(match.group(1))), (match.group(2) or "").strip()


def _scalar(text: str) -> Any:
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if text in ("null", "~"):
        return None
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return json.loads(text)
    return text


def _agentmesh_services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the AgentMesh image (built from deploy/Dockerfile)."""
    return {
        name: service
        for name, service in config["services"].items()
        if "deploy/Dockerfile" in str((service.get("build") or {}).get("dockerfile", ""))
    }


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=value form
        env = dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, in v1's `src:dst:mode` or v2's long form."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((str(volume.get("source", "")), str(volume["target"])))
        else:
            source, _, rest = str(volume).partition(":")
            mounts.append((source, rest.split(":")[0]))
    return mounts


def _port_host_ips(port: Any) -> list[str]:
    """The host address a published port binds (`""` means every interface)."""
    if isinstance(port, dict):
        return [str(port.get("host_ip") or "")]
    parts = str(port).split("/")[0].rsplit(":", 2)
    # host_ip:published:target binds one address; published:target and a bare container port
    # (Docker picks the host port) bind every interface.
    return [parts[0].strip("[]")] if len(parts) == 3 else [""]


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def test_docker_compose_config_accepts_the_compose_file() -> None:
    done = _run_compose("config", "--quiet")
    assert done.returncode == 0, done.stderr


def test_the_compose_file_defines_nats_redis_the_gateway_the_echo_agent_and_the_workers() -> None:
    done = _run_compose("config", "--services")
    assert done.returncode == 0, done.stderr
    services = set(done.stdout.split())
    assert {"nats", "redis", "gateway", "echo-agent", "llm-worker", "mcp-worker"} <= services


def test_nats_runs_with_the_mounted_config_that_enables_jetstream() -> None:
    nats = _config()["services"]["nats"]
    command = _command(nats)
    config_path = command[command.index("--config") + 1]
    sources = [source for source, target in _mounts(nats) if target == config_path]
    assert sources, f"{config_path} is not mounted into the nats service"
    assert Path(sources[0]).resolve() == NATS_CONFIG
    assert re.search(r"^\s*jetstream\s*[{:]", NATS_CONFIG.read_text(), re.MULTILINE)
    assert "/data" in [target for _, target in _mounts(nats)], "JetStream data is not on a volume"


def test_every_published_port_binds_to_loopback_only() -> None:
    services = _config()["services"]
    published = {
        name: [ip for port in service.get("ports") or [] for ip in _port_host_ips(port)]
        for name, service in services.items()
    }
    assert published["nats"] and published["redis"]
    for name, ips in published.items():
        assert all(ip == "127.0.0.1" for ip in ips), f"{name} publishes on {ips}"


def test_every_agentmesh_service_gets_the_nats_and_redis_urls() -> None:
    services = _agentmesh_services(_config())
    assert "echo-agent" in services
    for name, service in services.items():
        env = _environment(service)
        for variable in URL_VARIABLES:
            assert env.get(variable), f"{name} has no {variable}"
        assert env["AGENTMESH_NATS_URL"] == "nats://nats:4222"
        assert env["AGENTMESH_REDIS_URL"] == "redis://redis:6379/0"
        assert env.get("AGENTMESH_PREFIX"), f"{name} has no AGENTMESH_PREFIX"


def test_agentmesh_services_wait_for_healthy_nats_and_redis() -> None:
    for name, service in _agentmesh_services(_config()).items():
        depends_on = service.get("depends_on") or {}
        for server in ("nats", "redis"):
            assert depends_on.get(server, {}).get("condition") == "service_healthy", (name, server)


def test_the_gateway_listens_on_8001_inside_and_on_loopback_outside() -> None:
    gateway = _config()["services"]["gateway"]
    assert _command(gateway) == ["gateway", "--host", "0.0.0.0", "--port", "8001"]
    assert "127.0.0.1:8001:8001" in str(gateway["ports"])


def test_the_echo_agent_runs_the_example_agent() -> None:
    agent = _config()["services"]["echo-agent"]
    assert _command(agent) == ["agent", "run", "agentmesh.agents.examples.echo:agent"]


def test_the_llm_worker_serves_the_mounted_models_file_and_gets_the_provider_keys() -> None:
    worker = _config()["services"]["llm-worker"]
    command = _command(worker)
    assert command[:3] == ["worker", "llm", "--config"]
    sources = [source for source, target in _mounts(worker) if target == command[3]]
    assert sources, f"{command[3]} is not mounted into the llm-worker service"
    assert Path(sources[0]).resolve() == MODELS_FILE
    # The example loads with no key set, and serves the built-in echo model.
    assert LLMConfig.load(MODELS_FILE, environ={}).model("echo") is not None
    assert {"OPENAI_API_KEY", "ANTHROPIC_API_KEY"} <= set(_environment(worker))


def test_the_mcp_worker_serves_the_mounted_mcp_file_with_the_time_server() -> None:
    worker = _config()["services"]["mcp-worker"]
    command = _command(worker)
    assert command[:3] == ["worker", "mcp", "--config"]
    sources = [source for source, target in _mounts(worker) if target == command[3]]
    assert sources, f"{command[3]} is not mounted into the mcp-worker service"
    assert Path(sources[0]).resolve() == MCP_FILE
    time = MCPConfig.load(MCP_FILE, environ={}).by_name["time"]
    # In a container there is no local time zone to detect: the file pins UTC.
    assert time.command == "python"
    assert time.args == ["-m", "mcp_server_time", "--local-timezone", "UTC"]
    assert json.loads(MCP_FILE.read_text()) == MCP_SERVERS, "`agentmesh up` serves the same"
    # The image has the server: the Dockerfile installs it next to the runtime dependencies.
    assert re.search(r"^RUN pip install .*mcp-server-time", DOCKERFILE.read_text(), re.MULTILINE)


def test_the_dockerfile_runs_agentmesh_as_a_non_root_user() -> None:
    text = DOCKERFILE.read_text()
    entrypoints = re.findall(r"^ENTRYPOINT\s+(.+)$", text, re.MULTILINE)
    assert entrypoints, "deploy/Dockerfile has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["agentmesh"]
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "[servers" not in text, "the image should install runtime dependencies only"


def test_the_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", ".agentmesh", "tests"} <= ignored


@pytest.mark.parametrize("config", [NATS_CONFIG, CLUSTER_CONFIG], ids=lambda p: p.name)
def test_nats_server_accepts_the_nats_config(config: Path) -> None:
    try:
        nats_server = find_nats_server()
    except ServerError as exc:
        pytest.skip(str(exc))
    done = subprocess.run(
        [nats_server, "-t", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        # cluster.conf names each node from the environment.
        env={**os.environ, "NATS_SERVER_NAME": "nats-1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "jetstream" in config.read_text()


def test_the_yaml_reader_reads_what_docker_compose_config_prints() -> None:
    text = """\
services:
  a:
    command:
    - run
    - 'x: y'
    environment:
      URL: nats://nats:4222
    ports:
    - 127.0.0.1:4222:4222/tcp
    - host_ip: 127.0.0.1
      published: "6379"
volumes:
  data: {}
"""
    assert _parse_yaml(text) == {
        "services": {
            "a": {
                "command": ["run", "x: y"],
                "environment": {"URL": "nats://nats:4222"},
                "ports": ["127.0.0.1:4222:4222/tcp", {"host_ip": "127.0.0.1", "published": "6379"}],
            }
        },
        "volumes": {"data": {}},
    }


def test_the_a2a_bridge_runs_only_under_its_profile_on_a_mounted_mesh_file() -> None:
    bridge = _config()["services"]["a2a-bridge"]
    # No outside agent is configured by default: nothing starts unless `--profile a2a` asks.
    assert bridge.get("profiles") == ["a2a"]
    command = _command(bridge)
    assert command[:3] == ["worker", "a2a", "--file"]
    assert command[3] in [target for _, target in _mounts(bridge)]
