"""Outside A2A agents as mesh agents (issue 13): an agent built with the official `a2a-sdk`
server classes (tests/workers/outside_a2a.py) on a real HTTP port, bridged into the mesh by
`A2ABridge` (in-process, or `agentmesh worker a2a` as a process), called the mesh's ways."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import Message as A2AMessage
from a2a.types.a2a_pb2 import Part, Role, SendMessageRequest, TaskState
from a2a.utils.constants import PROTOCOL_VERSION_0_3

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime import AgentDefinition
from agentmesh.broker.definitions import Definitions
from agentmesh.broker.durable import DurableState
from agentmesh.broker.settings import Settings
from agentmesh.meshconfig import parse_document
from agentmesh.schemas.errors import AgentNotFound, MeshError
from agentmesh.schemas.service import ServiceKind
from agentmesh.schemas.task import TaskStatus
from agentmesh.workers.a2a import A2ABridge, A2ASection, OutsideAgent
from agentmesh.workers.config import ConfigError
from tests.agentmesh.test_config_file import agentmesh, write
from tests.agentmesh.test_up import clean_env, free_ports
from tests.conftest import Logged, StartExecutor, wait_agent
from tests.gateway.conftest import StartGateway, start_gateway  # noqa: F401
from tests.runtime.conftest import StartModel, StartRuntime, start_model, start_runtime  # noqa: F401
from tests.runtime.scripted_llm import Reply, last_message
from tests.workers.outside_a2a import PIECES, WeatherAgent

StartBridge = Callable[..., Awaitable[A2ABridge]]


@pytest.fixture
async def weather() -> AsyncIterator[WeatherAgent]:
    agent = await WeatherAgent().start()
    yield agent
    agent.executor.release.set()
    await agent.stop()


@pytest.fixture
async def start_bridge(settings: Settings) -> AsyncIterator[StartBridge]:
    """`await start_bridge(url)`: a bridge serving the agent at `url` as `weather`, on this
    test's mesh; stopped afterwards."""
    running: list[A2ABridge] = []

    async def start(url: str) -> A2ABridge:
        section = A2ASection(agents=[OutsideAgent(agent_id="weather", url=url)])
        bridge = A2ABridge(section, retry_first=0.05)
        await bridge.start(settings)
        running.append(bridge)
        return bridge

    yield start
    for bridge in reversed(running):
        await bridge.stop()


@pytest.fixture
async def bridged(weather: WeatherAgent, start_bridge: StartBridge, mesh: MeshClient) -> A2ABridge:
    bridge = await start_bridge(weather.url)
    await wait_agent(mesh, "weather")
    return bridge


async def test_the_outside_agents_card_becomes_its_mesh_card(
    bridged: A2ABridge, weather: WeatherAgent, mesh: MeshClient
) -> None:
    presence = await mesh.agent("weather")
    assert presence is not None
    assert (presence.agent_name, presence.description, presence.version) == (
        "Weather",
        "Forecasts the weather.",
        "2.0.1",
    )
    assert presence.capabilities == ["forecast"]
    a2a = presence.metadata["a2a"]
    assert a2a["url"] == weather.url
    assert a2a["skills"][0] | {"tags": ["weather"]} == {
        "id": "forecast",
        "name": "Forecast",
        "description": "Tomorrow's weather.",
        "tags": ["weather"],
    }
    assert (a2a["input_modes"], a2a["output_modes"]) == (
        ["text/plain"],
        ["text/plain", "application/json"],
    )
    assert a2a["capabilities"]["streaming"] is True
    assert [i.via for i in presence.instances] == ["a2a"]
    (record,) = await mesh.services(ServiceKind.A2A_BRIDGE)
    assert record.serves.model_dump()["hosts"] == ["weather"]


async def test_a_call_is_send_message_in_the_conversations_context(
    bridged: A2ABridge, weather: WeatherAgent, mesh: MeshClient
) -> None:
    reply = await mesh.ask("weather", "Paris", conversation_id="conv-1")
    assert reply.text == "sunny in Paris"
    assert reply.conversation_id == "conv-1" and reply.from_agent_id == "weather"
    assert weather.executor.seen[-1].context_id == "conv-1" and not weather.executor.continued
    assert reply.metadata["a2a_task_id"] and reply.metadata["a2a_context_id"] == "conv-1"
    assert weather.methods.seen[-1] == "SendMessage"
    # Without a conversation: a new context, which the reply names as its conversation.
    fresh = await mesh.ask("weather", "Oslo")
    assert fresh.conversation_id == weather.executor.seen[-1].context_id != "conv-1"
    # An agent that answers with a Message, no task.
    plain = await mesh.ask("weather", "plain hello")
    assert plain.text == "plain: plain hello" and "a2a_task_id" not in plain.metadata


async def test_an_agent_that_speaks_a2a_0_3_is_bridged_too(
    start_bridge: StartBridge, mesh: MeshClient
) -> None:
    legacy = await WeatherAgent(version=PROTOCOL_VERSION_0_3).start()
    try:
        await start_bridge(legacy.url)
        await wait_agent(mesh, "weather")
        assert (await mesh.ask("weather", "Turin")).text == "sunny in Turin"
        chunks = [c async for c in mesh.stream("weather", "stream on")]
        assert "".join(c.text for c in chunks) == "".join(PIECES)
        assert legacy.methods.seen == ["message/send", "message/stream"]  # the 0.3 names
    finally:
        await legacy.stop()


async def test_a_streaming_call_relays_the_artifact_updates_as_chunks(
    bridged: A2ABridge, weather: WeatherAgent, mesh: MeshClient
) -> None:
    chunks = [c async for c in mesh.stream("weather", "stream it", conversation_id="c-2")]
    assert [c.text for c in chunks] == [*PIECES, ""]
    assert chunks[-1].metadata["a2a_task_id"] and "task_state" not in chunks[-1].metadata
    assert weather.methods.seen[-1] == "SendStreamingMessage"
    assert weather.executor.seen[-1].context_id == "c-2"


async def test_an_a2a_client_reaches_the_bridged_agent_through_the_gateway(
    bridged: A2ABridge,
    start_gateway: StartGateway,  # noqa: F811
    start_executor: StartExecutor,
) -> None:
    await start_executor()
    replica = await start_gateway()
    async with httpx.AsyncClient(timeout=30) as http:
        card = await A2ACardResolver(http, f"{replica.url}/a2a/weather").get_agent_card()
        assert card.name == "Weather" and [s.id for s in card.skills] == ["forecast"]
        assert list(card.default_output_modes) == ["text/plain", "application/json"]
        message = A2AMessage(role=Role.ROLE_USER, message_id=uuid.uuid4().hex)
        message.parts.append(Part(text="Quito"))
        client = ClientFactory(ClientConfig(httpx_client=http, streaming=False)).create(card)
        request = SendMessageRequest(message=message)
        (response,) = [r async for r in client.send_message(request)]
        await client.close()
    task = response.task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.artifacts[0].parts[0].text == "sunny in Quito"


async def test_agentmesh_send_reaches_the_bridged_agent(
    bridged: A2ABridge, env_for: dict[str, str], agentmesh_exe: str
) -> None:
    async def send(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            agentmesh_exe,
            "send",
            "weather",
            *args,
            env=env_for,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return out.decode().strip()

    assert await send("Lima") == "sunny in Lima"
    assert await send("stream please", "--stream") == "".join(PIECES)


async def test_a_durable_task_runs_on_the_bridged_agent(
    bridged: A2ABridge, weather: WeatherAgent, mesh: MeshClient, start_executor: StartExecutor
) -> None:
    await start_executor()
    ref = await mesh.tasks.submit("weather", "Rome")
    done = await mesh.tasks.wait(ref.task_id, timeout=20)
    assert done.status is TaskStatus.COMPLETED and done.result is not None
    assert done.result.text == "sunny in Rome"
    failed = await mesh.tasks.wait((await mesh.tasks.submit("weather", "fail")).task_id, timeout=20)
    assert failed.status is TaskStatus.FAILED and failed.error is not None
    assert failed.error.code == "INTERNAL" and "the service is down" in failed.error.message
    # Cancelling the task cancels the remote task.
    slow = await mesh.tasks.submit("weather", "slow one")
    async with asyncio.timeout(20):
        await weather.executor.started.wait()
    await mesh.tasks.cancel(slow.task_id)
    async with asyncio.timeout(20):
        await weather.executor.cancel_seen.wait()
    assert (await mesh.tasks.wait(slow.task_id, timeout=20)).status is TaskStatus.CANCELED
    assert "CancelTask" in weather.methods.seen
    # A question: the task waits for its caller, whose answer continues the remote task.
    asked = await mesh.tasks.wait(
        (await mesh.tasks.submit("weather", "ask me")).task_id, timeout=20
    )
    assert asked.status is TaskStatus.INPUT_REQUIRED and asked.result is not None
    assert asked.result.text == "Which city?"
    await mesh.tasks.answer(asked.task_id, "Porto")
    answered = await mesh.tasks.wait(asked.task_id, timeout=20)
    assert answered.status is TaskStatus.COMPLETED and answered.result is not None
    assert answered.result.text == "booked for Porto"
    assert weather.executor.continued == [asked.result.metadata["a2a_task_id"]]


async def test_a_runtime_agent_delegates_to_the_bridged_agent(
    bridged: A2ABridge,
    start_model: StartModel,  # noqa: F811
    start_runtime: StartRuntime,  # noqa: F811
    mesh: MeshClient,
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=f"planned: {last['content']}")
        return Reply(tool_calls=[("delegate", {"agent_id": "weather", "task": "Lisbon"})])

    await start_model(brain)
    await start_runtime()
    definitions = Definitions(DurableState(mesh.bus.nc), mesh.bus.subjects)
    await definitions.put_agent(
        AgentDefinition(agent_id="planner", model_id="m", tool_ids=["delegate"])
    )
    await wait_agent(mesh, "planner")
    reply = await mesh.ask("planner", "plan my trip")
    assert reply.text == "planned: sunny in Lisbon"


@pytest.mark.parametrize("streaming", [False, True], ids=["send", "stream"])
async def test_a_cancelled_call_cancels_the_remote_task(
    bridged: A2ABridge, weather: WeatherAgent, mesh: MeshClient, streaming: bool
) -> None:
    async def call() -> None:
        if streaming:
            async for _ in mesh.stream("weather", "slow down", timeout=60):
                pass
        else:
            await mesh.ask("weather", "slow down", timeout=60)

    running = asyncio.ensure_future(call())
    async with asyncio.timeout(10):
        await weather.executor.started.wait()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    async with asyncio.timeout(10):
        await weather.executor.cancel_seen.wait()
    assert weather.executor.cancelled and "CancelTask" in weather.methods.seen
    if not streaming:  # a blocking SendMessage had not named its task: found with ListTasks
        assert "ListTasks" in weather.methods.seen


async def test_input_required_is_a_reply_the_conversations_next_message_answers(
    bridged: A2ABridge, weather: WeatherAgent, mesh: MeshClient
) -> None:
    question = await mesh.ask("weather", "ask me", conversation_id="trip-1")
    assert question.text == "Which city?"
    assert question.metadata["task_state"] == "input-required"
    task_id = question.metadata["a2a_task_id"]
    answer = await mesh.ask("weather", "Porto", conversation_id="trip-1")
    assert answer.text == "booked for Porto" and answer.metadata["a2a_task_id"] == task_id
    assert weather.executor.continued == [task_id]
    # Answered: the conversation's next message is a new task.
    again = await mesh.ask("weather", "Faro", conversation_id="trip-1")
    assert again.text == "sunny in Faro" and again.metadata["a2a_task_id"] != task_id
    # Streamed: the closing chunk is the question, with the same metadata.
    chunks = [c async for c in mesh.stream("weather", "ask again", conversation_id="trip-2")]
    assert chunks[-1].text == "Which city?"
    assert chunks[-1].metadata["task_state"] == "input-required"
    streamed_task = chunks[-1].metadata["a2a_task_id"]
    answer = await mesh.ask("weather", "Braga", conversation_id="trip-2")
    assert answer.text == "booked for Braga" and answer.metadata["a2a_task_id"] == streamed_task


async def test_after_a_bridge_restart_a_question_is_answered_by_naming_its_task(
    weather: WeatherAgent, start_bridge: StartBridge, mesh: MeshClient
) -> None:
    first = await start_bridge(weather.url)
    await wait_agent(mesh, "weather")
    question = await mesh.ask("weather", "ask me", conversation_id="trip-3")
    await first.stop()
    await start_bridge(weather.url)
    await wait_agent(mesh, "weather")
    task_id = question.metadata["a2a_task_id"]
    answer = await mesh.ask(
        "weather", "Evora", conversation_id="trip-3", metadata={"a2a_task_id": task_id}
    )
    assert answer.text == "booked for Evora" and answer.metadata["a2a_task_id"] == task_id


@pytest.mark.parametrize("streaming", [False, True], ids=["send", "stream"])
async def test_a_message_naming_a_finished_or_unknown_task_starts_a_new_one(
    bridged: A2ABridge, mesh: MeshClient, streaming: bool
) -> None:
    done = await mesh.ask("weather", "Paris", conversation_id="c-7")
    for named in (done.metadata["a2a_task_id"], "no-such-task"):
        metadata = {"a2a_task_id": named}
        if streaming:
            stream = mesh.stream("weather", "Nice", conversation_id="c-7", metadata=metadata)
            chunks = [c async for c in stream]
            text, task_id = "".join(c.text for c in chunks), chunks[-1].metadata["a2a_task_id"]
        else:
            reply = await mesh.ask("weather", "Nice", conversation_id="c-7", metadata=metadata)
            text, task_id = reply.text, reply.metadata["a2a_task_id"]
        assert text == "sunny in Nice" and task_id not in (named, done.metadata["a2a_task_id"])


@pytest.mark.parametrize(("text", "state"), [("fail", "failed"), ("reject", "rejected")])
async def test_a_failed_or_rejected_remote_task_is_an_internal_error(
    bridged: A2ABridge, mesh: MeshClient, text: str, state: str
) -> None:
    with pytest.raises(MeshError) as failed:
        await mesh.ask("weather", text)
    assert failed.value.code == "INTERNAL"
    assert failed.value.details["a2a_state"] == state and failed.value.details["a2a_task_id"]
    said = "the service is down" if text == "fail" else "not my job"
    assert f"is {state}: {said}" in failed.value.message
    with pytest.raises(MeshError) as streamed:
        async for _ in mesh.stream("weather", text):
            pass
    assert streamed.value.code == "INTERNAL" and streamed.value.details["a2a_state"] == state


async def test_an_agent_unreachable_at_start_is_tried_again_until_it_is_served(
    start_bridge: StartBridge, mesh: MeshClient
) -> None:
    weather = WeatherAgent()  # its port, nothing listening yet
    with Logged("agentmesh.workers.a2a.bridge", "is not served") as logged:
        bridge = await start_bridge(weather.url)
        await logged.wait(2)  # the first try, and the next
    assert bridge.running and "cannot read the card" in (bridge.hosted["weather"].error or "")
    with pytest.raises(AgentNotFound):
        await mesh.ask("weather", "Paris")
    await weather.start()
    try:
        await wait_agent(mesh, "weather")
        assert (await mesh.ask("weather", "Paris")).text == "sunny in Paris"
    finally:
        await weather.stop()


async def test_an_agent_unreachable_during_a_call_is_unavailable_at_once(
    weather: WeatherAgent, start_bridge: StartBridge, mesh: MeshClient
) -> None:
    await start_bridge(weather.url)
    await wait_agent(mesh, "weather")
    await weather.stop()
    with pytest.raises(MeshError) as failed:
        async with asyncio.timeout(5):
            await mesh.ask("weather", "Paris", timeout=30)
    assert failed.value.code == "UNAVAILABLE"
    assert f"cannot reach the outside agent at {weather.url}" in failed.value.message


async def test_two_bridges_share_the_calls_to_the_agent(
    weather: WeatherAgent, start_bridge: StartBridge, mesh: MeshClient
) -> None:
    one, two = await start_bridge(weather.url), await start_bridge(weather.url)
    await wait_agent(mesh, "weather", 2)
    replies = await asyncio.gather(*(mesh.ask("weather", f"city {i}") for i in range(20)))
    assert [r.text for r in replies] == [f"sunny in city {i}" for i in range(20)]
    assert one.bus.served > 0 and two.bus.served > 0
    # At least once each: on a loaded machine a call not acknowledged within the ack timeout is
    # sent again (PROTOCOL §4), and the cancelled first attempt counts as served too.
    assert one.bus.served + two.bus.served >= 20


async def test_a_bridge_killed_mid_call_fails_the_call_at_once(
    weather: WeatherAgent, mesh: MeshClient, env_for: dict[str, str], agentmesh_exe: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        agentmesh_exe,
        "worker",
        "a2a",
        "--url",
        weather.url,
        "--agent-id",
        "weather",
        env=env_for,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await wait_agent(mesh, "weather")
        call = asyncio.ensure_future(mesh.ask("weather", "slow going", timeout=60))
        async with asyncio.timeout(10):
            await weather.executor.started.wait()
        os.kill(proc.pid, signal.SIGKILL)
        with pytest.raises(MeshError) as failed:
            async with asyncio.timeout(10):  # noticed by the missed keep-alives, not waited out
                await call
        assert failed.value.code == "UNAVAILABLE" and "stopped responding" in failed.value.message
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_up_f_runs_a_bridge_for_the_files_a2a_section_and_applies_its_edits(
    weather: WeatherAgent, agentmesh_exe: str, tmp_path: Path
) -> None:
    nats_port, redis_port, gateway_port = free_ports(3)
    servers = (
        f"servers: {{nats_port: {nats_port}, redis_port: {redis_port}, "
        f"data_dir: {json.dumps(str(tmp_path / 'mesh'))}}}\n"
        f"gateway: {{port: {gateway_port}}}\n"
    )
    agents = f"a2a:\n  agents:\n    - {{agent_id: weather, url: '{weather.url}'}}\n"
    path = write(tmp_path / "mesh.yaml", servers + agents)
    local = Settings(
        nats_url=f"nats://127.0.0.1:{nats_port}", redis_url=f"redis://127.0.0.1:{redis_port}/0"
    )
    async with agentmesh(agentmesh_exe, clean_env(), "up", "-f", path, merged=True) as up:
        await up.wait_for("Ctrl-C stops everything")
        assert f"weather (A2A {weather.url})" in "".join(up.lines)
        async with MeshClient.connect(local) as mesh:
            assert (await mesh.ask("weather", "Bern")).text == "sunny in Bern"
            assert len(await mesh.services(ServiceKind.A2A_BRIDGE)) == 1
            more = agents + f"    - {{agent_id: meteo, url: '{weather.url}'}}\n"
            write(tmp_path / "mesh.yaml", servers + more)
            await up.wait_for("applied the new version")
            await wait_agent(mesh, "meteo")
            assert (await mesh.ask("meteo", "Graz")).text == "sunny in Graz"
        log = await up.stop()
    assert up.proc.returncode == 0, log
    assert "Traceback" not in log


def test_the_mesh_files_a2a_section_and_the_command_lines_errors(
    agentmesh_exe: str, tmp_path: Path
) -> None:
    doc = parse_document(
        "a2a:\n  agents:\n    - {agent_id: weather, url: 'http://h:1/', headers: {X-K: '${K}'}}\n",
        source="mesh.yaml",
    )
    section = doc.a2a(environ={"K": "secret"})
    assert section is not None
    assert section.agents[0].url == "http://h:1" and section.agents[0].headers == {"X-K": "secret"}
    assert parse_document("models: []\n", source="m.yaml").a2a() is None
    with pytest.raises(ConfigError, match=r"a2a\.agents\.0\.url: .* is not an http"):
        parse_document("a2a: {agents: [{agent_id: w, url: 'ftp://x'}]}", source="m").a2a()

    def worker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [agentmesh_exe, "worker", "a2a", *args], capture_output=True, text=True, timeout=60
        )

    assert "give --url and --agent-id" in worker().stderr
    assert "go together" in worker("--url", "http://h:1").stderr
    bad = worker("--url", "http://h:1", "--agent-id", "w", "--header", "novalue")
    assert bad.returncode == 1 and "use NAME=VALUE" in bad.stderr
    (tmp_path / "mesh.yaml").write_text("models: []\n")
    empty = worker("-f", str(tmp_path / "mesh.yaml"))
    assert empty.returncode == 1 and "no 'a2a' section" in empty.stderr
