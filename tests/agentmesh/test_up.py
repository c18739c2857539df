"""`agentmesh up`, run as a real process: it starts nats-server, redis-server, the echo agent,
the gateway, an LLM worker and an MCP worker (the time server), and stops all of them on Ctrl-C
(SIGINT) or SIGTERM."""

from __future__ import annotations

import asyncio
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from mcp import Client

from agentmesh.agents.client import MeshClient
from agentmesh.broker.servers import free_port, port_in_use, process_alive
from agentmesh.broker.settings import Settings
from agentmesh.schemas.task import TaskStatus

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parents[2]
TIME_CALL = {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"}}


def clean_env(**urls: str) -> dict[str, str]:
    """os.environ without AGENTMESH_* (so the default prefix is used) and without provider keys
    (so `up` serves the echo model only, whatever this machine has), plus `urls`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AGENTMESH_") and k not in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    }
    env.update(urls)
    return env


def free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


class Up:
    """A running `agentmesh up`; its stdout and stderr are read line by line by a thread."""

    def __init__(self, exe: str | list[str], *args: str) -> None:
        command = [exe] if isinstance(exe, str) else exe  # a list: a command that runs the CLI
        self.proc = subprocess.Popen(
            [*command, "up", *args],
            cwd=ROOT,
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._queue.get(timeout=max(remaining, 0))
            except queue.Empty:
                pytest.fail(
                    f"no line with {text!r} from `agentmesh up` in {timeout}s:\n{self.output}"
                )
            if line is None:
                self._queue.put(None)  # later readers see the end too
                pytest.fail(f"`agentmesh up` ended before printing {text!r}:\n{self.output}")
            self.lines.append(line)
            if text in line:
                return line

    def wait_for_banner(self) -> str:
        self.wait_for_line("Ctrl-C")
        return self.output

    def wait_for_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`agentmesh up` did not exit within {timeout}s:\n{self.output}")
        self._reader.join(timeout)
        while (line := self._queue.get_nowait()) is not None:
            self.lines.append(line)
        return code

    def close(self) -> None:
        """Stop it the way a user would (so it stops its servers), killing it if that hangs."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(STOP_TIMEOUT)


@dataclass
class Mesh:
    up: Up
    nats_port: int
    redis_port: int
    gateway_port: int
    data_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return clean_env(
            AGENTMESH_NATS_URL=f"nats://127.0.0.1:{self.nats_port}",
            AGENTMESH_REDIS_URL=f"redis://127.0.0.1:{self.redis_port}/0",
        )

    def server_pids(self) -> tuple[int, int]:
        banner = self.up.output
        nats = re.search(r"^\s*NATS .*\(.*pid (\d+)\)", banner, re.MULTILINE)
        redis = re.search(r"^\s*Redis .*\(pid (\d+)\)", banner, re.MULTILINE)
        assert nats and redis, f"no server pids in the banner:\n{banner}"
        return int(nats.group(1)), int(redis.group(1))


@contextmanager
def start_mesh(exe: str | list[str], tmp_path: Path, *args: str) -> Iterator[Mesh]:
    nats_port, redis_port, gateway_port = free_ports(3)
    data_dir = tmp_path / "mesh"
    up = Up(
        exe,
        "--nats-port",
        str(nats_port),
        "--redis-port",
        str(redis_port),
        "--gateway-port",
        str(gateway_port),
        "--data-dir",
        str(data_dir),
        *args,
    )
    try:
        up.wait_for_banner()
        yield Mesh(up, nats_port, redis_port, gateway_port, data_dir)
    finally:
        up.close()


@pytest.fixture
def mesh(agentmesh_exe: str, tmp_path: Path) -> Iterator[Mesh]:
    with start_mesh(agentmesh_exe, tmp_path) as running:
        yield running


def send(exe: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, "send", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_serves_echo_then_a_signal_stops_both_servers_and_frees_their_ports(
    agentmesh_exe: str, mesh: Mesh, sig: signal.Signals
) -> None:
    result = send(agentmesh_exe, mesh.env, "echo", "hi")
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr
    # The gateway of `up` reaches the same echo agent over HTTP.
    reply = httpx.post(
        f"http://127.0.0.1:{mesh.gateway_port}/gateway/send",
        json={"to_agent_id": "echo", "wait": True, "content": [{"type": "text", "text": "hi"}]},
        timeout=10,
    )
    assert reply.json()["result"]["result"] == "hi", reply.text

    nats_pid, redis_pid = mesh.server_pids()
    assert process_alive(nats_pid) and process_alive(redis_pid)
    assert port_in_use(mesh.nats_port) and port_in_use(mesh.redis_port)

    mesh.up.proc.send_signal(sig)  # what Ctrl-C (SIGINT) or a process manager (SIGTERM) sends
    code = mesh.up.wait_for_exit()

    assert code == 0, mesh.up.output
    assert "stopping the local mesh" in mesh.up.output
    assert "Traceback" not in mesh.up.output
    assert not process_alive(nats_pid), "nats-server outlived `agentmesh up`"
    assert not process_alive(redis_pid), "redis-server outlived `agentmesh up`"
    assert not port_in_use(mesh.nats_port)
    assert not port_in_use(mesh.redis_port)
    assert not port_in_use(mesh.gateway_port)


def test_the_servers_exit_when_up_is_killed_without_a_chance_to_stop_them(mesh: Mesh) -> None:
    nats_pid, redis_pid = mesh.server_pids()
    mesh.up.proc.kill()
    mesh.up.wait_for_exit()
    # The kernel tells each server to exit when its parent dies (PR_SET_PDEATHSIG).
    deadline = time.monotonic() + STOP_TIMEOUT
    while process_alive(nats_pid) or process_alive(redis_pid):
        if time.monotonic() > deadline:
            pytest.fail(
                f"servers outlived a killed `agentmesh up`: nats-server alive "
                f"{process_alive(nats_pid)}, redis-server alive {process_alive(redis_pid)}"
            )
        time.sleep(0.02)


def test_the_banner_gives_both_urls_the_echo_agent_and_how_to_attach_an_agent(
    mesh: Mesh,
) -> None:
    banner = mesh.up.output
    assert f"NATS   nats://127.0.0.1:{mesh.nats_port}  (JetStream on, pid " in banner
    assert f"Redis  redis://127.0.0.1:{mesh.redis_port}/0  (pid " in banner
    assert f"data {mesh.data_dir}" in banner
    assert "  agents echo\n" in banner
    assert "agentmesh send echo" in banner
    assert "agentmesh agent run mymodule:agent" in banner
    gateway = f"http://127.0.0.1:{mesh.gateway_port}"
    assert f"Gateway {gateway}  (API docs: {gateway}/docs)" in banner
    assert "  models echo (built-in, repeats your message; no key needed)\n" in banner
    assert f"curl {gateway}/v1/chat/completions" in banner
    assert f"  MCP    {gateway}/mcp  (1 server: time; 2 tools)\n" in banner
    assert f"curl {gateway}/v1/tools/call" in banner
    assert "warning" not in banner


def test_the_banner_of_a_mesh_off_the_default_ports_gives_the_exports_that_reach_it(
    agentmesh_exe: str, mesh: Mesh
) -> None:
    exports = dict(re.findall(r"^ *export (AGENTMESH_\w+)=(\S+)$", mesh.up.output, re.MULTILINE))
    assert exports == {
        "AGENTMESH_NATS_URL": f"nats://127.0.0.1:{mesh.nats_port}",
        "AGENTMESH_REDIS_URL": f"redis://127.0.0.1:{mesh.redis_port}/0",
    }
    result = send(agentmesh_exe, clean_env(**exports), "echo", "hi")
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_the_echo_model_of_up_answers_through_its_gateways_openai_api(mesh: Mesh) -> None:
    gateway = f"http://127.0.0.1:{mesh.gateway_port}"
    reply = httpx.post(
        f"{gateway}/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "hello llm"}]},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == "hello llm"
    listed = httpx.get(f"{gateway}/v1/models", timeout=10).json()
    assert "echo" in [m["id"] for m in listed["data"]]


async def test_the_time_tools_of_up_answer_through_its_gateway_and_its_mcp_endpoint(
    mesh: Mesh,
) -> None:
    gateway = f"http://127.0.0.1:{mesh.gateway_port}"
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.post(f"{gateway}/v1/tools/call", json=TIME_CALL)
    assert reply.status_code == 200, reply.text
    assert reply.json()["isError"] is False
    assert reply.json()["structuredContent"]["timezone"] == "UTC"

    async with Client(f"{gateway}/mcp") as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        assert {"time_get_current_time", "time_convert_time"} <= listed
        result = await client.call_tool("time_get_current_time", {"timezone": "UTC"})
    assert result.is_error is False
    assert result.structured_content is not None
    assert result.structured_content["timezone"] == "UTC"


def test_up_with_no_echo_no_llm_and_no_mcp_starts_no_agent_and_serves_no_model_or_tool(
    agentmesh_exe: str, tmp_path: Path
) -> None:
    with start_mesh(agentmesh_exe, tmp_path, "--no-echo", "--no-llm", "--no-mcp") as mesh:
        assert "  agents -\n" in mesh.up.output
        assert "  models -\n" in mesh.up.output
        assert "(no MCP worker)\n" in mesh.up.output
        assert "/v1/tools/call" not in mesh.up.output
        result = send(agentmesh_exe, mesh.env, "echo", "hi")
        assert result.returncode == 1
        assert "AGENT_NOT_FOUND" in result.stderr
        reply = httpx.post(
            f"http://127.0.0.1:{mesh.gateway_port}/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "model_not_found"
        tool = httpx.post(
            f"http://127.0.0.1:{mesh.gateway_port}/v1/tools/call", json=TIME_CALL, timeout=10
        )
        assert tool.status_code == 404
        assert tool.json()["error"]["code"] == "TOOL_NOT_FOUND"


# `agentmesh up` where the time server cannot start, as when mcp-server-time is not installed.
UP_WITHOUT_TIME_SERVER = """
import agentmesh.local
agentmesh.local.MCP_SERVERS = {"mcpServers": {"time": {
    "command": "python", "args": ["-m", "agentmesh_no_such_mcp_server"]}}}
from agentmesh.cli import main
main()
"""


def test_up_whose_mcp_server_cannot_start_warns_and_runs_the_rest_of_the_mesh(
    agentmesh_exe: str, tmp_path: Path
) -> None:
    command = [sys.executable, "-c", UP_WITHOUT_TIME_SERVER]
    with start_mesh(command, tmp_path, "--no-llm") as mesh:
        assert "warning: no MCP worker, its servers did not start (time: " in mesh.up.output
        assert "(no MCP worker)\n" in mesh.up.output
        result = send(agentmesh_exe, mesh.env, "echo", "hi")
        assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr
        tool = httpx.post(
            f"http://127.0.0.1:{mesh.gateway_port}/v1/tools/call", json=TIME_CALL, timeout=10
        )
        assert tool.status_code == 404
        mesh.up.proc.send_signal(signal.SIGTERM)
        assert mesh.up.wait_for_exit() == 0, mesh.up.output
    assert "Traceback" not in mesh.up.output


@pytest.mark.parametrize("busy", ["nats", "redis"])
def test_up_on_a_port_in_use_exits_1_naming_the_port_and_leaves_no_server_behind(
    agentmesh_exe: str, tmp_path: Path, busy: str
) -> None:
    nats_port, redis_port, gateway_port = free_ports(3)
    busy_port, other_port = (nats_port, redis_port) if busy == "nats" else (redis_port, nats_port)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", busy_port))
        blocker.listen()
        up = Up(
            agentmesh_exe,
            "--nats-port",
            str(nats_port),
            "--redis-port",
            str(redis_port),
            "--gateway-port",
            str(gateway_port),
            "--data-dir",
            str(tmp_path / "mesh"),
        )
        try:
            code = up.wait_for_exit(START_TIMEOUT)
        finally:
            up.close()

    assert code == 1, up.output
    assert f"port {busy_port} is already in use" in up.output
    assert "Traceback" not in up.output
    assert "is running" not in up.output  # no banner
    # With Redis's port taken, nats-server was already up: it must have been stopped again.
    assert not port_in_use(other_port)


async def test_up_runs_an_executor_so_a_task_for_the_echo_agent_completes(mesh: Mesh) -> None:
    settings = Settings(
        nats_url=f"nats://127.0.0.1:{mesh.nats_port}",
        redis_url=f"redis://127.0.0.1:{mesh.redis_port}/0",
    )
    async with MeshClient.connect(settings) as client:
        ref = await client.tasks.submit("echo", "durable hello")
        record = await client.tasks.wait(ref.task_id, timeout=20)
    assert record.status is TaskStatus.COMPLETED, record.error
    assert record.result is not None and record.result.text == "durable hello"


async def test_up_runs_a_runtime_worker_so_a_saved_agent_answers_the_cli(
    mesh: Mesh, agentmesh_exe: str
) -> None:
    from agentmesh.broker.definitions import Definitions
    from agentmesh.broker.durable import DurableState
    from agentmesh.schemas.runtime import AgentDefinition
    from tests.conftest import wait_agent

    settings = Settings(
        nats_url=f"nats://127.0.0.1:{mesh.nats_port}",
        redis_url=f"redis://127.0.0.1:{mesh.redis_port}/0",
    )
    async with MeshClient.connect(settings) as client:
        definitions = Definitions(DurableState(client.bus.nc), client.bus.subjects)
        await definitions.put_agent(AgentDefinition(agent_id="parrot", model_id="echo"))
        await wait_agent(client, "parrot")  # the worker re-reads on the change notice
    done = await asyncio.to_thread(send, agentmesh_exe, mesh.env, "parrot", "polly wants")
    assert done.returncode == 0, done.stderr
    assert "polly wants" in done.stdout
