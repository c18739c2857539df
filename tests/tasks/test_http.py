"""Tasks and traces over HTTP (`/v1/traces`, `/v1/workspaces`, `/v1/tasks`) and the seed's
synchronous `ManagementClient`, against real gateway replicas, executors and agents.

The sync client runs in a thread (`asyncio.to_thread`): the gateways serve in this test's loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.durable import DurableState
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway import task_events
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.management_client import ManagementClient
from agentmesh.gateway.server import make_server
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.errors import Conflict, Forbidden, InvalidId, InvalidMessage, NotFound
from agentmesh.schemas.task import TaskStatus
from tests.conftest import StartAgent
from tests.gateway.conftest import Replica, StartGateway
from tests.tasks.conftest import StartExecutor

TEXT = [{"type": "text", "text": "hi"}]


class Gate:
    """A handler's start and release, for a test to hold a task `running`."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, msg: Message, ctx: Context) -> str:
        self.started.set()
        await ctx.progress("working", {"pct": 50})
        await self.release.wait()
        return f"{ctx.agent_id}: {msg.text}"


async def running(mesh: MeshClient, task_id: str) -> int:
    """Wait for the task's `running` event; its sequence."""
    events = mesh.tasks.events(task_id, follow=True)
    async with asyncio.timeout(10), aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if event.status is TaskStatus.RUNNING:
                return event.seq or 0
    raise AssertionError("the task ended without running")


async def sse(http: httpx.AsyncClient, path: str, **kw: Any) -> list[dict[str, Any]]:
    """A whole event stream as `{"id", "event", "data"}` dicts (the wire format, parsed here)."""
    out: list[dict[str, Any]] = []
    frame: dict[str, Any] = {}
    async with asyncio.timeout(15), http.stream("GET", path, **kw) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if not line:
                if "data" in frame:
                    out.append(frame)
                frame = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                frame[name] = json.loads(value) if name == "data" else value
    return out


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> Replica:
    return await start_gateway()


@pytest.fixture
async def http(gateway: Replica) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        yield client


@pytest.fixture
def keys(durable: DurableState, settings: Settings) -> KeyStore:
    return KeyStore(durable, Subjects(settings.prefix))


async def test_the_seeds_client_calls_create_a_trace_and_a_task_that_goes_pending_running_completed(
    gateway: Replica, mesh: MeshClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    gate = Gate()
    agent = Agent("pa-1", agent_type="personal_assistant")
    agent.handler(gate)
    await start_agent(agent)

    def seed() -> tuple[ManagementClient, str, str, str]:
        # The seed's own lines (agent management seed, "使用 Client SDK").
        client = ManagementClient(gateway.url)
        trace_id = client.create_trace(workspace_id="user_001", agent_type="personal_assistant")
        task_id = client.submit_task(trace_id=trace_id, task_description="分析销售数据")
        task = client.get_task(task_id)
        return client, trace_id, task_id, task["status"]

    client, trace_id, task_id, status = await asyncio.to_thread(seed)
    assert status == "pending"  # no executor yet
    await start_executor()
    await running(mesh, task_id)
    assert (await asyncio.to_thread(client.get_task, task_id))["status"] == "running"
    gate.release.set()
    done = await asyncio.to_thread(client.wait_task, task_id, 10)
    assert done["status"] == "completed" and done["result_text"] == "pa-1: 分析销售数据"
    assert (await asyncio.to_thread(client.get_task, task_id))["status"] == "completed"
    assert done["trace_id"] == trace_id and done["workspace_id"] == "user_001"
    assert done["agent_type"] == "personal_assistant" and done["task_description"] == "分析销售数据"
    assert done["attempts"][0]["instance_id"] == agent.instance_id
    trace = await asyncio.to_thread(client.get_trace, trace_id)
    assert [(t["task_id"], t["status"]) for t in trace["tasks"]] == [(task_id, "completed")]
    assert trace["tasks"][0]["started_at"] <= trace["tasks"][0]["finished_at"]
    kinds = [e["kind"] for e in await asyncio.to_thread(lambda: list(client.events(task_id)))]
    assert kinds == ["status", "status", "progress", "status"]
    client.close()


async def test_the_trace_and_workspace_routes_create_list_and_get(
    http: httpx.AsyncClient,
) -> None:
    r = await http.post(
        "/v1/traces",
        json={"workspace_id": "ws-1", "agent_type": "pa", "name": "Q3", "metadata": {"k": 1}},
    )
    assert r.status_code == 201, r.text
    first = r.json()
    assert len(first["trace_id"]) == 32 and first["name"] == "Q3" and first["metadata"] == {"k": 1}
    assert first["created_at_iso"].endswith("Z") and isinstance(first["created_at"], float)
    second = (await http.post("/v1/traces", json={"workspace_id": "ws-1"})).json()
    other = (await http.post("/v1/traces", json={"workspace_id": "ws-2"})).json()
    listed = (await http.get("/v1/traces", params={"workspace_id": "ws-1"})).json()["traces"]
    assert {t["trace_id"] for t in listed} == {first["trace_id"], second["trace_id"]}
    assert len((await http.get("/v1/traces")).json()["traces"]) == 3
    r = await http.post("/v1/tasks", json={"trace_id": first["trace_id"], "task_description": "x"})
    assert r.status_code == 201 and r.json()["agent_type"] == "pa"  # the trace's type
    trace = (await http.get(f"/v1/traces/{first['trace_id']}")).json()
    assert [t["task_id"] for t in trace["tasks"]] == [r.json()["task_id"]]
    assert trace["tasks"][0]["status"] == "pending" and trace["tasks"][0]["attempt"] == 0
    assert (await http.get("/v1/workspaces")).json() == {
        "workspaces": [
            {"workspace_id": "ws-1", "trace_count": 2},
            {"workspace_id": "ws-2", "trace_count": 1},
        ]
    }
    one = (await http.get("/v1/workspaces/ws-2")).json()
    assert one["trace_count"] == 1 and [t["trace_id"] for t in one["traces"]] == [other["trace_id"]]


async def test_the_task_routes_submit_list_get_wait_cancel_and_replay_events(
    http: httpx.AsyncClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    agent = Agent("echo")
    agent.handler(lambda msg, ctx: f"echo: {msg.text}")
    await start_agent(agent)
    await start_executor()
    message = {"content": TEXT, "metadata": {"m": 1}, "conversation_id": "c-1"}
    body = {"agent_id": "echo", "input": message, "priority": "high", "metadata": {"job": 7}}
    r = await http.post("/v1/tasks", json=body, headers={"Idempotency-Key": "order-1"})
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["status"] == "pending" and task["created"] is True
    assert task["task_id"].startswith("task-") and task["priority"] == "high"
    assert task["input"]["conversation_id"] == "c-1" and task["input"]["metadata"] == {"m": 1}
    assert task["idempotency_key"] == "order-1" and task["metadata"] == {"job": 7}
    again = await http.post("/v1/tasks", json={**body, "idempotency_key": "order-1"})
    assert again.status_code == 200 and again.json()["task_id"] == task["task_id"]
    assert again.json()["created"] is False
    r = await http.get(f"/v1/tasks/{task['task_id']}/wait", params={"timeout": 10})
    done = r.json()
    assert done["status"] == "completed" and done["result_text"] == "echo: hi"
    assert done["result"]["content"] == [{"type": "text", "text": "echo: hi"}]
    assert done["finished_at_iso"].endswith("Z") and done["attempt"] == 1
    assert (await http.get(f"/v1/tasks/{task['task_id']}")).json() == done
    events = await sse(http, f"/v1/tasks/{task['task_id']}/events", params={"follow": "false"})
    assert [(e["event"], e["data"]["status"]) for e in events] == [
        ("status", "pending"),
        ("status", "running"),
        ("status", "completed"),
    ]
    assert [int(e["id"]) for e in events] == [e["data"]["seq"] for e in events]
    later = await sse(http, f"/v1/tasks/{task['task_id']}/events?after={events[0]['id']}")
    assert [e["id"] for e in later] == [e["id"] for e in events[1:]]
    # Resuming after the final event ends at once, with nothing (never held open).
    end = await sse(
        http, f"/v1/tasks/{task['task_id']}/events", headers={"Last-Event-ID": events[-1]["id"]}
    )
    assert end == []
    # A task for an agent nobody runs stays pending; cancelled, it never runs.
    idle = (await http.post("/v1/tasks", json={"agent_id": "idle", "task_description": "x"})).json()
    waited = await http.get(f"/v1/tasks/{idle['task_id']}/wait", params={"timeout": 0.3})
    assert waited.json()["status"] == "pending"
    r = await http.post(f"/v1/tasks/{idle['task_id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    listed = (await http.get("/v1/tasks")).json()["tasks"]
    assert [t["task_id"] for t in listed] == [idle["task_id"], task["task_id"]]
    for params, expected in (
        ({"status": "canceled"}, [idle["task_id"]]),
        ({"agent_id": "echo"}, [task["task_id"]]),
        ({"limit": 1}, [idle["task_id"]]),
        ({"agent_type": "pa"}, []),
    ):
        found = (await http.get("/v1/tasks", params=params)).json()["tasks"]
        assert [t["task_id"] for t in found] == expected, params


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text  # the mesh's format, not OpenAI's


async def test_bad_input_is_refused_with_the_gateways_codes_and_stores_nothing(
    http: httpx.AsyncClient, start_agent: StartAgent, start_executor: StartExecutor
) -> None:
    unknown_trace = {"trace_id": "0" * 32, "task_description": "x"}
    assert_error(await http.post("/v1/tasks", json=unknown_trace), 404, "NOT_FOUND")
    bad_id = {"agent_id": "bad.id", "task_description": "x"}
    assert_error(await http.post("/v1/tasks", json=bad_id), 400, "INVALID_ID")
    past = {"agent_id": "a", "task_description": "x", "deadline": time.time() - 1}
    r = await http.post("/v1/tasks", json=past)
    assert_error(r, 400, "INVALID_MESSAGE")
    assert "deadline" in r.json()["error"]["message"]
    both = {"agent_id": "a", "task_description": "x", "input": {"content": TEXT}}
    for body in ({"agent_id": "a"}, both):
        assert_error(await http.post("/v1/tasks", json=body), 400, "INVALID_MESSAGE")
    assert_error(
        await http.post("/v1/tasks", json={"task_description": "x"}), 400, "INVALID_MESSAGE"
    )
    typo = {"agent_id": "a", "task_descripton": "x"}
    assert_error(await http.post("/v1/tasks", json=typo), 422, "INVALID_MESSAGE")
    assert_error(await http.post("/v1/traces", json={"workspace_id": "a b"}), 400, "INVALID_ID")
    missing = "task-" + "0" * 32
    for method, path in (
        ("GET", f"/v1/tasks/{missing}"),
        ("GET", "/v1/tasks/not-a-task"),
        ("POST", f"/v1/tasks/{missing}/cancel"),
        ("GET", f"/v1/tasks/{missing}/wait"),
        ("GET", f"/v1/tasks/{missing}/events"),
        ("GET", f"/v1/traces/{'0' * 32}"),
        ("GET", "/v1/workspaces/nobody"),
    ):
        assert_error(await http.request(method, path), 404, "NOT_FOUND")
    assert (await http.get("/v1/tasks")).json() == {"tasks": []}
    agent = Agent("quick")
    agent.handler(lambda msg, ctx: "done")
    await start_agent(agent)
    await start_executor()
    task = (
        await http.post("/v1/tasks", json={"agent_id": "quick", "task_description": "x"})
    ).json()
    await http.get(f"/v1/tasks/{task['task_id']}/wait", params={"timeout": 10})
    r = await http.post(f"/v1/tasks/{task['task_id']}/cancel")
    assert_error(r, 409, "CONFLICT")
    assert r.json()["error"]["details"]["status"] == "completed"


async def test_an_input_over_the_message_limit_is_a_413_and_stores_nothing(
    start_gateway: StartGateway, settings: Settings
) -> None:
    small = settings.with_(max_message_bytes=16 * 1024)
    replica = await start_gateway(settings_=small)
    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:
        big = {"agent_id": "a", "task_description": "x" * 20_000}  # under the body limit
        assert_error(await http.post("/v1/tasks", json=big), 413, "PAYLOAD_TOO_LARGE")
        assert (await http.get("/v1/tasks")).json() == {"tasks": []}


async def test_events_resume_from_last_event_id_on_another_replica(
    start_gateway: StartGateway,
    mesh: MeshClient,
    start_agent: StartAgent,
    start_executor: StartExecutor,
) -> None:
    gate = Gate()
    agent = Agent("slow")
    agent.handler(gate)
    await start_agent(agent)
    await start_executor()
    one, two = await start_gateway(), await start_gateway()
    async with (
        httpx.AsyncClient(base_url=one.url, timeout=10) as first,
        httpx.AsyncClient(base_url=two.url, timeout=10) as second,
    ):
        task = (
            await first.post("/v1/tasks", json={"agent_id": "slow", "input": {"content": TEXT}})
        ).json()
        await running(mesh, task["task_id"])
        path = f"/v1/tasks/{task['task_id']}/events"
        seen = await sse(first, path, params={"follow": "false"})  # what there is, then it ends
        assert [e["data"]["status"] for e in seen[:2]] == ["pending", "running"]
        # The client goes away and comes back on the other replica with the last id it saw.
        resumed = asyncio.create_task(sse(second, path, headers={"Last-Event-ID": seen[-1]["id"]}))
        gate.release.set()
        rest = await resumed
    assert rest[-1]["event"] == "status" and rest[-1]["data"]["status"] == "completed"
    everything = [e.seq async for e in mesh.tasks.events(task["task_id"], follow=False)]
    assert [int(e["id"]) for e in seen + rest] == everything  # each once, in order, none missed


async def test_a_replica_that_stops_ends_its_open_event_streams_and_the_client_resumes(
    settings: Settings, gateway: Replica, http: httpx.AsyncClient, request: pytest.FixtureRequest
) -> None:
    server = make_server(settings, port=free_port(), config=GatewayConfig(), log_level="warning")
    await server.start()
    request.addfinalizer(lambda: setattr(server, "should_exit", True))  # if the test fails early
    task = (
        await http.post("/v1/tasks", json={"agent_id": "nobody", "task_description": "x"})
    ).json()
    path = f"http://127.0.0.1:{server.config.port}/v1/tasks/{task['task_id']}/events"
    lines: list[str] = []
    async with httpx.AsyncClient(timeout=10) as doomed, doomed.stream("GET", path) as response:
        received = response.aiter_lines()
        async with asyncio.timeout(5):
            async for line in received:
                lines.append(line)
                if line.startswith("data:"):
                    break  # the pending event: the stream is open and quiet now
            stopping = asyncio.create_task(server.stop())  # not held by the open stream
            lines += [line async for line in received]  # and the stream ends
            await stopping
    last_id = int(next(line for line in lines if line.startswith("id: "))[4:])
    # The seed's client resumes elsewhere from the last id it saw, and sees the end.
    client = ManagementClient(gateway.url)
    follow = asyncio.create_task(
        asyncio.to_thread(lambda: list(client.events(task["task_id"], after=last_id)))
    )
    await http.post(f"/v1/tasks/{task['task_id']}/cancel")
    rest = await asyncio.wait_for(follow, 15)
    assert [e["status"] for e in rest] == ["canceled"] and rest[0]["seq"] > last_id
    client.close()


async def test_the_management_client_raises_the_mesh_errors(gateway: Replica) -> None:
    def calls() -> list[type[Exception]]:
        raised: list[type[Exception]] = []
        with ManagementClient(gateway.url) as client:
            for call in (
                lambda: client.get_task("task-" + "0" * 32),
                lambda: client.submit_task(agent_id="bad.id", task_description="x"),
                lambda: client.submit_task(agent_id="a", task_description="x", deadline=1.0),
                lambda: client.get_trace("0" * 32),
                lambda: client.get_workspace("nobody"),
            ):
                try:
                    call()
                except Exception as exc:  # noqa: BLE001 - collected for the assertion
                    raised.append(type(exc))
            task_id = client.submit_task(agent_id="a", task_description="x")
            assert client.cancel_task(task_id)["status"] == "canceled"
            try:
                client.cancel_task(task_id)
            except Conflict:
                raised.append(Conflict)
            assert [t["task_id"] for t in client.list_tasks(status="canceled")] == [task_id]
            seen = list(client.events(task_id))
            assert [e["status"] for e in seen] == ["pending", "canceled"]
            assert list(client.events(task_id, after=seen[-1]["seq"])) == []  # ends at once
        return raised

    assert await asyncio.to_thread(calls) == [
        NotFound,
        InvalidId,
        InvalidMessage,
        NotFound,
        NotFound,
        Conflict,
    ]


async def test_with_auth_on_scopes_apply_and_the_inputs_sender_comes_from_the_key(
    start_gateway: StartGateway, keys: KeyStore, mesh: MeshClient
) -> None:
    replica = await start_gateway(config=GatewayConfig(auth=True))
    reader, _ = await keys.create("reader", scopes=frozenset({Scope.AGENTS_READ}))
    sender, record = await keys.create("relay", scopes=frozenset({Scope.SEND}), agents=["bot-*"])

    async with httpx.AsyncClient(base_url=replica.url, timeout=10) as http:

        async def submit(key: str, **body: Any) -> httpx.Response:
            body = {"agent_id": "a", "task_description": "x", **body}
            return await http.post("/v1/tasks", json=body, headers={"x-api-key": key})

        assert_error(await submit(reader), 403, "UNAUTHORIZED")
        r = await http.post("/v1/traces", json={"workspace_id": "w"}, headers={"x-api-key": reader})
        assert_error(r, 403, "UNAUTHORIZED")
        assert_error(
            await http.get("/v1/tasks", headers={"x-api-key": sender}), 403, "UNAUTHORIZED"
        )
        assert_error(await http.get("/v1/tasks"), 401, "UNAUTHORIZED")
        r = await submit(sender, from_agent_id="ceo")
        assert_error(r, 403, "UNAUTHORIZED")
        assert "may not send as agent 'ceo'" in r.json()["error"]["message"]
        forged = {"content": TEXT, "from_agent_id": "ceo", "metadata": {"sender_key": "x"}}
        assert_error(await submit(sender, input=forged, task_description=None), 403, "UNAUTHORIZED")
        as_bot = await submit(
            sender, input={**forged, "from_agent_id": "bot-7"}, task_description=None
        )
        plain = await submit(sender, metadata={"sender_key": "kept in the spec"})
        assert as_bot.status_code == 201 and plain.status_code == 201
        r = await http.post(
            f"/v1/tasks/{plain.json()['task_id']}/cancel", headers={"x-api-key": reader}
        )
        assert_error(r, 403, "UNAUTHORIZED")

    stored = [await mesh.tasks.get(r.json()["task_id"]) for r in (as_bot, plain)]
    assert [t.spec.input.from_agent_id for t in stored] == ["bot-7", None]
    assert [t.spec.input.metadata["sender_key"] for t in stored] == [record.key_id] * 2
    assert stored[1].spec.metadata == {"sender_key": record.key_id}  # the task's too

    def read_with(key: str) -> type[Exception] | int:
        with ManagementClient(replica.url, api_key=key) as client:
            try:
                return len(client.list_tasks())
            except Forbidden as exc:
                return type(exc)

    assert await asyncio.to_thread(read_with, reader) == 2
    assert await asyncio.to_thread(read_with, sender) is Forbidden


async def test_a_quiet_event_stream_is_kept_open_with_ping_comments(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(task_events, "PING", 0.05)  # the replica runs in this process
    task = (
        await http.post("/v1/tasks", json={"agent_id": "nobody", "task_description": "x"})
    ).json()
    lines: list[str] = []
    async with asyncio.timeout(10), http.stream("GET", f"/v1/tasks/{task['task_id']}/events") as r:
        async for line in r.aiter_lines():
            lines.append(line)
            if line == ": ping":
                break
    assert lines[0] == "id: 1" and lines[1] == "event: status" and lines[-1] == ": ping"


def test_a_callers_idempotency_keys_are_namespaced_by_its_api_key() -> None:
    """A key holder cannot pre-empt another caller's key, nor a webhook's `hook:` keys."""
    from agentmesh.gateway.auth import Principal
    from agentmesh.gateway.tasks_api import _idempotency_key

    alice = Principal(name="alice", scopes=frozenset(), key_id="abc123def456")
    assert _idempotency_key("hook:w:d1", None, alice) == "api:abc123def456:hook:w:d1"
    assert _idempotency_key(None, "k", Principal(name="anon", scopes=frozenset())) == (
        "api:anonymous:k"
    )
