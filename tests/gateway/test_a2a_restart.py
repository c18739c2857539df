"""A2A tasks survive their gateway (issue 13): a task sent with the official `a2a-sdk` client
through a gateway process (`agentmesh gateway`) that is then stopped (SIGTERM) or SIGKILLed is
still answered for, by that gateway started again or by another replica: GetTask, ListTasks and
SubscribeToTask during and after the work, and the task completes, once.

The gateways are child processes so that SIGKILL takes everything they held (connections,
in-flight requests); the agent and the executor run in the test, untouched by the restarts.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from a2a.client import Client
from a2a.client.errors import A2AClientError
from a2a.types.a2a_pb2 import (
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    Task,
    TaskState,
)
from a2a.utils.constants import TransportProtocol
from a2a.utils.errors import UnsupportedOperationError

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import Context
from agentmesh.broker.servers import free_port
from agentmesh.schemas.envelope import Message as MeshMessage
from tests.conftest import StartAgent, StartExecutor

JSONRPC, REST = TransportProtocol.JSONRPC.value, TransportProtocol.HTTP_JSON.value
WORKING = TaskState.TASK_STATE_WORKING
COMPLETED = TaskState.TASK_STATE_COMPLETED
LISTENING = "Uvicorn running on"  # what uvicorn logs once the replica accepts connections
TIMEOUT = 30.0


class GatewayProcess:
    """`agentmesh gateway --port P` as a child process; its log is read as it comes, so the
    test waits for the line saying it listens instead of polling the port."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc = proc
        self.port = port
        self.log: collections.deque[str] = collections.deque(maxlen=40)
        self._listening = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            if LISTENING in line:
                self._listening.set()

    async def listening(self) -> None:
        """Return once it listens; fail with its log if it exits first."""
        listening = asyncio.ensure_future(self._listening.wait())
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            await asyncio.wait(
                {listening, exited}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            listening.cancel()
            exited.cancel()
        if not self._listening.is_set():
            log = "\n".join(self.log)
            pytest.fail(f"the gateway on port {self.port} did not listen in {TIMEOUT} s:\n{log}")

    async def stop(self, sig: signal.Signals) -> int:
        """Send `sig` to this process; its exit code once it has exited."""
        self.proc.send_signal(sig)
        async with asyncio.timeout(TIMEOUT):
            code = await self.proc.wait()
            await self._reader  # the log to its end
        return code


StartGatewayProcess = Callable[..., Awaitable[GatewayProcess]]


@pytest.fixture
async def gateways(
    agentmesh_exe: str, task_env: dict[str, str]
) -> AsyncIterator[StartGatewayProcess]:
    """`await gateways(port=None)` runs one more gateway process on this test's mesh (on a free
    port unless given); each still running is SIGKILLed after the test."""
    started: list[GatewayProcess] = []

    async def start(*, port: int | None = None) -> GatewayProcess:
        port = port or free_port()
        proc = await asyncio.create_subprocess_exec(
            agentmesh_exe,
            "gateway",
            "--port",
            str(port),
            env=task_env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        gateway = GatewayProcess(proc, port)
        started.append(gateway)
        await gateway.listening()
        return gateway

    yield start
    for gateway in started:
        if gateway.proc.returncode is None:
            await gateway.stop(signal.SIGKILL)


class Held:
    """An agent whose handler waits for `release`; `started` is set at each call, `runs` counts."""

    def __init__(self, agent_id: str) -> None:
        self.started, self.release = asyncio.Event(), asyncio.Event()
        self.runs = 0
        self.agent = Agent(agent_id)
        self.agent.handler(self._handle)

    async def _handle(self, msg: MeshMessage, ctx: Context) -> str:
        self.runs += 1
        self.started.set()
        await self.release.wait()
        return f"done: {msg.text}"

    async def wait_started(self) -> None:
        async with asyncio.timeout(TIMEOUT):
            await self.started.wait()


def user(text: str, **kw: object) -> Message:
    return Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)], **kw)


async def only(responses: AsyncIterator[StreamResponse]) -> Task:
    got = [r async for r in responses]
    assert len(got) == 1 and got[0].HasField("task"), got
    return got[0].task


def texts(task: Task) -> list[str]:
    return [p.text for a in task.artifacts for p in a.parts]


def pieces(stream: list[StreamResponse]) -> list[str]:
    """The texts of a stream's artifact updates."""
    updates = [r.artifact_update for r in stream if r.HasField("artifact_update")]
    return [p.text for u in updates for p in u.artifact.parts]


async def follow_to_the_end(stream: AsyncIterator[StreamResponse]) -> list[StreamResponse]:
    async with asyncio.timeout(TIMEOUT):
        return [r async for r in stream]


@pytest.fixture
async def held(start_agent: StartAgent, start_executor: StartExecutor) -> Held:
    """Agent `slow`, held until released (and an executor)."""
    agent = Held("slow")
    await start_agent(agent.agent)
    await start_executor()
    return agent


async def test_a_task_outlives_its_gateway_stopped_and_started_again(
    held: Held, gateways: StartGatewayProcess, clients: Callable[..., Awaitable[Client]]
) -> None:
    first = await gateways()
    url = f"{first.url}/a2a/slow"
    blocking = await clients(url)
    streaming = await clients(url, streaming=True)
    sending = asyncio.ensure_future(
        only(blocking.send_message(SendMessageRequest(message=user("job"))))
    )
    await held.wait_started()
    (listed,) = (await blocking.list_tasks(ListTasksRequest())).tasks
    task_id = listed.id
    following = streaming.subscribe(SubscribeToTaskRequest(id=task_id))
    assert (await anext(following)).task.status.state == WORKING

    assert await first.stop(signal.SIGTERM) == 0
    # What it held open ended with it: the blocking send has the task as it was, the
    # subscription ended without a final state (the client subscribes again, anywhere).
    async with asyncio.timeout(TIMEOUT):
        answered = await sending
    assert answered.id == task_id and answered.status.state == WORKING
    ended = await follow_to_the_end(following)
    assert all(
        r.status_update.status.state != COMPLETED for r in ended if r.HasField("status_update")
    )

    again = await gateways(port=first.port)  # the same address: the same clients go on
    assert again.port == first.port
    seen = await blocking.get_task(GetTaskRequest(id=task_id))
    assert seen.status.state == WORKING and [m.parts[0].text for m in seen.history] == ["job"]
    assert [t.id for t in (await blocking.list_tasks(ListTasksRequest())).tasks] == [task_id]
    resumed = streaming.subscribe(SubscribeToTaskRequest(id=task_id))
    snapshot = (await anext(resumed)).task
    assert snapshot.id == task_id and snapshot.status.state == WORKING
    held.release.set()
    rest = await follow_to_the_end(resumed)
    assert rest[-1].status_update.status.state == COMPLETED
    assert pieces(rest)[-1] == "done: job"  # the result artifact, before the final status

    done = await blocking.get_task(GetTaskRequest(id=task_id))
    assert done.status.state == COMPLETED and texts(done) == ["done: job"]
    finished = await blocking.list_tasks(ListTasksRequest(status=COMPLETED))
    assert [t.id for t in finished.tasks] == [task_id]
    with pytest.raises(UnsupportedOperationError):  # finished: nothing more to follow
        async for _ in streaming.subscribe(SubscribeToTaskRequest(id=task_id)):
            pass
    assert held.runs == 1


async def test_a_blocking_send_cut_by_a_sigkill_is_found_and_sent_again_on_another_replica(
    held: Held, gateways: StartGatewayProcess, clients: Callable[..., Awaitable[Client]]
) -> None:
    first = await gateways()
    message = user("job", context_id="conv-restart")
    cut = await clients(f"{first.url}/a2a/slow")
    sending = asyncio.ensure_future(only(cut.send_message(SendMessageRequest(message=message))))
    await held.wait_started()
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    with pytest.raises(A2AClientError, match="Network communication error"):
        async with asyncio.timeout(TIMEOUT):
            await sending  # the answer is lost with the process; the task is not

    other = await gateways()
    url = f"{other.url}/a2a/slow"
    rest_client = await clients(url, binding=REST, streaming=True)
    (listed,) = (await rest_client.list_tasks(ListTasksRequest(context_id="conv-restart"))).tasks
    task_id = listed.id
    assert listed.status.state == WORKING
    seen = await rest_client.get_task(GetTaskRequest(id=task_id))
    assert seen.status.state == WORKING and seen.context_id == "conv-restart"
    following = rest_client.subscribe(SubscribeToTaskRequest(id=task_id))
    assert (await anext(following)).task.status.state == WORKING
    # The client sends its message again (the same messageId): the same task, waited for.
    retry = await clients(url)
    again = asyncio.ensure_future(only(retry.send_message(SendMessageRequest(message=message))))
    held.release.set()
    got = await follow_to_the_end(following)
    assert got[-1].status_update.status.state == COMPLETED and pieces(got) == ["done: job"]
    async with asyncio.timeout(TIMEOUT):
        answered = await again
    assert answered.id == task_id and answered.status.state == COMPLETED
    assert texts(answered) == ["done: job"]

    done = await rest_client.get_task(GetTaskRequest(id=task_id))
    assert done.status.state == COMPLETED and texts(done) == ["done: job"]
    listed_after = await rest_client.list_tasks(ListTasksRequest(context_id="conv-restart"))
    assert [(t.id, t.status.state) for t in listed_after.tasks] == [(task_id, COMPLETED)]
    with pytest.raises(UnsupportedOperationError):
        async for _ in rest_client.subscribe(SubscribeToTaskRequest(id=task_id)):
            pass
    assert held.runs == 1  # the agent ran it once, through both gateways' lives
