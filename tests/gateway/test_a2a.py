"""Mesh agents as A2A servers (issue 13, first slice): the official `a2a-sdk` client against real
gateway replicas, a real agent and an executor (A2A tasks are the mesh's durable tasks)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.client.errors import AgentCardResolutionError
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, TransportProtocol
from a2a.utils.errors import (
    InvalidParamsError,
    MethodNotFoundError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Value

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.durable import DurableState
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.keys import KeyStore
from agentmesh.gateway.server import make_server
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.envelope import Message as MeshMessage
from tests.conftest import StartAgent, StartExecutor
from tests.gateway.conftest import Replica, StartGateway

JSONRPC, REST = TransportProtocol.JSONRPC.value, TransportProtocol.HTTP_JSON.value
MISSING = "task-" + "0" * 32


@pytest.fixture
def keys(durable: DurableState, settings: Settings) -> KeyStore:
    return KeyStore(durable, Subjects(settings.prefix))


@pytest.fixture
async def echo(start_agent: StartAgent, start_executor: StartExecutor) -> Agent:
    agent = Agent(
        "echo",
        name="Echo",
        description="Says it back.",
        capabilities=["echo", "shout"],
        version="1.2.3",
    )
    agent.handler(lambda msg, ctx: f"echo: {msg.text}")
    await start_agent(agent)
    await start_executor()
    return agent


def user(text: str, **kw: object) -> Message:
    return Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)], **kw)


def send(text: str, *, now: bool = False, **kw: object) -> SendMessageRequest:
    return SendMessageRequest(
        message=user(text, **kw), configuration=SendMessageConfiguration(return_immediately=now)
    )


async def only(responses: AsyncIterator[StreamResponse]) -> StreamResponse:
    got = [r async for r in responses]
    assert len(got) == 1, got
    return got[0]


async def test_the_card_is_built_from_the_registry_and_points_at_the_public_url(
    start_gateway: StartGateway, echo: Agent
) -> None:
    gateway = await start_gateway()
    async with httpx.AsyncClient(timeout=10) as http:
        resolver = A2ACardResolver(http, f"{gateway.url}/a2a/echo")
        card = await resolver.get_agent_card()
        assert card.name == "Echo" and card.description == "Says it back."
        assert card.version == "1.2.3" and card.capabilities.streaming
        assert [s.id for s in card.skills] == ["echo", "shout"]
        assert {
            (i.protocol_binding, i.protocol_version, i.url) for i in card.supported_interfaces
        } == {
            (binding, version, f"{gateway.url}/a2a/echo")
            for binding in (JSONRPC, REST)
            for version in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)
        }
        assert not card.security_schemes  # auth is off
        # Behind a proxy: the URL the client used, never the replica's own address.
        forwarded = {"X-Forwarded-Host": "agents.example.com", "X-Forwarded-Proto": "https"}
        card = await resolver.get_agent_card(http_kwargs={"headers": forwarded})
        assert {i.url for i in card.supported_interfaces} == {"https://agents.example.com/a2a/echo"}
        raw = (await http.get(f"{gateway.url}/a2a/echo/.well-known/agent-card.json")).json()
        assert raw["url"] == f"{gateway.url}/a2a/echo"  # the 0.3 fields, for 0.3 clients
        assert raw["preferredTransport"] == JSONRPC and raw["protocolVersion"] == "0.3"
        with pytest.raises(AgentCardResolutionError) as caught:
            await A2ACardResolver(http, f"{gateway.url}/a2a/nobody").get_agent_card()
        assert caught.value.status_code == 404


@pytest.mark.parametrize("binding", [JSONRPC, REST])
async def test_a_blocking_send_answers_the_completed_task_with_the_reply_as_artifact(
    start_gateway: StartGateway, echo: Agent, clients: Callable[..., object], binding: str
) -> None:
    gateway = await start_gateway()
    client = await clients(gateway, "echo", binding=binding)  # type: ignore[operator]
    answer = await only(client.send_message(send("hi", context_id="conv-1")))
    task = answer.task
    assert task.id.startswith("task-") and task.context_id == "conv-1"
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert [p.text for a in task.artifacts for p in a.parts] == ["echo: hi"]
    assert [m.parts[0].text for m in task.history] == ["hi"]
    again = await client.get_task(GetTaskRequest(id=task.id, history_length=0))
    assert again.status.state == TaskState.TASK_STATE_COMPLETED and not again.history
    listed = await client.list_tasks(ListTasksRequest(context_id="conv-1"))
    assert [t.id for t in listed.tasks] == [task.id] and listed.total_size == 1


async def test_return_immediately_then_get_task_from_another_replica_until_completed(
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
    clients: Callable[..., object],
    mesh: MeshClient,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    agent = Agent("slow")

    @agent.handler
    async def handle(msg: MeshMessage, ctx: Context) -> str:
        started.set()
        await release.wait()
        return f"done: {msg.text}"

    await start_agent(agent)
    await start_executor()
    first, second = await start_gateway(), await start_gateway()
    one = await clients(first, "slow")  # type: ignore[operator]
    other = await clients(second, "slow", binding=REST)  # type: ignore[operator]
    submitted = (await only(one.send_message(send("job", now=True)))).task
    assert submitted.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
    async with asyncio.timeout(20):
        await started.wait()
    seen = await other.get_task(GetTaskRequest(id=submitted.id))
    assert seen.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
    assert seen.context_id == submitted.context_id and not seen.artifacts
    release.set()
    await mesh.tasks.wait(submitted.id, timeout=20)
    done = await other.get_task(GetTaskRequest(id=submitted.id))
    assert done.status.state == TaskState.TASK_STATE_COMPLETED
    assert [p.text for a in done.artifacts for p in a.parts] == ["done: job"]
    listed = await other.list_tasks(ListTasksRequest(status=TaskState.TASK_STATE_COMPLETED))
    assert [t.id for t in listed.tasks] == [submitted.id]


async def test_a_streaming_send_yields_the_task_updates_and_ends_completed(
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
    clients: Callable[..., object],
) -> None:
    agent = Agent("streamer")

    @agent.handler
    async def handle(msg: MeshMessage, ctx: Context) -> AsyncIterator[str]:
        await ctx.progress("thinking")
        for word in ("one ", "two"):
            yield word

    await start_agent(agent)
    await start_executor()
    gateway = await start_gateway()
    client = await clients(gateway, "streamer", streaming=True)  # type: ignore[operator]
    got = [r async for r in client.send_message(send("go"))]
    kinds = [r.WhichOneof("payload") for r in got]
    assert kinds[0] == "task" and got[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    states = [r.status_update.status.state for r in got if r.HasField("status_update")]
    assert states[0] == TaskState.TASK_STATE_WORKING
    assert states[-1] == TaskState.TASK_STATE_COMPLETED and kinds[-1] == "status_update"
    notes = [r.status_update.status.message for r in got if r.HasField("status_update")]
    assert "thinking" in [n.parts[0].text for n in notes if n.parts]
    pieces = [r.artifact_update for r in got if r.HasField("artifact_update")]
    assert [(p.append, p.last_chunk) for p in pieces] == [
        (False, False),
        (True, False),
        (False, True),
    ]
    assert [p.artifact.parts[0].text for p in pieces] == ["one ", "two", "one two"]
    assert {p.task_id for p in pieces} == {got[0].task.id}


async def test_cancel_a_running_task_and_a_finished_one(
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
    clients: Callable[..., object],
) -> None:
    started, stopped = asyncio.Event(), asyncio.Event()
    agent = Agent("worker")

    @agent.handler
    async def handle(msg: MeshMessage, ctx: Context) -> str:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            stopped.set()
        return "never"

    await start_agent(agent)
    await start_executor()
    gateway = await start_gateway()
    client = await clients(gateway, "worker", streaming=True)  # type: ignore[operator]
    stream = client.send_message(send("forever"))
    first = await anext(stream)
    task_id = first.task.id
    async with asyncio.timeout(20):
        await started.wait()
    canceled = await client.cancel_task(CancelTaskRequest(id=task_id))
    assert canceled.status.state == TaskState.TASK_STATE_CANCELED
    async with asyncio.timeout(20):
        await stopped.wait()  # the handler was cancelled at the instance
        rest = [r async for r in stream]  # the stream ends at the terminal state
    assert rest[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED
    with pytest.raises(TaskNotCancelableError):
        await client.cancel_task(CancelTaskRequest(id=task_id))
    rest_client = await clients(gateway, "worker", binding=REST)  # type: ignore[operator]
    with pytest.raises(TaskNotCancelableError):
        await rest_client.cancel_task(CancelTaskRequest(id=task_id))


@pytest.mark.parametrize("binding", [JSONRPC, REST])
async def test_an_unknown_task_is_task_not_found(
    start_gateway: StartGateway, echo: Agent, clients: Callable[..., object], binding: str
) -> None:
    gateway = await start_gateway()
    client = await clients(gateway, "echo", binding=binding, streaming=True)  # type: ignore[operator]
    for task_id in (MISSING, "nonsense"):
        with pytest.raises(TaskNotFoundError):
            await client.get_task(GetTaskRequest(id=task_id))
        with pytest.raises(TaskNotFoundError):
            await client.cancel_task(CancelTaskRequest(id=task_id))
        with pytest.raises(TaskNotFoundError):
            async for _ in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                pass


async def test_json_rpc_errors_and_versions_as_the_sdk_answers_them(
    start_gateway: StartGateway, echo: Agent
) -> None:
    gateway = await start_gateway()
    v1 = {"A2A-Version": "1.0"}

    async def rpc(body: object, headers: dict[str, str] | None = None) -> dict[str, object]:
        r = await http.post("/a2a/echo", json=body, headers=headers)
        assert r.status_code == 200, r.text  # JSON-RPC errors come with HTTP 200
        return r.json()

    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        call = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": MISSING}}
        assert (await rpc(call, v1))["error"]["code"] == -32001
        assert (await rpc(call))["error"]["code"] == -32009  # no header: 0.3, not 1.0's names
        old = {**call, "method": "tasks/get"}
        assert (await rpc(old))["error"]["code"] == -32001  # the 0.3 name, without the header
        assert (await rpc({**call, "method": "Nope"}, v1))["error"]["code"] == -32601
        assert (await rpc({"id": 2, "method": "GetTask"}, v1))["error"]["code"] == -32600
        r = await http.post("/a2a/echo", content=b"{not json", headers=v1)
        assert r.status_code == 200 and r.json()["error"]["code"] == -32700
        message = {"role": "ROLE_USER", "messageId": "m-1", "parts": [{"text": "hi"}]}
        sent = await rpc(
            {"jsonrpc": "2.0", "id": 3, "method": "SendMessage", "params": {"message": message}},
            v1,
        )
        task = sent["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        assert task["artifacts"][0]["parts"] == [{"text": "echo: hi"}]
        # The same message again (a retry after a lost answer): the same task.
        again = await rpc(
            {"jsonrpc": "2.0", "id": 4, "method": "SendMessage", "params": {"message": message}},
            v1,
        )
        assert again["result"]["task"]["id"] == task["id"]
        cancel = {"jsonrpc": "2.0", "id": 5, "method": "CancelTask", "params": {"id": task["id"]}}
        assert (await rpc(cancel, v1))["error"]["code"] == -32002
        # A 0.3 client: `message/send` with 0.3 types.
        legacy = {
            "jsonrpc": "2.0",
            "id": 6,
            "method": "message/send",
            "params": {
                "message": {
                    "role": "user",
                    "messageId": "m-2",
                    "kind": "message",
                    "parts": [{"kind": "text", "text": "old"}],
                }
            },
        }
        result = (await rpc(legacy))["result"]
        assert result["kind"] == "task" and result["status"]["state"] == "completed"
        assert result["artifacts"][0]["parts"][0]["text"] == "echo: old"
        # Another agent's endpoint does not see the task; an agent that is not online is 404.
        r = await http.post("/a2a/nobody", json={**call, "params": {"id": task["id"]}}, headers=v1)
        assert r.json()["error"]["code"] == -32001
        r = await http.post(
            "/a2a/nobody",
            json={
                "jsonrpc": "2.0",
                "id": 7,
                "method": "SendMessage",
                "params": {"message": message},
            },
            headers=v1,
        )
        assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"


async def test_subscribe_from_another_replica_during_the_work(
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
    clients: Callable[..., object],
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    agent = Agent("slow")

    @agent.handler
    async def handle(msg: MeshMessage, ctx: Context) -> AsyncIterator[str]:
        yield "first "
        started.set()
        await release.wait()
        yield "second"

    await start_agent(agent)
    await start_executor()
    first, second = await start_gateway(), await start_gateway()
    one = await clients(first, "slow")  # type: ignore[operator]
    other = await clients(second, "slow", binding=REST, streaming=True)  # type: ignore[operator]
    task = (await only(one.send_message(send("job", now=True)))).task
    async with asyncio.timeout(20):
        await started.wait()
    stream = other.subscribe(SubscribeToTaskRequest(id=task.id))
    snapshot = await anext(stream)
    assert snapshot.task.id == task.id  # the task as it is, first
    release.set()
    got = [r async for r in stream]
    pieces = [
        r.artifact_update.artifact.parts[0].text for r in got if r.HasField("artifact_update")
    ]
    assert pieces == ["first ", "second", "first second"]  # the log from its start
    assert got[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    with pytest.raises(UnsupportedOperationError):  # finished: nothing more to follow
        async for _ in other.subscribe(SubscribeToTaskRequest(id=task.id)):
            pass


async def test_parts_round_trip_and_tasks_list_in_pages(
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
    clients: Callable[..., object],
) -> None:
    agent = Agent("mirror")
    agent.handler(lambda msg, ctx: msg.content)  # the parts it was sent
    await start_agent(agent)
    await start_executor()
    gateway = await start_gateway()
    client = await clients(gateway, "mirror", binding=REST)  # type: ignore[operator]
    data = Value()
    data.struct_value.update({"n": 1, "tags": ["a"]})
    parts = [
        Part(text="hello"),
        Part(data=data),
        Part(raw=b"\x00\x01", media_type="image/png", filename="dot.png"),
        Part(url="https://example.com/f.pdf", media_type="application/pdf"),
    ]
    message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=parts)
    task = (await only(client.send_message(SendMessageRequest(message=message)))).task
    back = task.artifacts[0].parts
    assert back[0].text == "hello"
    assert MessageToDict(back[1].data) == {"n": 1, "tags": ["a"]}
    assert (back[2].raw, back[2].media_type, back[2].filename) == (
        b"\x00\x01",
        "image/png",
        "dot.png",
    )
    assert (back[3].url, back[3].media_type) == ("https://example.com/f.pdf", "application/pdf")
    for text in ("two", "three"):
        await only(client.send_message(send(text)))
    seen: list[str] = []
    token = ""
    while True:
        page = await client.list_tasks(ListTasksRequest(page_size=2, page_token=token))
        assert page.total_size == 3 and len(page.tasks) <= 2
        seen += [t.id for t in page.tasks]
        if not (token := page.next_page_token):
            break
    assert len(seen) == 3 and seen[-1] == task.id  # newest first


async def test_with_auth_on_keys_and_scopes_apply(
    start_gateway: StartGateway, echo: Agent, keys: KeyStore, clients: Callable[..., object]
) -> None:
    gateway = await start_gateway(config=GatewayConfig(auth=True))
    reader, _ = await keys.create("reader", scopes=frozenset({Scope.AGENTS_READ}))
    sender, _ = await keys.create("sender", scopes=frozenset({Scope.SEND, Scope.AGENTS_READ}))
    card_url = f"{gateway.url}/a2a/echo/.well-known/agent-card.json"
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(card_url)).status_code == 401
        card = (await http.get(card_url, headers={"X-API-Key": reader})).json()
        assert set(card["securitySchemes"]) == {"bearer", "apiKey"}
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "SendMessage",
            "params": {
                "message": {"role": "ROLE_USER", "messageId": "m", "parts": [{"text": "x"}]}
            },
        }
        headers = {"A2A-Version": "1.0", "Authorization": f"Bearer {reader}"}
        r = await http.post(f"{gateway.url}/a2a/echo", json=body, headers=headers)
        assert r.status_code == 403  # reading is not sending
        r = await http.post(
            f"{gateway.url}/a2a/echo",
            json=body,
            headers={**headers, "Authorization": f"Bearer {sender}"},
        )
        assert r.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
        task_id = r.json()["result"]["task"]["id"]
        r = await http.get(
            f"{gateway.url}/a2a/echo/tasks/{task_id}",
            headers={**headers, "Authorization": f"Bearer {sender}"},
        )
        assert r.status_code == 200 and r.json()["id"] == task_id
        r = await http.get(f"{gateway.url}/a2a/echo/tasks/{task_id}", headers=headers)
        assert r.status_code == 404  # the reader's key did not send it (see the test below)


async def test_with_auth_on_a_key_sees_only_its_own_tasks_and_an_admin_key_every_task(
    start_gateway: StartGateway, echo: Agent, keys: KeyStore
) -> None:
    gateway = await start_gateway(config=GatewayConfig(auth=True))
    scopes = frozenset({Scope.SEND, Scope.AGENTS_READ})
    alice, _ = await keys.create("alice", scopes=scopes)
    bob, _ = await keys.create("bob", scopes=scopes)
    admin, _ = await keys.create("admin", scopes=frozenset({Scope.ADMIN}))
    base = f"{gateway.url}/a2a/echo"

    def headers(key: str) -> dict[str, str]:
        return {"A2A-Version": "1.0", "Authorization": f"Bearer {key}"}

    message = {"role": "ROLE_USER", "messageId": "same-id", "parts": [{"text": "mine"}]}
    async with httpx.AsyncClient(timeout=10) as http:
        sent = await http.post(
            f"{base}/message:send", json={"message": message}, headers=headers(alice)
        )
        assert sent.status_code == 200, sent.text
        task_id = sent.json()["task"]["id"]
        # Bob can neither read, list, cancel nor subscribe to it: to him it does not exist.
        assert (await http.get(f"{base}/tasks/{task_id}", headers=headers(bob))).status_code == 404
        listed = await http.get(f"{base}/tasks", headers=headers(bob))
        assert listed.status_code == 200 and listed.json().get("tasks", []) == []
        cancel = await http.post(f"{base}/tasks/{task_id}:cancel", headers=headers(bob))
        assert cancel.status_code == 404
        # The same message id from Bob is his own task, not Alice's.
        his = await http.post(
            f"{base}/message:send", json={"message": message}, headers=headers(bob)
        )
        assert his.json()["task"]["id"] != task_id
        mine = await http.get(f"{base}/tasks", headers=headers(alice))
        assert [t["id"] for t in mine.json()["tasks"]] == [task_id]
        assert (
            await http.get(f"{base}/tasks/{task_id}", headers=headers(alice))
        ).status_code == 200
        every = await http.get(f"{base}/tasks", headers=headers(admin))
        assert {t["id"] for t in every.json()["tasks"]} == {task_id, his.json()["task"]["id"]}


@pytest.mark.parametrize("binding", [JSONRPC, REST])
async def test_a_0_3_client_is_served_too(
    start_gateway: StartGateway, echo: Agent, binding: str
) -> None:
    """The SDK's 0.3 transports (no A2A-Version header; 0.3 method names and REST paths), picked
    by the client when the card offers only 0.3 interfaces."""
    gateway = await start_gateway()
    async with httpx.AsyncClient(timeout=30) as http:
        card = await A2ACardResolver(http, f"{gateway.url}/a2a/echo").get_agent_card()
        legacy = [i for i in card.supported_interfaces if i.protocol_version == "0.3"]
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(legacy)
        config = ClientConfig(
            httpx_client=http, streaming=False, supported_protocol_bindings=[binding]
        )
        async with ClientFactory(config).create(card) as client:
            task = (await only(client.send_message(send("old")))).task
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            assert [p.text for a in task.artifacts for p in a.parts] == ["echo: old"]
            again = await client.get_task(GetTaskRequest(id=task.id))
            assert again.id == task.id and again.status.state == TaskState.TASK_STATE_COMPLETED
            # A 404 either way; the SDK's 0.3 REST transport reads a `type` its own server
            # (1.x, which answers 0.3 REST errors in the 1.0 format) no longer writes.
            expected = TaskNotFoundError if binding == JSONRPC else MethodNotFoundError
            with pytest.raises(expected):
                await client.get_task(GetTaskRequest(id=MISSING))


async def test_a_stream_ends_when_its_replica_stops_and_resumes_on_another(
    settings: Settings,
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
    clients: Callable[..., object],
) -> None:
    started = asyncio.Event()
    agent = Agent("worker")

    @agent.handler
    async def handle(msg: MeshMessage, ctx: Context) -> str:
        started.set()
        await asyncio.Event().wait()
        return "never"

    await start_agent(agent)
    await start_executor()
    port = free_port()
    leaving = make_server(settings, port=port, config=GatewayConfig(), log_level="warning")
    await leaving.start()
    try:
        first = Replica(url=f"http://127.0.0.1:{port}", port=port)
        client = await clients(first, "worker", streaming=True)  # type: ignore[operator]
        stream = client.send_message(send("forever"))
        task_id = (await anext(stream)).task.id
        async with asyncio.timeout(20):
            await started.wait()
            stopping = asyncio.ensure_future(leaving.stop())
            rest = [r async for r in stream]  # ended by the drain, not by the task
            await stopping
        assert all(not r.HasField("task") for r in rest)
    finally:
        await leaving.stop()
    other = await clients(await start_gateway(), "worker", streaming=True)  # type: ignore[operator]
    resumed = other.subscribe(SubscribeToTaskRequest(id=task_id))
    snapshot = (await anext(resumed)).task
    assert snapshot.id == task_id
    assert snapshot.status.state in (TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING)
    await other.cancel_task(CancelTaskRequest(id=task_id))
    async with asyncio.timeout(20):
        got = [r async for r in resumed]
    assert got[-1].status_update.status.state == TaskState.TASK_STATE_CANCELED


@pytest.mark.parametrize("streaming", [False, True])
async def test_an_agent_asks_for_input_and_the_next_message_continues_the_task(
    start_gateway: StartGateway,
    weather: list[MeshMessage],
    clients: Callable[..., object],
    streaming: bool,
) -> None:
    first, second = await start_gateway(), await start_gateway()
    one = await clients(first, "weather", streaming=streaming)  # type: ignore[operator]
    other = await clients(second, "weather", binding=REST)  # type: ignore[operator]
    asked = [r async for r in one.send_message(send("weather?", context_id="trip"))]
    last = asked[-1]
    question = last.task.status if last.HasField("task") else last.status_update.status
    assert question.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert [p.text for p in question.message.parts] == ["Which city?"]
    task_id = asked[0].task.id
    waiting = await other.get_task(GetTaskRequest(id=task_id))
    assert waiting.status.state == TaskState.TASK_STATE_INPUT_REQUIRED and not waiting.artifacts
    # The answer, from the other replica: the same task, in its context.
    answer = await only(other.send_message(send("Oslo", task_id=task_id)))
    done = answer.task
    assert done.id == task_id and done.context_id == "trip"
    assert done.status.state == TaskState.TASK_STATE_COMPLETED
    assert [p.text for a in done.artifacts for p in a.parts] == ["sunny in Oslo (2 turns)"]
    assert [(m.role, m.parts[0].text) for m in done.history] == [
        (Role.ROLE_USER, "weather?"),
        (Role.ROLE_AGENT, "Which city?"),
        (Role.ROLE_USER, "Oslo"),
    ]
    assert [m.conversation_id for m in weather] == ["trip", "trip"]  # a session per context
    if streaming:  # a streamed answer starts at the answer's turn: one task, one completion
        again = [r async for r in one.send_message(send("weather?", context_id="trip2"))]
        got = [r async for r in one.send_message(send("Oslo", task_id=again[0].task.id))]
        states = [r.status_update.status.state for r in got if r.HasField("status_update")]
        assert states.count(TaskState.TASK_STATE_INPUT_REQUIRED) == 0
        assert states[-1] == TaskState.TASK_STATE_COMPLETED


async def test_a_task_not_waiting_for_input_takes_no_more_messages(
    start_gateway: StartGateway, echo: Agent, clients: Callable[..., object], mesh: MeshClient
) -> None:
    gateway = await start_gateway()
    client = await clients(gateway, "echo")  # type: ignore[operator]
    done = (await only(client.send_message(send("hi", context_id="c")))).task
    with pytest.raises(UnsupportedOperationError, match="terminal state"):
        await only(client.send_message(send("more", task_id=done.id)))
    with pytest.raises(InvalidParamsError, match="context"):
        await only(client.send_message(send("more", task_id=done.id, context_id="other")))
    assert (await mesh.tasks.get(done.id)).history == []
