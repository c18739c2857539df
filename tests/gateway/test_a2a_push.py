"""A2A push notifications (issue 13): the config methods through the official `a2a-sdk` client
against two gateway replicas, and the task updates POSTed to a real local webhook receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.types.a2a_pb2 import (
    DeleteTaskPushNotificationConfigRequest,
    GetTaskPushNotificationConfigRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTasksRequest,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError
from google.protobuf.json_format import Parse
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.broker.durable import DurableState
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.tasks import names
from agentmesh.gateway.a2a import push
from agentmesh.gateway.a2a.push_configs import bucket_name
from agentmesh.gateway.server import make_server
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.envelope import Message as MeshMessage
from tests.conftest import Logged, StartAgent, StartExecutor
from tests.gateway.conftest import Replica, StartGateway
from tests.gateway.test_a2a import JSONRPC, MISSING, REST, only, send, user
from tests.waiting import until
from tests.workers.fake_server import FakeServer

ALLOW = GatewayConfig(a2a_push_allow_private=True)  # the receiver is on loopback
DEADLINE = 30.0
SUBMITTED, WORKING = TaskState.TASK_STATE_SUBMITTED, TaskState.TASK_STATE_WORKING
COMPLETED = TaskState.TASK_STATE_COMPLETED


class Receiver:
    """A webhook receiver on a free port: `POST /hook/<name>`, answering `fail` (a status)
    to the first `failures` POSTs and 200 after; what it took is in `got[name]`."""

    def __init__(self) -> None:
        self.got: dict[str, list[tuple[str | None, StreamResponse]]] = {}
        self.posts = 0
        self.failures = 0
        self.fail = 503
        self.hold: asyncio.Event | None = None  # set: the first POST waits for it, then fails
        self.held = asyncio.Event()
        self._changed = asyncio.Event()
        self.server = FakeServer([Route("/hook/{name}", self._hook, methods=["POST"])])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.port}/hook/{name}"

    async def _hook(self, request: Request) -> Response:
        self.posts += 1
        self._changed.set()
        if self.hold is not None and self.posts == 1:
            self.held.set()
            await self.hold.wait()
            return Response(status_code=503)
        if self.posts <= self.failures:
            return Response(status_code=self.fail)
        event = Parse(await request.body(), StreamResponse())
        token = request.headers.get("x-a2a-notification-token")
        self.got.setdefault(request.path_params["name"], []).append((token, event))
        return Response(status_code=200)

    async def until(self, check: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(DEADLINE):
                while not check():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not within {DEADLINE:.0f} s: {what}; got {self.got}") from None

    def final(self, name: str) -> bool:
        return any(e.HasField("task") for _, e in self.got.get(name, []))

    def seen(self, name: str) -> list[tuple[str | None, str, int]]:
        """(token, payload kind, state) of each notification `name` took, in order."""
        out = []
        for token, event in self.got.get(name, []):
            kind = event.WhichOneof("payload")
            body = event.task if kind == "task" else event.status_update
            out.append((token, kind, body.status.state))
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    await hook.server.start()
    yield hook
    await hook.server.stop()


@pytest.fixture
async def echo(start_agent: StartAgent, start_executor: StartExecutor) -> Agent:
    agent = Agent("echo")
    agent.handler(lambda msg, ctx: f"echo: {msg.text}")
    await start_agent(agent)
    await start_executor()
    return agent


def pushing(text: str, url: str, token: str, *, now: bool = False) -> SendMessageRequest:
    """A message with a push notification config."""
    return SendMessageRequest(
        message=user(text),
        configuration=SendMessageConfiguration(
            return_immediately=now,
            task_push_notification_config=TaskPushNotificationConfig(url=url, token=token),
        ),
    )


async def drained(durable: DurableState, settings: Settings) -> None:
    """Return once both push consumers have acked every message: nothing more will be sent."""
    consumers = [
        (names(settings.prefix)["task_events"], push.CONSUMER),
        (f"KV_{bucket_name(settings.prefix)}", push.CONFIG_CONSUMER),
    ]

    async def acked() -> bool:  # nothing to await: JetStream's counters, polled
        infos = [await durable.js.consumer_info(s, c) for s, c in consumers]
        return all(i.num_pending == 0 and i.num_ack_pending == 0 for i in infos)

    await until(acked, timeout=DEADLINE, what="push consumers drained")


async def test_the_card_says_push_notifications_are_supported(
    start_gateway: StartGateway, echo: Agent
) -> None:
    gateway = await start_gateway()
    async with httpx.AsyncClient(timeout=10) as http:
        card = await A2ACardResolver(http, f"{gateway.url}/a2a/echo").get_agent_card()
    assert card.capabilities.push_notifications


@pytest.mark.parametrize("binding", [JSONRPC, REST])
async def test_configs_are_created_read_listed_and_deleted_from_either_replica(
    start_gateway: StartGateway,
    echo: Agent,
    clients: Callable[..., Any],
    receiver: Receiver,
    binding: str,
) -> None:
    first, second = await start_gateway(config=ALLOW), await start_gateway(config=ALLOW)
    one = await clients(first, "echo", binding=binding)
    other = await clients(second, "echo", binding=binding)
    task = (await only(one.send_message(send("hi")))).task
    made = await one.create_task_push_notification_config(
        TaskPushNotificationConfig(task_id=task.id, id="c1", url=receiver.url("a"), token="t1")
    )
    assert (made.id, made.task_id, made.url, made.token) == ("c1", task.id, receiver.url("a"), "t1")
    default = await one.create_task_push_notification_config(
        TaskPushNotificationConfig(task_id=task.id, url=receiver.url("b"))
    )
    assert default.id == task.id  # as the SDK: the id defaults to the task's
    got = await other.get_task_push_notification_config(
        GetTaskPushNotificationConfigRequest(task_id=task.id, id="c1")
    )
    assert got == made
    listed = await other.list_task_push_notification_configs(
        ListTaskPushNotificationConfigsRequest(task_id=task.id)
    )
    assert [c.id for c in listed.configs] == ["c1", task.id]
    # The same id again replaces it.
    await other.create_task_push_notification_config(
        TaskPushNotificationConfig(task_id=task.id, id="c1", url=receiver.url("a"), token="t2")
    )
    got = await one.get_task_push_notification_config(
        GetTaskPushNotificationConfigRequest(task_id=task.id, id="c1")
    )
    assert got.token == "t2"
    await other.delete_task_push_notification_config(
        DeleteTaskPushNotificationConfigRequest(task_id=task.id, id="c1")
    )
    with pytest.raises(TaskNotFoundError):
        await one.get_task_push_notification_config(
            GetTaskPushNotificationConfigRequest(task_id=task.id, id="c1")
        )
    listed = await one.list_task_push_notification_configs(
        ListTaskPushNotificationConfigsRequest(task_id=task.id)
    )
    assert [c.id for c in listed.configs] == [task.id]
    # A task that is not there (or not this agent's) has no configs.
    for task_id in (MISSING, "nonsense"):
        with pytest.raises(TaskNotFoundError):
            await one.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, url=receiver.url("a"))
            )
        with pytest.raises(TaskNotFoundError):
            await one.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=task_id, id="c1")
            )
        with pytest.raises(TaskNotFoundError):
            await one.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task_id)
            )
        with pytest.raises(TaskNotFoundError):
            await one.delete_task_push_notification_config(
                DeleteTaskPushNotificationConfigRequest(task_id=task_id, id="c1")
            )


async def test_updates_reach_each_webhook_once_with_its_token_across_two_replicas(
    start_gateway: StartGateway,
    start_agent: StartAgent,
    start_executor: StartExecutor,
    clients: Callable[..., Any],
    receiver: Receiver,
    durable: DurableState,
    settings: Settings,
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
    first, second = await start_gateway(config=ALLOW), await start_gateway(config=ALLOW)
    one, other = await clients(first, "slow"), await clients(second, "slow", binding=REST)
    # One config given with the message, on one replica (its id: the task's); one made later,
    # on the other (another id: a config of the same id replaces the first, as in the SDK).
    sent = pushing("job", receiver.url("given"), "secret-1", now=True)
    task = (await only(one.send_message(sent))).task
    async with asyncio.timeout(DEADLINE):
        await started.wait()
    # The `working` event is in the log once the first webhook has it.
    await receiver.until(lambda: len(receiver.got.get("given", [])) == 2, "working")
    await other.create_task_push_notification_config(
        TaskPushNotificationConfig(
            task_id=task.id, id="later", url=receiver.url("later"), token="secret-2"
        )
    )
    release.set()
    await receiver.until(lambda: receiver.final("given") and receiver.final("later"), "finals")
    await drained(durable, settings)
    assert receiver.seen("given") == [
        ("secret-1", "status_update", SUBMITTED),
        ("secret-1", "status_update", WORKING),
        ("secret-1", "task", COMPLETED),
    ]
    assert receiver.seen("later") == [("secret-2", "task", COMPLETED)]  # what came after it
    final = receiver.got["given"][-1][1].task
    assert final.id == task.id and final.context_id == task.context_id
    assert [p.text for a in final.artifacts for p in a.parts] == ["done: job"]
    updates = [e.status_update for _, e in receiver.got["given"][:2]]
    assert {(u.task_id, u.context_id) for u in updates} == {(task.id, task.context_id)}


async def test_a_webhook_that_fails_first_gets_every_update_on_retry(
    start_gateway: StartGateway,
    echo: Agent,
    clients: Callable[..., Any],
    receiver: Receiver,
    durable: DurableState,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(push, "BACKOFF", 0.05)  # the replicas run in this process
    receiver.failures = 4
    first, second = await start_gateway(config=ALLOW), await start_gateway(config=ALLOW)
    client = await clients(first, "echo")
    task = (await only(client.send_message(pushing("hi", receiver.url("h"), "tok")))).task
    assert task.status.state == COMPLETED  # the task did not wait for the webhook
    await receiver.until(lambda: receiver.final("h"), "the final task")
    await drained(durable, settings)
    assert receiver.seen("h") == [
        ("tok", "status_update", SUBMITTED),
        ("tok", "status_update", WORKING),
        ("tok", "task", COMPLETED),
    ]
    assert receiver.posts == 4 + 3
    del second


async def test_a_webhook_that_stays_down_is_given_up_and_logged(
    start_gateway: StartGateway,
    echo: Agent,
    clients: Callable[..., Any],
    receiver: Receiver,
    durable: DurableState,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(push, "BACKOFF", 0.01)
    receiver.failures, receiver.fail = 10**6, 500
    gateway = await start_gateway(config=ALLOW)
    client = await clients(gateway, "echo")
    with Logged("agentmesh.gateway.a2a.push", "given up") as logged:
        task = (await only(client.send_message(pushing("hi", receiver.url("h"), "t")))).task
        assert task.status.state == COMPLETED
        await logged.wait(3)  # submitted, working, the final task: each tried, then given up
    await drained(durable, settings)
    assert receiver.posts == 3 * push.ATTEMPTS and not receiver.got
    # A 4xx other than 408/429 is given up at once.
    receiver.fail, receiver.posts = 404, 0
    with Logged("agentmesh.gateway.a2a.push", "HTTP 404") as logged:
        await only(client.send_message(pushing("again", receiver.url("h"), "t")))
        await logged.wait(3)
    await drained(durable, settings)
    assert receiver.posts == 3


async def test_a_replica_that_stops_mid_delivery_hands_it_over_to_another(
    settings: Settings,
    start_gateway: StartGateway,
    echo: Agent,
    clients: Callable[..., Any],
    receiver: Receiver,
    durable: DurableState,
) -> None:
    receiver.hold = asyncio.Event()
    port = free_port()
    leaving = make_server(settings, port=port, config=ALLOW, log_level="warning")
    await leaving.start()
    try:
        client = await clients(Replica(url=f"http://127.0.0.1:{port}", port=port), "echo")
        task = (await only(client.send_message(pushing("hi", receiver.url("h"), "t")))).task
        async with asyncio.timeout(DEADLINE):
            await receiver.held.wait()  # the leaving replica is posting the first update
        await start_gateway(config=ALLOW)
    finally:
        await leaving.stop()  # its deliveries stop, their leases and messages handed back
    receiver.hold.set()
    await receiver.until(lambda: receiver.final("h"), "the final task, from the other replica")
    await drained(durable, settings)
    assert receiver.seen("h") == [
        ("t", "status_update", SUBMITTED),
        ("t", "status_update", WORKING),
        ("t", "task", COMPLETED),
    ]
    assert receiver.got["h"][-1][1].task.id == task.id


@pytest.mark.parametrize("binding", [JSONRPC, REST])
async def test_a_private_webhook_is_refused_unless_the_gateway_allows_it(
    start_gateway: StartGateway,
    echo: Agent,
    clients: Callable[..., Any],
    receiver: Receiver,
    binding: str,
) -> None:
    gateway = await start_gateway()  # a2a_push_allow_private off, as by default
    client = await clients(gateway, "echo", binding=binding)
    task = (await only(client.send_message(send("hi")))).task
    for url in (
        receiver.url("h"),
        f"http://localhost:{receiver.server.port}/h",
        "http://10.1.2.3/",
    ):
        with pytest.raises(InvalidParamsError) as caught:
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, url=url)
            )
        assert "private" in str(caught.value), caught.value
        assert "AGENTMESH_GATEWAY_A2A_PUSH_ALLOW_PRIVATE" in str(caught.value)
    for url in ("ftp://example.com/hook", "not a url"):
        with pytest.raises(InvalidParamsError):
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, url=url)
            )
    # Given with a message: refused before the message is stored.
    with pytest.raises(InvalidParamsError):
        await only(client.send_message(pushing("no", receiver.url("h"), "t")))
    listed = await client.list_tasks(ListTasksRequest())
    assert [t.id for t in listed.tasks] == [task.id]
    listed_configs = await client.list_task_push_notification_configs(
        ListTaskPushNotificationConfigsRequest(task_id=task.id)
    )
    assert not listed_configs.configs
    assert receiver.posts == 0


def test_allowing_private_webhooks_comes_from_the_environment() -> None:
    assert GatewayConfig.from_env({}).a2a_push_allow_private is False
    env = {"AGENTMESH_GATEWAY_A2A_PUSH_ALLOW_PRIVATE": "on"}
    assert GatewayConfig.from_env(env).a2a_push_allow_private is True


async def test_a_0_3_client_sets_and_reads_configs_too(
    start_gateway: StartGateway, echo: Agent, receiver: Receiver
) -> None:
    """The SDK's 0.3 JSON-RPC transport (`tasks/pushNotificationConfig/set`, ...; no version
    header), picked by the client when the card offers only 0.3 interfaces."""
    gateway = await start_gateway(config=ALLOW)
    async with httpx.AsyncClient(timeout=30) as http:
        card = await A2ACardResolver(http, f"{gateway.url}/a2a/echo").get_agent_card()
        legacy = [i for i in card.supported_interfaces if i.protocol_version == "0.3"]
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(legacy)
        config = ClientConfig(
            httpx_client=http, streaming=False, supported_protocol_bindings=[JSONRPC]
        )
        async with ClientFactory(config).create(card) as client:
            task = (await only(client.send_message(send("old")))).task
            made = await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task.id, id="c", url=receiver.url("h"))
            )
            assert made.id == "c" and made.url == receiver.url("h")
            got = await client.get_task_push_notification_config(
                GetTaskPushNotificationConfigRequest(task_id=task.id, id="c")
            )
            assert got.url == receiver.url("h")
            listed = await client.list_task_push_notification_configs(
                ListTaskPushNotificationConfigsRequest(task_id=task.id)
            )
            assert [c.id for c in listed.configs] == ["c"]
