"""The whole mesh in one registry: two gateways, two LLM workers and an MCP worker, run as real
processes, appear in `GET /gateway/services`, `/gateway/status`, `agentmesh status` and
`agentmesh ps`; a SIGKILLed one goes offline at the heartbeat timeout, a stopped one at once."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.schemas.codec import decode
from agentmesh.schemas.service import ServiceEvent
from tests.agentmesh.test_cli import ROOT, run_cli
from tests.mcp.fixtures import DEMO_STDIO

START_TIMEOUT = 30.0
MODELS = "models:\n  - name: echo\n    deployments: [{provider: echo, model: echo}]\n"


@dataclass
class Mesh:
    gateways: list[tuple[asyncio.subprocess.Process, int]] = field(default_factory=list)
    llm: list[asyncio.subprocess.Process] = field(default_factory=list)
    mcp: list[asyncio.subprocess.Process] = field(default_factory=list)
    events: asyncio.Queue[ServiceEvent] = field(default_factory=asyncio.Queue)

    @property
    def procs(self) -> list[asyncio.subprocess.Process]:
        return [p for p, _ in self.gateways] + self.llm + self.mcp


@pytest.fixture
async def processes(
    agentmesh_exe: str, env_for: dict[str, str], mesh: MeshClient, tmp_path: Path
) -> AsyncIterator[Mesh]:
    """The five processes, started; all killed afterwards (by pid)."""
    out = Mesh()

    async def on_event(msg: Any) -> None:
        out.events.put_nowait(decode(msg.data, ServiceEvent))

    sub = await mesh.bus.nc.subscribe(mesh.bus.subjects.service_events(), cb=on_event)
    (tmp_path / "models.yaml").write_text(MODELS)
    (tmp_path / "mcp.json").write_text(json.dumps({"mcpServers": {"demo": DEMO_STDIO}}))

    async def spawn(*args: str, log: bool = False) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            agentmesh_exe,
            *args,
            env=env_for,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if log else asyncio.subprocess.DEVNULL,
        )

    try:
        for _ in range(2):
            port = free_port()
            out.gateways.append((await spawn("gateway", "--port", str(port), log=True), port))
            out.llm.append(await spawn("worker", "llm", "--config", str(tmp_path / "models.yaml")))
        out.mcp.append(
            await spawn("worker", "mcp", "--config", str(tmp_path / "mcp.json"), log=True)
        )
        yield out
    finally:
        await sub.unsubscribe()
        for proc in out.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def services(port: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        response = await http.get("/gateway/services")
        response.raise_for_status()
        return response.json()["services"]


def kinds(listed: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for record in listed:
        out[record["kind"]] = out.get(record["kind"], 0) + 1
    return out


async def logged(proc: asyncio.subprocess.Process, text: bytes) -> None:
    """Read the process's log until a line holds `text`."""
    assert proc.stderr is not None
    while text not in (line := await proc.stderr.readline()):
        assert line, f"the process exited before logging {text!r}"


async def started(mesh: Mesh) -> None:
    """Every process says it is ready: gateways listen, the MCP worker serves its server (after
    announcing it), and both LLM workers have announced themselves (their online events)."""
    async with asyncio.timeout(START_TIMEOUT):
        for proc, _ in mesh.gateways:
            await logged(proc, b"Uvicorn running on")
        await logged(mesh.mcp[0], b"serving MCP server demo")
        seen: set[str] = set()
        while len(seen) < len(mesh.llm):
            event = await mesh.events.get()
            if event.kind == "llm-worker" and event.event == "online":
                seen.add(event.instance_id)


def whole(listed: list[dict[str, Any]]) -> bool:
    mcp = [r for r in listed if r["kind"] == "mcp-worker"]
    return kinds(listed) == {"gateway": 2, "llm-worker": 2, "mcp-worker": 1} and bool(
        mcp and mcp[0]["serves"]["tools"] == ["demo"]
    )


async def offline(events: asyncio.Queue[ServiceEvent], instance_id: str, timeout: float) -> str:
    """Wait for the offline event of `instance_id`; return its reason. Other events stay queued."""
    seen: list[ServiceEvent] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await events.get()
                if event.instance_id == instance_id and event.event == "offline":
                    return event.reason or ""
                seen.append(event)
    finally:
        for event in seen:
            events.put_nowait(event)


async def test_every_service_appears_and_a_killed_one_goes_offline_at_the_timeout(
    processes: Mesh,
    agentmesh_exe: str,
    env_for: dict[str, str],
    settings: Settings,
) -> None:
    (gw_a, port_a), (gw_b, port_b) = processes.gateways
    await started(processes)
    listed = await services(port_a)
    assert whole(listed), kinds(listed)
    assert kinds(await services(port_b)) == kinds(listed)  # any replica sees the whole mesh
    by_pid = {r["pid"]: r for r in listed}
    assert set(by_pid) == {p.pid for p in processes.procs}
    gateway_b = by_pid[gw_b.pid]
    assert gateway_b["detail"]["listen"] == f"127.0.0.1:{port_b}"
    for proc in processes.llm:
        assert by_pid[proc.pid]["serves"]["models"] == ["echo"]
    mcp = by_pid[processes.mcp[0].pid]
    assert [t["name"] for t in mcp["detail"]["servers"]["demo"]["tools"]] != []
    assert all(r["version"] and r["host"] and r["started_at"] > 0 for r in listed)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_a}") as http:
        status = (await http.get("/gateway/status")).json()
    assert status["services"]["gateway"]["instances"] == 2
    assert status["services"]["llm-worker"]["serves"] == ["echo"]
    assert status["services"]["mcp-worker"]["serves"] == ["demo"]

    table = await run_cli(agentmesh_exe, "status", env=env_for)
    assert table.code == 0, table.err
    lines = {line.split()[0]: line for line in table.out.splitlines() if line.strip()}
    assert "2 up" in lines["gateway"] and f"127.0.0.1:{port_b}" in lines["gateway"]
    assert "2 up" in lines["llm-worker"] and "models: echo" in lines["llm-worker"]
    assert "1 up" in lines["mcp-worker"] and "servers: demo" in lines["mcp-worker"]
    assert lines["nats"].split()[1] == "ok" and lines["redis"].split()[1] == "ok"
    ps = await run_cli(agentmesh_exe, "ps", "--json", env=env_for)
    assert {r["pid"] for r in json.loads(ps.out)} == set(by_pid)

    # SIGKILL: no goodbye. Listed until its heartbeat is older than the timeout, then gone.
    killed_at = time.monotonic()
    gw_b.send_signal(signal.SIGKILL)
    processes.llm[0].send_signal(signal.SIGKILL)
    gone = {gateway_b["instance_id"], by_pid[processes.llm[0].pid]["instance_id"]}
    limit = settings.heartbeat_timeout + 5 * settings.heartbeat_interval + 2
    for instance_id in gone:
        assert await offline(processes.events, instance_id, limit) == "heartbeat timeout"
    assert time.monotonic() - killed_at >= settings.heartbeat_timeout - settings.heartbeat_interval
    after = await services(port_a)
    assert kinds(after) == {"gateway": 1, "llm-worker": 1, "mcp-worker": 1}
    assert not gone & {r["instance_id"] for r in after}

    # A clean stop leaves at once: the event comes well before any timeout could pass.
    stopping = by_pid[processes.llm[1].pid]["instance_id"]
    processes.llm[1].send_signal(signal.SIGTERM)
    assert await offline(processes.events, stopping, settings.heartbeat_timeout) == "deregistered"
    assert "llm-worker" not in kinds(await services(port_a))
    async with asyncio.timeout(15):
        assert await processes.llm[1].wait() == 0
