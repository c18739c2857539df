"""A task whose agent asks for more input (`needs_input`, A2A `input-required`): it waits for its
caller, and the caller's answer runs as the task's next turn, in the same conversation. Through
the Python API and `POST /v1/tasks/{task_id}/input`, with a real executor and agent."""

from __future__ import annotations

import httpx
import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.schemas.envelope import Message, TextPart
from agentmesh.schemas.errors import Conflict
from agentmesh.schemas.task import TaskStatus, needs_input
from tests.conftest import StartAgent
from tests.gateway.conftest import StartGateway
from tests.tasks.conftest import StartExecutor


async def test_the_answer_runs_as_the_next_turn_in_the_tasks_conversation(
    weather: list[Message], mesh: MeshClient
) -> None:
    ref = await mesh.tasks.submit("weather", "weather tomorrow?")
    asked = await mesh.tasks.wait(ref.task_id, timeout=20)  # returns at the question
    assert asked.status is TaskStatus.INPUT_REQUIRED and asked.finished_at is None
    assert asked.result is not None and asked.result.text == "Which city?"
    assert asked.result.metadata == {"task_state": "input-required", "asked": "city"}
    await mesh.tasks.answer(ref.task_id, "Oslo")
    with pytest.raises(Conflict):  # the answer's turn is queued, running or done: no second
        await mesh.tasks.answer(ref.task_id, "Bergen")
    done = await mesh.tasks.wait(ref.task_id, timeout=20)
    assert done.status is TaskStatus.COMPLETED and done.result is not None
    assert done.result.text == "sunny in Oslo (2 turns)"
    assert [m.text for m in done.history] == ["weather tomorrow?", "Which city?"]
    assert done.turn_start == 1 and done.attempt == 2
    first, second = weather
    assert second.conversation_id == first.conversation_id  # one conversation: one session
    assert second.to_agent_id == "weather"
    events = [e async for e in mesh.tasks.events(ref.task_id, follow=False)]
    statuses = [e.status for e in events if e.status is not None]
    assert statuses == [
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
        TaskStatus.INPUT_REQUIRED,
        TaskStatus.PENDING,
        TaskStatus.RUNNING,
        TaskStatus.COMPLETED,
    ]


async def test_an_agent_can_reject_a_task(weather: list[Message], mesh: MeshClient) -> None:
    ref = await mesh.tasks.submit("weather", "refuse")
    done = await mesh.tasks.wait(ref.task_id, timeout=20)
    assert done.status is TaskStatus.REJECTED and done.finished_at is not None
    with pytest.raises(Conflict):
        await mesh.tasks.answer(ref.task_id, "please")


async def test_a_cancel_ends_a_task_that_waits_for_input(
    weather: list[Message], mesh: MeshClient
) -> None:
    ref = await mesh.tasks.submit("weather", "?")
    await mesh.tasks.wait(ref.task_id, timeout=20)
    assert (await mesh.tasks.cancel(ref.task_id)).status is TaskStatus.CANCELED
    with pytest.raises(Conflict):
        await mesh.tasks.answer(ref.task_id, "Oslo")
    assert len(weather) == 1


async def test_the_http_route_answers_and_a_retried_answer_is_a_no_op(
    start_gateway: StartGateway, weather: list[Message], mesh: MeshClient
) -> None:
    gateway = await start_gateway()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        created = await http.post(
            "/v1/tasks", json={"agent_id": "weather", "task_description": "?"}
        )
        task_id = created.json()["task_id"]
        waited = (await http.get(f"/v1/tasks/{task_id}/wait", params={"timeout": 20})).json()
        assert waited["status"] == "input-required" and waited["result_text"] == "Which city?"
        body = {"input": {"message_id": "answer-1", "content": [{"type": "text", "text": "Oslo"}]}}
        answered = await http.post(f"/v1/tasks/{task_id}/input", json=body)
        assert answered.status_code == 200, answered.text
        assert answered.json()["status"] in ("pending", "running", "completed")
        again = await http.post(f"/v1/tasks/{task_id}/input", json=body)  # a lost answer's retry
        assert again.status_code == 200, again.text
        done = await mesh.tasks.wait(task_id, timeout=20)
        assert done.result is not None and done.result.text == "sunny in Oslo (2 turns)"
        assert [m.text for m in done.history] == ["?", "Which city?"]
        late = await http.post(f"/v1/tasks/{task_id}/input", json={"task_description": "Bergen"})
        assert late.status_code == 409 and late.json()["error"]["code"] == "CONFLICT"
        both = {"task_description": "x", "input": body["input"]}
        assert (await http.post(f"/v1/tasks/{task_id}/input", json=both)).status_code == 400
        missing = await http.post(f"/v1/tasks/task-{'0' * 32}/input", json=body)
        assert missing.status_code == 404
    assert len(weather) == 2  # the retried answer ran no third turn


async def test_the_answer_to_an_agent_type_task_goes_to_the_agent_that_asked(
    start_agent: StartAgent, start_executor: StartExecutor, mesh: MeshClient
) -> None:
    seen: dict[str, list[str]] = {"f1": [], "f2": []}
    for agent_id in seen:
        agent = Agent(agent_id, agent_type="forecaster")

        def handle(msg: Message, ctx: Context, me: str = agent_id) -> object:
            seen[me].append(msg.text)
            return needs_input("Which city?") if len(seen[me]) == 1 else f"{me}: {msg.text}"

        agent.handler(handle)
        await start_agent(agent)
    await start_executor()
    ref = await mesh.tasks.submit(agent_type="forecaster", content="weather?")
    asked = await mesh.tasks.wait(ref.task_id, timeout=20)
    assert asked.status is TaskStatus.INPUT_REQUIRED and asked.attempts[-1].agent_id
    asker = asked.attempts[-1].agent_id
    await mesh.tasks.answer(ref.task_id, "Oslo")
    done = await mesh.tasks.wait(ref.task_id, timeout=20)
    assert done.result is not None and done.result.text == f"{asker}: Oslo"
    assert seen[asker] == ["weather?", "Oslo"]


async def test_an_earlier_answer_sent_again_is_a_retry_not_the_next_answer(
    weather: list[Message], mesh: MeshClient
) -> None:
    ref = await mesh.tasks.submit("weather", "weather?")
    await mesh.tasks.wait(ref.task_id, timeout=20)
    bergen = Message(message_id="answer-bergen", content=[TextPart(text="Bergen")])
    await mesh.tasks.answer(ref.task_id, input=bergen)
    asked_again = await mesh.tasks.wait(ref.task_id, timeout=20)  # not Oslo: it asks again
    assert asked_again.status is TaskStatus.INPUT_REQUIRED and asked_again.turn == 1
    # The first answer's response was lost, the caller sends it again: the same turn, no new one.
    again = Message(message_id="answer-bergen", content=[TextPart(text="Bergen")])
    same = await mesh.tasks.answer(ref.task_id, input=again)
    assert same.status is TaskStatus.INPUT_REQUIRED and same.turn == 1
    assert [m.text for m in weather] == ["weather?", "Bergen"]
    await mesh.tasks.answer(ref.task_id, "Oslo")
    done = await mesh.tasks.wait(ref.task_id, timeout=20)
    assert done.result is not None and done.result.text == "sunny in Oslo (3 turns)"
