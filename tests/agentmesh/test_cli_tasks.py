"""`agentmesh tasks` and `agentmesh traces` as real processes against this test's mesh, with an
agent and an executor in-process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.schemas.envelope import Message
from tests.agentmesh.test_cli import ROOT, Result, run_cli
from tests.conftest import StartAgent, StartExecutor


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_(task_lease=1.0, task_retry_backoff=0.05, request_timeout=10.0)


@pytest.fixture
def env(task_env: dict[str, str]) -> dict[str, str]:
    return task_env


@pytest.fixture
async def release() -> AsyncIterator[asyncio.Event]:
    """Set to let the `analyst` finish a task whose text is "hold" (set at the end, too)."""
    event = asyncio.Event()
    yield event
    event.set()


@pytest.fixture
async def analyst(
    start_agent: StartAgent,
    start_executor: StartExecutor,
    release: asyncio.Event,
) -> Agent:
    """`analyst` (type `analysis`) streams its answer in two chunks; "fail" fails it."""
    agent = Agent("analyst", agent_type="analysis")

    @agent.handler
    async def handle(msg: Message, ctx: Context):  # noqa: ANN202 - an async generator
        if msg.text == "fail":
            raise RuntimeError("no luck")
        if msg.text == "hold":
            await ctx.progress("waiting", {"step": 1})
            await release.wait()
        yield "analysed: "
        yield msg.text or json.dumps(msg.data)

    await start_agent(agent)
    await start_executor()
    return agent


async def test_submit_wait_prints_the_result_get_shows_it_completed_and_cancel_is_refused(
    agentmesh_exe: str, env: dict[str, str], analyst: Agent
) -> None:
    done = await run_cli(agentmesh_exe, "tasks", "submit", "analyst", "sales", "--wait", env=env)
    assert (done.code, done.out) == (0, "analysed: sales\n"), done.err
    task_id, status = done.err.split()
    assert task_id.startswith("task-") and status == "pending"

    got, cancel = await asyncio.gather(
        run_cli(agentmesh_exe, "tasks", "get", task_id, env=env),
        run_cli(agentmesh_exe, "tasks", "cancel", task_id, env=env),
    )
    lines = got.out.splitlines()
    assert got.code == 0, got.err
    assert f"task       {task_id}" in lines and "status     completed" in lines
    assert "agent      analyst" in lines and "attempts   1 of 3" in lines
    assert any(line.startswith("  #1 ") and analyst.instance_id in line for line in lines)
    assert lines[-1] == "result     analysed: sales"
    assert cancel.code == 1 and cancel.out == ""
    assert cancel.err == f"error: CONFLICT: task {task_id} is completed already\n"


async def test_watch_prints_the_events_as_they_come_and_exits_0_when_completed(
    agentmesh_exe: str,
    env: dict[str, str],
    mesh: MeshClient,
    analyst: Agent,
    release: asyncio.Event,
) -> None:
    ref = await mesh.tasks.submit("analyst", "hold")
    proc = await asyncio.create_subprocess_exec(
        agentmesh_exe,
        "tasks",
        "watch",
        ref.task_id,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            assert proc.stdout is not None
            seen = [(await proc.stdout.readline()).decode() for _ in range(3)]
            # The agent holds the task: these came while it ran, so the watch is following.
            release.set()
            rest, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = [line.rstrip("\n") for line in seen] + rest.decode().splitlines()
    assert proc.returncode == 0, err
    seqs = [int(line.split()[0]) for line in lines]
    assert seqs == sorted(set(seqs))
    assert [line.split(" ", 1)[1] for line in lines] == [
        "status pending",
        f"status running attempt 1 agent_id=analyst instance_id={analyst.instance_id}",
        'progress attempt 1 waiting {"step": 1}',
        'chunk attempt 1 "analysed: "',
        'chunk attempt 1 "hold"',
        "status completed attempt 1",
    ]


@pytest.mark.usefixtures("analyst")
async def test_a_failed_task_exits_1_from_wait_and_from_a_resumed_watch(
    agentmesh_exe: str, env: dict[str, str], mesh: MeshClient
) -> None:
    args = (
        "tasks",
        "submit",
        "analyst",
        "fail",
        "--max-attempts",
        "1",
        "--wait",
        "--timeout",
        "10",
    )
    waited = await run_cli(agentmesh_exe, *args, env=env)
    assert waited.code == 1 and waited.out == ""
    task_id = waited.err.split()[0]
    assert waited.err.splitlines()[1:] == [
        f"error: task {task_id} failed: INTERNAL: RuntimeError: no luck"
    ]
    # Resume after the `running` event: only the final one is left.
    events = [e async for e in mesh.tasks.events(task_id)]
    running = str(events[1].seq)
    watched = await run_cli(agentmesh_exe, "tasks", "watch", task_id, "--after", running, env=env)
    assert watched.code == 1
    assert watched.out.splitlines() == [
        f"{events[2].seq} status failed attempt 1 INTERNAL: RuntimeError: no luck"
    ]


@pytest.mark.usefixtures("analyst")
async def test_traces_group_tasks_and_list_filters_them(
    agentmesh_exe: str, env: dict[str, str], mesh: MeshClient
) -> None:
    created = await run_cli(
        agentmesh_exe, "traces", "create", "user_1", "--type", "analysis", "--name", "q3", env=env
    )
    assert created.code == 0, created.err
    trace_id = created.out.strip()
    # No AGENT: the trace's type takes it; --data adds a data part.
    by_trace = await run_cli(
        agentmesh_exe, "tasks", "submit", "--trace", trace_id, "--data", '{"n": 1}', "--json",
        env=env,
    )  # fmt: skip
    assert by_trace.code == 0, by_trace.err
    in_trace = json.loads(by_trace.out)["task_id"]
    other = await mesh.tasks.submit("analyst", "later", priority="low", not_before=time.time() + 60)
    await mesh.tasks.wait(in_trace, timeout=10)

    runs = await asyncio.gather(
        run_cli(agentmesh_exe, "tasks", "list", "--status", "completed", env=env),
        run_cli(agentmesh_exe, "tasks", "list", "--agent", "analyst", env=env),
        run_cli(agentmesh_exe, "traces", "get", trace_id, env=env),
        run_cli(agentmesh_exe, "traces", "list", "--workspace", "user_1", env=env),
    )
    completed, for_analyst, trace, traces = runs
    assert all(r.code == 0 for r in runs), [r.err for r in runs]
    assert _table(completed) == [[in_trace, "completed", "analyst", "analysis", "1"]]
    assert _table(for_analyst) == [[other.task_id, "pending", "analyst", "-", "0"]], for_analyst
    assert f"trace      {trace_id}" in trace.out and "name       q3" in trace.out
    assert _table(Result(0, trace.out.split("\n\n", 1)[1], ""))[0][:2] == [in_trace, "completed"]
    assert _table(traces) == [[trace_id, "user_1", "analysis", "q3"]]


def _table(result: Result) -> list[list[str]]:
    """The rows of a printed table below its header, without the CREATED column."""
    return [line.split()[:-1] for line in result.out.splitlines()[1:]]


async def test_an_unknown_task_exits_1_with_one_error_line(
    agentmesh_exe: str, env: dict[str, str]
) -> None:
    unknown = "task-" + "0" * 32
    result = await run_cli(agentmesh_exe, "tasks", "watch", unknown, env=env)
    assert (result.code, result.out) == (1, "")
    assert result.err == f"error: NOT_FOUND: no task {unknown!r}\n"


async def test_nats_down_exits_1_with_one_line(agentmesh_exe: str, env: dict[str, str]) -> None:
    down = env | {"AGENTMESH_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    result = await run_cli(agentmesh_exe, "tasks", "submit", "analyst", "x", env=down)
    assert result.code == 1
    [line] = result.err.splitlines()
    assert line.startswith("error: cannot reach NATS at"), line
