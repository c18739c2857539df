"""A runtime worker SIGKILLed mid-turn: the caller gets a clear error at once (no hang), and the
session keeps every completed turn for the next worker."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime import AgentDefinition, Fences
from agentmesh.agents.runtime.worker import RuntimeWorker
from agentmesh.broker.definitions import Definitions
from agentmesh.broker.durable import DurableState
from agentmesh.broker.settings import Settings
from agentmesh.schemas.errors import MeshError
from tests.conftest import wait_agent
from tests.runtime.conftest import StartModel
from tests.runtime.scripted_llm import Reply, last_message

AGENTMESH = shutil.which("agentmesh", path=str(Path(sys.executable).parent)) or "agentmesh"


async def test_a_worker_killed_mid_turn_fails_the_call_and_keeps_the_completed_turns(
    start_model: StartModel,
    mesh: MeshClient,
    env_for: dict[str, str],
    settings: Settings,
    tmp_path: Path,
) -> None:
    def brain(body: dict[str, object]) -> Reply:
        text = last_message(body)["content"]
        slow = "slowly" in str(text)
        return Reply(content=f"{text} ({len(body['messages'])} msgs)", delay=30 if slow else 0)

    upstream = await start_model(brain)
    definitions = Definitions(DurableState(mesh.bus.nc), mesh.bus.subjects)
    await definitions.put_agent(AgentDefinition(agent_id="memo", model_id="m"))
    proc = await asyncio.create_subprocess_exec(
        AGENTMESH,
        "worker",
        "runtime",
        env=env_for,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_agent(mesh, "memo")
        first = await mesh.ask("memo", "I am Ada", conversation_id="chat-9")
        assert first.text == "I am Ada (1 msgs)"
        upstream.started.clear()
        call = asyncio.ensure_future(
            mesh.ask("memo", "think slowly", conversation_id="chat-9", timeout=60)
        )
        async with asyncio.timeout(10):
            await upstream.started.wait()  # the second turn is at the model
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(MeshError) as failed:
            async with asyncio.timeout(15):  # the dead instance is noticed, not waited out
                await call
        assert failed.value.code == "UNAVAILABLE" and "stopped responding" in failed.value.message
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    worker = RuntimeWorker(fences=Fences(workdir_root=tmp_path / "w"), cache_dir=tmp_path / "s")
    await worker.start(settings)
    try:
        third = await mesh.ask("memo", "who am I?", conversation_id="chat-9")
    finally:
        await worker.stop()
    # The completed turn is there (2 messages), the killed one is not, the new one is third.
    assert third.text == "who am I? (3 msgs)"
