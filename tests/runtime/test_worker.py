"""Runtime workers: saved agents served as mesh agents by every worker, live updates and
deletes, sessions continued on another worker, aborts, ad-hoc sub-agents on any worker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime import AgentDefinition, InferenceRequest, StreamEvent
from agentmesh.agents.runtime.worker import RuntimeWorker
from agentmesh.broker.definitions import Definitions
from agentmesh.broker.durable import DurableState
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import AgentNotFound, Cancelled
from agentmesh.schemas.task import TaskStatus
from tests.conftest import StartExecutor, wait_agent
from tests.runtime.conftest import StartModel, StartRuntime
from tests.runtime.scripted_llm import Reply, last_message


@pytest.fixture
def definitions(mesh: MeshClient) -> Definitions:
    return Definitions(DurableState(mesh.bus.nc), mesh.bus.subjects)


async def synced(*workers: RuntimeWorker) -> None:
    for worker in workers:
        worker.synced.clear()
        worker._wake.set()
    async with asyncio.timeout(10):
        for worker in workers:
            await worker.synced.wait()


async def online(mesh: MeshClient, agent_id: str, instances: int) -> None:
    await wait_agent(mesh, agent_id, instances)


def echo_brain(body: dict[str, Any]) -> Reply:
    system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
    history = len(body["messages"])
    return Reply(content=f"[{system}] {last_message(body)['content']} ({history} msgs)")


async def test_a_saved_agent_is_served_by_every_worker_as_a_mesh_agent(
    start_model: StartModel,
    start_runtime: StartRuntime,
    definitions: Definitions,
    mesh: MeshClient,
    start_executor: StartExecutor,
) -> None:
    await start_model(echo_brain)
    one, two = await start_runtime(), await start_runtime()
    await definitions.put_agent(
        AgentDefinition(
            agent_id="helper",
            name="Helper",
            model_id="m",
            system_prompt="be nice",
            description="Helps.",
            capabilities=["chat"],
        )
    )
    await synced(one, two)
    await online(mesh, "helper", 2)
    presence = await mesh.agent("helper")
    assert presence is not None and presence.agent_name == "Helper"
    reply = await mesh.ask("helper", "hi")
    assert reply.text == "[be nice] hi (2 msgs)"
    chunks = [c async for c in mesh.stream("helper", "hello")]
    assert "".join(c.text for c in chunks) == "[be nice] hello (2 msgs)"
    # Tasks reach it too, through an executor.
    await start_executor()
    ref = await mesh.tasks.submit("helper", "as a task")
    record = await mesh.tasks.wait(ref.task_id, timeout=20)
    assert record.status is TaskStatus.COMPLETED
    assert record.result is not None and record.result.text == "[be nice] as a task (2 msgs)"
    # Both workers took calls.
    served = [h.service.served for w in (one, two) for h in w.hosted.values() if h.service]
    assert sum(served) >= 3


async def test_an_update_applies_live_and_a_delete_takes_the_agent_offline(
    start_model: StartModel, start_runtime: StartRuntime, definitions: Definitions, mesh: MeshClient
) -> None:
    await start_model(echo_brain)
    worker = await start_runtime()
    definition = AgentDefinition(agent_id="shifty", model_id="m", system_prompt="v1")
    await definitions.put_agent(definition)
    await synced(worker)
    assert (await mesh.ask("shifty", "x")).text.startswith("[v1]")
    await definitions.put_agent(definition.model_copy(update={"system_prompt": "v2"}))
    await synced(worker)
    assert (await mesh.ask("shifty", "x")).text.startswith("[v2]")
    await definitions.delete_agent("shifty")
    await synced(worker)
    assert await mesh.agent("shifty") is None
    with pytest.raises(AgentNotFound):
        await mesh.ask("shifty", "x")


async def test_a_session_continues_on_another_worker(
    start_model: StartModel, start_runtime: StartRuntime, definitions: Definitions, mesh: MeshClient
) -> None:
    upstream = await start_model(echo_brain)
    one = await start_runtime()
    await definitions.put_agent(AgentDefinition(agent_id="memo", model_id="m"))
    await synced(one)
    first = await mesh.ask("memo", "my name is Ada", conversation_id="chat-1")
    assert first.text.endswith("(1 msgs)")
    two = await start_runtime()
    await synced(two)
    await one.stop()  # only the other worker is left
    second = await mesh.ask("memo", "who am I?", conversation_id="chat-1")
    assert second.text.endswith("(3 msgs)")
    assert [m["content"] for m in upstream.requests[-1]["messages"]][:1] == ["my name is Ada"]
    other = await mesh.ask("memo", "fresh", conversation_id="chat-2")
    assert other.text.endswith("(1 msgs)")


async def test_an_abort_stops_the_running_inference_on_whichever_worker_runs_it(
    start_model: StartModel, start_runtime: StartRuntime, mesh: MeshClient
) -> None:
    upstream = await start_model(lambda body: Reply(content="slow", delay=30))
    await start_runtime(), await start_runtime()
    bus = mesh.bus
    request = InferenceRequest(model_id="m", text="think long", session_id="new")
    body = pack(request.model_dump(mode="json", exclude_none=True))
    frames = bus.stream(bus.subjects.runtime_infer(), body)
    start = StreamEvent.model_validate(unpack((await anext(frames)).data))
    assert start.session_id
    async with asyncio.timeout(10):
        await upstream.started.wait()
    await bus.nc.publish(
        bus.subjects.runtime_abort(), json.dumps({"session_id": start.session_id}).encode()
    )
    with pytest.raises(Cancelled):
        async with asyncio.timeout(10):
            async for _ in frames:
                pass


async def test_a_saved_agent_delegates_to_an_adhoc_subagent_run_by_a_worker(
    start_model: StartModel, start_runtime: StartRuntime, definitions: Definitions, mesh: MeshClient
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        system = body["messages"][0]
        if system["role"] == "system" and "delegated" in system["content"]:
            return Reply(content="sub-answer")
        if last["role"] == "tool":
            return Reply(content=f"parent: {last['content']}")
        return Reply(tool_calls=[("delegate", {"task": "help"})])

    await start_model(brain)
    worker = await start_runtime()
    await definitions.put_agent(
        AgentDefinition(agent_id="boss", model_id="m", tool_ids=["delegate"])
    )
    await synced(worker)
    chunks = [c async for c in mesh.stream("boss", "go")]
    assert "".join(c.text for c in chunks) == "parent: sub-answer"
    sub_events = [
        c.metadata["runtime_event"] for c in chunks if c.metadata["runtime_event"].get("path")
    ]
    assert sub_events and all(e["path"] == ["call_1"] for e in sub_events)
