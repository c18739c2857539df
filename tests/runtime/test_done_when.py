"""The issue's "done when", end to end on real servers: one saved agent with an MCP tool, a
function tool and a skill answers through the CLI, HTTP, a task and delegation from another
agent."""

from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime.config import RuntimeSection
from agentmesh.agents.runtime.skills import parse_skill
from agentmesh.agents.runtime.worker import RuntimeWorker
from agentmesh.broker.definitions import Definitions, SkillRecord, digest, zip_directory
from agentmesh.broker.durable import DurableState
from agentmesh.broker.settings import Settings
from agentmesh.schemas.runtime import AgentDefinition
from agentmesh.schemas.task import TaskStatus
from tests.conftest import StartExecutor
from tests.gateway.conftest import StartGateway, start_gateway  # noqa: F401 - the fixture
from tests.mcp.fixtures import TIME, StartMCPWorker
from tests.runtime.conftest import StartModel
from tests.runtime.scripted_llm import Reply, last_message

AGENTMESH = shutil.which("agentmesh", path=str(Path(sys.executable).parent)) or "agentmesh"
SKILL = "stock-report"


def brain(body: dict[str, Any]) -> Reply:
    """The inventory agent calls its three tools at once, then reports what each said; the
    boss agent delegates to it and relays its report."""
    messages = body["messages"]
    last = last_message(body)
    names = [t["function"]["name"] for t in body.get("tools") or []]
    if "delegate" in names:
        if last["role"] == "tool":
            return Reply(content=f"boss relays: {last['content']}")
        return Reply(tool_calls=[("delegate", {"agent_id": "inventory", "task": "report"})])
    if last["role"] == "user":
        return Reply(
            tool_calls=[
                ("time_get_current_time", {"timezone": "UTC"}),
                ("lookup", {"key": "bolts"}),
                (f"skill_{SKILL}", {}),
            ]
        )
    results = [m["content"] for m in messages if m["role"] == "tool"]
    time_ok = '"timezone": "UTC"' in results[0]
    skill_ok = "COUNT-TWICE" in results[2]
    return Reply(content=f"time={time_ok} {results[1]} skill={skill_ok}")


ANSWER = "time=True inventory[bolts] = 42 skill=True"


def write_skill(root: Path) -> Path:
    skill = root / "stock"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text(
        textwrap.dedent(
            f"""\
            ---
            name: {SKILL}
            description: How to report stock levels.
            ---
            COUNT-TWICE before you report.
            """
        )
    )
    return skill


async def test_a_saved_agent_with_an_mcp_tool_a_function_tool_and_a_skill_answers_everywhere(
    start_model: StartModel,
    start_mcp_worker: StartMCPWorker,
    start_executor: StartExecutor,
    start_gateway: StartGateway,  # noqa: F811
    mesh: MeshClient,
    settings: Settings,
    env_for: dict[str, str],
    tmp_path: Path,
) -> None:
    await start_mcp_worker({"time": TIME})
    await start_model(brain)
    definitions = Definitions(DurableState(mesh.bus.nc), mesh.bus.subjects)
    # The skill goes into the mesh (as POST /v1/tools/skill stores it); the worker fetches it.
    source = write_skill(tmp_path / "src")
    archive = zip_directory(source)
    parsed = parse_skill(source)
    await definitions.put_skill(
        SkillRecord(
            skill_id=SKILL,
            name=parsed.name,
            description=parsed.description,
            digest=digest(archive),
            size=len(archive),
        ),
        archive,
    )
    await definitions.put_agent(
        AgentDefinition(
            agent_id="inventory",
            model_id="m",
            tool_ids=["time_get_current_time", "lookup"],
            skills=[f"skill_{SKILL}"],
        )
    )
    await definitions.put_agent(
        AgentDefinition(agent_id="boss", model_id="m", tool_ids=["delegate"])
    )
    section = RuntimeSection(function_tools=["tests.runtime.sample_tools:TOOLS"])
    worker = RuntimeWorker(section=section, cache_dir=tmp_path / "cache")
    await worker.start(settings)
    try:
        # The SDK (ctx.ask is the same call).
        assert (await mesh.ask("inventory", "report")).text == ANSWER
        # The CLI.
        proc = await asyncio.create_subprocess_exec(
            AGENTMESH,
            "send",
            "inventory",
            "report",
            env=env_for,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == ANSWER
        # HTTP: the seed's /gateway/send.
        replica = await start_gateway()
        async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:
            body = {
                "to_agent_id": "inventory",
                "content": [{"type": "text", "text": "report"}],
                "wait": True,
            }
            answer = (await http.post("/gateway/send", json=body)).json()
        assert answer["result"]["result"] == ANSWER
        # A durable task.
        await start_executor()
        ref = await mesh.tasks.submit("inventory", "report")
        record = await mesh.tasks.wait(ref.task_id, timeout=30)
        assert record.status is TaskStatus.COMPLETED and record.result is not None
        assert record.result.text == ANSWER
        # Delegation from another agent.
        assert (await mesh.ask("boss", "what is in stock?")).text == f"boss relays: {ANSWER}"
    finally:
        await worker.stop()
