"""Fixtures for the channel tests: gateway replicas (the channels are theirs) and an agent that
answers."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.broker.servers import free_port
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.service import ServiceKind
from tests.conftest import StartAgent, StartExecutor
from tests.gateway.conftest import (
    Replica,
    start_gateway,  # noqa: F401 - a fixture
)
from tests.waiting import until

AGENTMESH = str(Path(sys.executable).parent / "agentmesh")


@pytest.fixture
async def helper(start_agent: StartAgent, start_executor: StartExecutor) -> list[Message]:
    """Agent `helper` (and an executor): it answers `helper: <text>`; the messages it got."""
    got: list[Message] = []
    agent = Agent("helper")

    @agent.handler
    def handle(msg: Message, ctx: object) -> str:
        got.append(msg)
        return f"helper: {msg.text}"

    await start_agent(agent)
    await start_executor()
    return got


@asynccontextmanager
async def gateway_process(
    tmp_path: Path, channel: dict[str, Any], env: dict[str, str], mesh: MeshClient
) -> AsyncIterator[tuple[asyncio.subprocess.Process, Replica]]:
    """A gateway in its own process (to SIGKILL) with `channel` from a mesh file, once it is
    announced and answers HTTP; killed at the end if it still runs."""
    file = tmp_path / "mesh.yaml"
    file.write_text(yaml.safe_dump({"channels": [channel]}))
    port = free_port()
    replica = Replica(url=f"http://127.0.0.1:{port}", port=port)
    gateway = await asyncio.create_subprocess_exec(
        AGENTMESH,
        *("gateway", "--port", str(port), "-f", str(file)),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def listening() -> bool:  # announced before uvicorn listens: refused until then
        try:
            async with httpx.AsyncClient(base_url=replica.url) as http:
                await http.get("/healthz")
        except httpx.ConnectError:
            return False
        return True

    try:
        # Another process's start-up: nothing to await from here.
        services = mesh.services
        await until(lambda: services(ServiceKind.GATEWAY), timeout=30, what="the gateway announced")
        await until(listening, timeout=30, what="the gateway process listening")
        yield gateway, replica
    finally:
        if gateway.returncode is None:
            gateway.kill()
            await gateway.wait()


async def sigkill(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()
