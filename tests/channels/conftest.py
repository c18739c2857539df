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
    try:
        async with asyncio.timeout(30), httpx.AsyncClient(base_url=replica.url) as http:
            while not await mesh.services(ServiceKind.GATEWAY):  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # another process's start-up
            while True:  # announced before uvicorn listens: a refused connection is tried again
                try:
                    await http.get("/healthz")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
        yield gateway, replica
    finally:
        if gateway.returncode is None:
            gateway.kill()
            await gateway.wait()


async def sigkill(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGKILL)
    await process.wait()
