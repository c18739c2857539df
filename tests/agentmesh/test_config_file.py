"""`-f mesh.yaml` and `--shared` for every command, run as real processes: each serves its
section, applies an edit live, and refuses an invalid one with one error."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.broker.servers import free_port
from agentmesh.schemas.errors import ModelNotFound
from tests.agentmesh.test_cli import ROOT, run_cli
from tests.agentmesh.test_meshconfig import SEED_AGENTGATEWAY
from tests.agentmesh.test_up import clean_env, free_ports
from tests.mcp.fixtures import DEMO_STDIO
from tests.workers.fake_upstreams import FakeOpenAI

HELLO = [{"role": "user", "content": "hello file"}]
ONE_MODEL = """\
models:
  - name: echo
    deployments: [{provider: echo, model: echo}]
"""
TWO_MODELS = (
    ONE_MODEL
    + """\
  - name: echo.two
    deployments: [{provider: echo, model: echo}]
"""
)
LINE_TIMEOUT = 30.0


class Process:
    """A running `agentmesh ...` whose stderr is read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, stream: Any) -> None:
        self.proc = proc
        self.stream = stream
        self.lines: list[str] = []

    async def wait_for(self, text: str) -> str:
        async with asyncio.timeout(LINE_TIMEOUT):
            while True:
                line = (await self.stream.readline()).decode()
                assert line, f"exited before logging {text!r}:\n{''.join(self.lines)}"
                self.lines.append(line)
                if text in line:
                    return line

    async def stop(self) -> str:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(15):
                rest = (await self.stream.read()).decode()
                await self.proc.wait()
        except TimeoutError:
            pytest.fail(f"did not exit within 15s of SIGTERM:\n{''.join(self.lines)}")
        self.lines.append(rest)
        return "".join(self.lines)


@asynccontextmanager
async def agentmesh(
    exe: str, env: dict[str, str], *args: str, merged: bool = False
) -> AsyncIterator[Process]:
    """`agentmesh *args`; its stderr is read (`merged`: stdout too, for `up`'s banner)."""
    proc = await asyncio.create_subprocess_exec(
        exe,
        *args,
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE if merged else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.STDOUT if merged else asyncio.subprocess.PIPE,
    )
    process = Process(proc, proc.stdout if merged else proc.stderr)
    try:
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


async def test_config_check_names_the_bad_field_and_exits_1(
    agentmesh_exe: str, env_for: dict[str, str], tmp_path: Path
) -> None:
    good = await run_cli(
        agentmesh_exe, "config", "check", "-f", write(tmp_path / "ok.yaml", TWO_MODELS), env=env_for
    )
    assert (good.code, good.out.strip()) == (0, f"{tmp_path / 'ok.yaml'}: ok"), good.err
    bad_text = ONE_MODEL.replace("provider: echo", "provider: nope") + "gateway: {port: 0}\n"
    bad = await run_cli(
        agentmesh_exe, "config", "check", "-f", write(tmp_path / "bad.yaml", bad_text), env=env_for
    )
    assert bad.code == 1
    assert bad.err.startswith("error: ") and bad.err.count("\n") == 1, bad.err
    assert "models.0.deployments.0.provider" in bad.err
    assert "gateway.port" in bad.err


async def test_worker_llm_f_applies_an_added_model_and_refuses_an_invalid_edit(
    agentmesh_exe: str, env_for: dict[str, str], mesh: MeshClient, tmp_path: Path
) -> None:
    path = tmp_path / "mesh.yaml"
    async with agentmesh(
        agentmesh_exe, env_for, "worker", "llm", "-f", write(path, ONE_MODEL)
    ) as p:
        await p.wait_for("following")
        with pytest.raises(ModelNotFound):
            await mesh.llm("echo.two").chat(HELLO)

        write(path, TWO_MODELS)
        await p.wait_for("applied the new version")
        reply = await mesh.llm("echo.two").chat(HELLO)
        assert reply["choices"][0]["message"]["content"] == "hello file"

        write(path, TWO_MODELS.replace("provider: echo, model: echo}]\n", "provider: nope}]\n", 1))
        refused = await p.wait_for("refused")
        assert "models.0.deployments.0" in refused
        assert (await mesh.llm("echo").chat(HELLO))["choices"][0]["message"]["content"]
        assert (await mesh.llm("echo.two").chat(HELLO))["choices"]
        log = await p.stop()
    assert p.proc.returncode == 0, log
    assert sum(" ERROR " in line for line in log.splitlines()) == 1, log
    assert "Traceback" not in log


async def test_worker_mcp_f_serves_the_mcp_servers_section(
    agentmesh_exe: str, env_for: dict[str, str], mesh: MeshClient, tmp_path: Path
) -> None:
    text = json.dumps({"mcpServers": {"demo": DEMO_STDIO}})
    path = write(tmp_path / "mesh.json", text)  # JSON is a mesh file too
    async with agentmesh(agentmesh_exe, env_for, "worker", "mcp", "-f", path) as p:
        await p.wait_for("serving MCP server demo")
        assert (await mesh.tools.call("demo", "echo", {"text": "from file"})).text == "from file"
        log = await p.stop()
    assert p.proc.returncode == 0, log


async def test_gateway_f_listens_on_its_sections_port_and_applies_a_new_body_limit(
    agentmesh_exe: str, env_for: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    path = tmp_path / "mesh.yaml"
    body = {"model": "nope", "messages": [{"role": "user", "content": "x" * 300}]}
    write(path, f"gateway: {{port: {port}}}\n")
    async with agentmesh(agentmesh_exe, env_for, "gateway", "-f", str(path)) as p:
        await p.wait_for("Uvicorn running")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 404
            write(path, f"gateway: {{port: {port}, max_body_bytes: 200}}\n")
            await p.wait_for("applied gateway.max_body_bytes")
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 413
        log = await p.stop()
    assert p.proc.returncode == 0, log


async def test_config_apply_is_followed_by_a_worker_started_with_shared(
    agentmesh_exe: str, env_for: dict[str, str], mesh: MeshClient, tmp_path: Path
) -> None:
    path = write(tmp_path / "mesh.yaml", ONE_MODEL)
    applied = await run_cli(agentmesh_exe, "config", "apply", "-f", path, env=env_for)
    assert applied.code == 0, applied.err
    assert "revision" in applied.out
    async with agentmesh(agentmesh_exe, env_for, "worker", "llm", "--shared") as p:
        await p.wait_for("following the shared config")
        assert (await mesh.llm("echo").chat(HELLO))["choices"]

        write(tmp_path / "mesh.yaml", TWO_MODELS)
        applied = await run_cli(agentmesh_exe, "config", "apply", "-f", path, env=env_for)
        assert applied.code == 0, applied.err
        await p.wait_for("applied the new version")
        assert (await mesh.llm("echo.two").chat(HELLO))["choices"]
        log = await p.stop()
    assert p.proc.returncode == 0, log


async def test_a_shared_worker_with_no_shared_config_exits_1_saying_how_to_write_one(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    env = {**env_for, "AGENTMESH_PREFIX": env_for["AGENTMESH_PREFIX"] + "none"}
    result = await run_cli(agentmesh_exe, "worker", "llm", "--shared", env=env)
    assert result.code == 1
    assert "agentmesh config apply -f mesh.yaml" in result.err
    assert "Traceback" not in result.err


async def test_up_f_runs_the_seeds_agentgateway_config_unchanged(
    agentmesh_exe: str, tmp_path: Path
) -> None:
    """The seed's file, as written; the environment points its openAI provider at a fake."""
    upstream = await FakeOpenAI(reply="hi from the fake OpenAI").start()
    config = write(tmp_path / "config.yaml", SEED_AGENTGATEWAY)
    nats_port, redis_port, gateway_port = free_ports(3)
    env = clean_env(OPENAI_BASE_URL=upstream.base_url, OPENAI_API_KEY="sk-fake")
    args = [
        *("up", "-f", config, "--nats-port", str(nats_port), "--redis-port", str(redis_port)),
        # The file's mcp.port (3000) may be taken on this machine: a flag wins over the file.
        *("--gateway-port", str(gateway_port), "--data-dir", str(tmp_path / "mesh")),
    ]
    try:
        async with agentmesh(agentmesh_exe, env, *args, merged=True) as up:
            await up.wait_for("Ctrl-C stops everything")
            banner = "".join(up.lines)
            assert "gpt-3.5-turbo (openai)" in banner
            async with httpx.AsyncClient(timeout=10) as http:
                reply = await http.post(
                    f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
                    json={"model": "gpt-3.5-turbo", "messages": HELLO},
                )
            assert reply.status_code == 200, reply.text
            assert reply.json()["choices"][0]["message"]["content"] == "hi from the fake OpenAI"
            assert upstream.requests[0]["headers"]["authorization"] == "Bearer sk-fake"
            log = await up.stop()
    finally:
        await upstream.stop()
    assert up.proc.returncode == 0, log
    assert "Traceback" not in log


async def test_up_f_applies_an_edit_to_every_part_it_runs_and_refuses_a_bad_one(
    agentmesh_exe: str, tmp_path: Path
) -> None:
    """One `up -f` process: an edit adds a model and lowers the gateway's body limit, live."""
    nats_port, redis_port, gateway_port = free_ports(3)
    servers = (
        f"servers: {{nats_port: {nats_port}, redis_port: {redis_port}, "
        f"data_dir: {json.dumps(str(tmp_path / 'mesh'))}}}\n"
        f"gateway: {{port: {gateway_port}}}\n"
    )
    path = write(tmp_path / "mesh.yaml", servers + ONE_MODEL)
    url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"

    async def chat(http: httpx.AsyncClient, model: str, text: str = "hi") -> httpx.Response:
        messages = [{"role": "user", "content": text}]
        return await http.post(url, json={"model": model, "messages": messages})

    async with agentmesh(agentmesh_exe, clean_env(), "up", "-f", path, merged=True) as up:
        await up.wait_for("Ctrl-C stops everything")
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await chat(http, "echo")).status_code == 200
            assert (await chat(http, "echo.two")).status_code == 404

            limit = f"gateway: {{port: {gateway_port}, max_body_bytes: 2000}}"
            limited = servers.replace(f"gateway: {{port: {gateway_port}}}", limit)
            write(tmp_path / "mesh.yaml", limited + TWO_MODELS)
            await up.wait_for("applied the new version")
            assert (await chat(http, "echo.two")).status_code == 200
            assert (await chat(http, "echo", "x" * 5000)).status_code == 413

            write(tmp_path / "mesh.yaml", limited + TWO_MODELS + "  - name: bad\n")
            refused = await up.wait_for("refused the new version")
            assert "models" in refused
            assert (await chat(http, "echo.two")).status_code == 200  # still in force
        log = await up.stop()
    assert up.proc.returncode == 0, log
    assert "Traceback" not in log
