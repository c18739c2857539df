"""Real servers for the tests: one nats-server (JetStream) and one redis-server per session.

Each test gets its own subject/key prefix, so tests never see each other's agents. Tests that
restart or kill a server use the `own_nats` / `own_redis` factories, which give them servers of
their own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.durable import DurableState
from agentmesh.broker.servers import NatsServer, RedisServer
from agentmesh.broker.settings import Settings
from agentmesh.schemas.envelope import Message
from agentmesh.schemas.task import needs_input
from agentmesh.workers.executor import Executor

# LLM workers and fake upstreams, for the worker and gateway tests alike.
pytest_plugins = ["tests.workers.fixtures", "tests.mcp.fixtures"]

_counter = itertools.count()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(data_dir=tmp_path_factory.mktemp("nats")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(data_dir=tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{next(_counter)}x{uuid.uuid4().hex[:6]}"


@pytest.fixture
def settings(nats_server: NatsServer, redis_server: RedisServer, prefix: str) -> Settings:
    """Settings for this test: the session's servers, a prefix of its own, short timings."""
    return Settings(
        nats_url=nats_server.url,
        redis_url=redis_server.url,
        prefix=prefix,
        heartbeat_interval=0.2,
        heartbeat_timeout=1.0,
        keepalive_interval=0.2,
        request_timeout=5.0,
    )


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server for this test alone (to stop, kill or restart)."""
    server = NatsServer(data_dir=tmp_path / "own-nats").start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone (to stop, kill or restart)."""
    server = RedisServer(data_dir=tmp_path / "own-redis").start()
    yield server
    server.stop()


@pytest.fixture
def env_for(settings: Settings) -> dict[str, str]:
    """Environment for a child process (CLI, agent replica) that joins this test's mesh."""
    env = dict(os.environ)
    env.update(
        AGENTMESH_NATS_URL=settings.nats_url,
        AGENTMESH_REDIS_URL=settings.redis_url,
        AGENTMESH_PREFIX=settings.prefix,
        AGENTMESH_HEARTBEAT_INTERVAL=str(settings.heartbeat_interval),
        AGENTMESH_HEARTBEAT_TIMEOUT=str(settings.heartbeat_timeout),
        AGENTMESH_KEEPALIVE_INTERVAL=str(settings.keepalive_interval),
    )
    return env


@pytest.fixture
def task_env(env_for: dict[str, str], settings: Settings) -> dict[str, str]:
    """`env_for` plus the test's task timings, for children that run or create tasks (the first
    to create the queue's consumers sets their ack wait, the lease)."""
    return dict(
        env_for,
        AGENTMESH_TASK_LEASE=str(settings.task_lease),
        AGENTMESH_TASK_RETRY_BACKOFF=str(settings.task_retry_backoff),
        AGENTMESH_REQUEST_TIMEOUT=str(settings.request_timeout),
    )


class Logged(logging.Handler):
    """Counts the records of `logger` whose message contains `text`; `wait(n)` returns once
    there were `n` (for events only logs show, such as a NATS reconnect inside a replica)."""

    def __init__(self, logger: str, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.count = 0
        self._changed = asyncio.Event()
        self._logger = logging.getLogger(logger)
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.count += 1
            self._changed.set()

    def __enter__(self) -> Logged:
        self._logger.addHandler(self)
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)

    async def wait(self, n: int = 1, *, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while self.count < n:
                self._changed.clear()
                await self._changed.wait()


StartAgent = Callable[..., Awaitable[Agent]]


async def wait_agent(
    mesh: MeshClient, agent_id: str, instances: int = 1, *, timeout: float = 20
) -> None:
    """Return once `agent_id` has `instances` instances in the registry: read it at each of
    the agent's presence events (subscribed before the first read, so none is missed)."""
    sub = await mesh.bus.nc.subscribe(mesh.bus.subjects.presence_events(agent_id))
    try:
        async with asyncio.timeout(timeout):
            while True:
                presence = await mesh.agent(agent_id)
                if (len(presence.instances) if presence else 0) == instances:
                    return
                await sub.next_msg(timeout=None)
    finally:
        await sub.unsubscribe()


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[MeshClient]:
    async with MeshClient.connect(settings, sender_id="tester") as client:
        yield client


@pytest.fixture
async def start_agent(settings: Settings) -> AsyncIterator[StartAgent]:
    """`await start_agent(agent)` starts it on this test's mesh; it is stopped afterwards."""
    started: list[Agent] = []

    async def start(agent: Agent, *, settings_: Settings | None = None) -> Agent:
        await agent.start(settings_ or settings)
        started.append(agent)
        return agent

    yield start
    for agent in reversed(started):
        await agent.stop()


StartExecutor = Callable[..., Awaitable[Executor]]


@pytest.fixture
async def start_executor(settings: Settings) -> AsyncIterator[StartExecutor]:
    """`await start_executor()` runs an executor (durable tasks: `/gateway/send` without wait,
    webhook deliveries, `mesh.tasks`) on this test's mesh; stopped afterwards."""
    started: list[Executor] = []

    async def start(**kw: object) -> Executor:
        executor = Executor(**kw)  # type: ignore[arg-type]
        await executor.start(settings)
        started.append(executor)
        return executor

    yield start
    for executor in reversed(started):
        await executor.stop()


@pytest.fixture
async def weather(start_agent: StartAgent, start_executor: StartExecutor) -> list[Message]:
    """Agent `weather` with an executor: it asks which city (`needs_input`) until told Oslo,
    and refuses a task that says "refuse"; the messages it got, in order."""
    got: list[Message] = []
    agent = Agent("weather")

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> object:
        got.append(msg)
        if msg.text == "refuse":
            return Message(content=[], metadata={"task_state": "rejected"})
        if "oslo" not in msg.text.lower():
            return needs_input("Which city?", asked="city")
        return f"sunny in Oslo ({len(got)} turns)"

    await start_agent(agent)
    await start_executor()
    return got


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A Redis client on this test's server (keys of other tests differ by prefix)."""
    client = await connect_redis(settings)
    yield client
    await client.aclose()


@pytest.fixture
async def durable(settings: Settings) -> AsyncIterator[DurableState]:
    """The mesh's JetStream records (API keys, webhooks, usage) on this test's NATS."""
    async with await Bus.connect(settings, name="tests") as bus:
        yield DurableState(bus.nc)


@pytest.fixture(scope="session")
def agentmesh_exe() -> str:
    """The `agentmesh` console script, for tests that run it as a real process."""
    found = shutil.which("agentmesh", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"no agentmesh script next to {sys.executable}: pip install -e .")
    return found
