"""`agentmesh tasks` and `agentmesh traces`: submit, read, watch and cancel durable tasks, and
group them in traces (PROTOCOL.md, section 12), through `mesh.tasks` and `mesh.traces`."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from pydantic import ValidationError

from agentmesh import cli_support
from agentmesh.schemas.envelope import DataPart, Message, TextPart, iso_utc
from agentmesh.schemas.errors import ErrorInfo
from agentmesh.schemas.task import (
    DEFAULT_MAX_ATTEMPTS,
    MAX_ATTEMPTS_LIMIT,
    Priority,
    TaskEvent,
    TaskEventKind,
    TaskRecord,
    TaskStatus,
    Trace,
)

if TYPE_CHECKING:
    from agentmesh.agents.client import MeshClient

T = TypeVar("T")

# `tasks wait` (and `submit --wait`): a task still unfinished at --timeout exits with this.
EXIT_UNFINISHED = 2

tasks_app = typer.Typer(
    help="Durable tasks: submit, get, list, cancel, watch, wait (an executor runs them).",
    no_args_is_help=True,
)
traces_app = typer.Typer(
    help="Traces: groups of tasks in a workspace (create, get, list, workspaces).",
    no_args_is_help=True,
)


def _with_mesh(use: Callable[[MeshClient], Awaitable[T]]) -> T:
    from agentmesh.agents.client import MeshClient

    settings = cli_support.settings()

    async def main() -> T:
        async with MeshClient.connect(settings, sender_id="cli") as mesh:
            return await use(mesh)

    try:
        return cli_support.run(main)
    except ValidationError as exc:  # a task the schema refuses (an idempotency key too long)
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise cli_support.fail(f"INVALID_MESSAGE: {where}: {first['msg']}") from None


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))


# tasks -----------------------------------------------------------------------------------------
@tasks_app.command("submit")
def submit(
    first: str | None = typer.Argument(
        None,
        metavar="AGENT",
        help="The agent id (omit it with --type, or --trace).",
        show_default=False,
    ),
    second: str | None = typer.Argument(
        None,
        metavar="TEXT",
        help="The task's text (with --type or --trace: the only argument).",
        show_default=False,
    ),
    agent_type: str | None = typer.Option(
        None, "--type", help="Any agent of this type may take the task (instead of AGENT)."
    ),
    trace: str | None = typer.Option(
        None, "--trace", help="The trace the task belongs to; without AGENT, its agent type."
    ),
    priority: Priority = typer.Option(Priority.NORMAL, help="The queue the task waits in."),
    deadline: float | None = typer.Option(
        None, help="Seconds from now: not finished by then, the task fails with TIMEOUT."
    ),
    not_before: float | None = typer.Option(
        None, "--not-before", help="Seconds from now before which the task does not start."
    ),
    max_attempts: int = typer.Option(
        DEFAULT_MAX_ATTEMPTS, min=1, max=MAX_ATTEMPTS_LIMIT, help="Attempts at most."
    ),
    retry_on_error: bool = typer.Option(
        False, "--retry-on-error", help="Retry when the agent fails too, not only when it dies."
    ),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="A second submit with this key returns the first task."
    ),
    data: str | None = typer.Option(None, help="Add this JSON as a data part."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the task; print its result."),
    timeout: float | None = typer.Option(
        None, help=f"With --wait: seconds to wait (unfinished then: exit {EXIT_UNFINISHED})."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Store a task and print its id and status.

    With --wait, print its result once it finished instead, and exit as `tasks wait` does.
    """
    words = [w for w in (first, second) if w is not None]
    agent_id, text = _target_and_text(words, by_type=agent_type is not None or bool(trace))
    parts: list[Any] = [TextPart(text=text)] if text else []
    if data is not None:
        try:
            parts.append(DataPart(data=json.loads(data)))
        except json.JSONDecodeError as exc:
            raise cli_support.fail(f"--data is not valid JSON: {exc}") from None
    if not parts:
        raise cli_support.fail("nothing to send: give TEXT or --data")
    now = time.time()

    async def use(mesh: MeshClient) -> tuple[Any, TaskRecord | None]:
        ref = await mesh.tasks.submit(
            agent_id,
            parts,
            agent_type=agent_type,
            trace_id=trace,
            priority=priority,
            deadline=None if deadline is None else now + deadline,
            not_before=None if not_before is None else now + not_before,
            max_attempts=max_attempts,
            retry_on_error=retry_on_error,
            idempotency_key=idempotency_key,
        )
        if not wait:
            return ref, None
        if not as_json:
            typer.echo(f"{ref.task_id} {ref.status.value}", err=True)
        return ref, await mesh.tasks.wait(ref.task_id, timeout=timeout)

    ref, record = _with_mesh(use)
    if record is not None:
        _finish(record, as_json=as_json, timeout=timeout)
    elif as_json:
        _echo_json(ref.model_dump(mode="json"))
    else:
        typer.echo(f"{ref.task_id} {ref.status.value}")
        if not ref.created:
            typer.echo("(an earlier task with this idempotency key)", err=True)


def _target_and_text(words: list[str], *, by_type: bool) -> tuple[str | None, str | None]:
    if len(words) == 2:
        return words[0], words[1]
    if by_type:
        return None, words[0] if words else None
    if not words:
        raise cli_support.fail("give the AGENT to run the task (or --type, or --trace)")
    return words[0], None


@tasks_app.command("get")
def get(
    task_id: str = typer.Argument(..., metavar="TASK_ID", help="The task id (task-...)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole record as JSON."),
) -> None:
    """A task's status, target, attempts and result."""
    record = _with_mesh(lambda mesh: mesh.tasks.get(task_id))
    if as_json:
        _echo_json(record.model_dump(mode="json"))
        return
    _summary(record)


def _summary(record: TaskRecord) -> None:
    spec = record.spec
    rows = [
        ("task", record.task_id),
        ("status", record.status.value),
        ("agent", spec.agent_id or ""),
        ("type", spec.agent_type or ""),
        ("trace", spec.trace_id or ""),
        ("workspace", record.workspace_id or ""),
        ("priority", spec.priority.value),
        ("input", _render(spec.input)),
        ("created", iso_utc(record.created_at)),
        ("finished", iso_utc(record.finished_at) if record.finished_at else ""),
        ("attempts", f"{record.attempt} of {spec.max_attempts}"),
    ]
    for label, value in rows:
        if value:
            typer.echo(f"{label:<10} {value}")
    for a in record.attempts:
        outcome = _error(a.error) if a.error else ("ok" if a.ended_at else "running")
        typer.echo(
            f"  #{a.number} {iso_utc(a.started_at)} agent {a.agent_id or '-'} "
            f"instance {a.instance_id or '-'}: {outcome}"
        )
    if record.result is not None:
        typer.echo(f"{'result':<10} {_render(record.result)}")
    if record.error is not None:
        typer.echo(f"{'error':<10} {_error(record.error)}")


@tasks_app.command("list")
def list_(
    trace: str | None = typer.Option(None, "--trace", help="Only the tasks of this trace."),
    agent: str | None = typer.Option(None, "--agent", help="Only the tasks for this agent id."),
    agent_type: str | None = typer.Option(None, "--type", help="Only those for this agent type."),
    status: TaskStatus | None = typer.Option(None, help="Only the tasks in this status."),
    workspace: str | None = typer.Option(None, help="Only the tasks of this workspace."),
    limit: int = typer.Option(100, min=1, help="At most this many, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The tasks, newest first.

    Without --trace this reads every task record.
    """
    records = _with_mesh(
        lambda mesh: mesh.tasks.list(
            trace_id=trace,
            agent_id=agent,
            agent_type=agent_type,
            status=status,
            workspace_id=workspace,
            limit=limit,
        )
    )
    if as_json:
        _echo_json([r.model_dump(mode="json") for r in records])
        return
    _task_table(records)


def _task_table(records: list[TaskRecord]) -> None:
    if not records:
        typer.echo("no tasks")
        return
    rows = [("TASK ID", "STATUS", "AGENT", "TYPE", "ATTEMPTS", "CREATED")]
    for r in records:
        ran_on = r.attempts[-1].agent_id if r.attempts else None
        rows.append(
            (
                r.task_id,
                r.status.value,
                r.spec.agent_id or ran_on or "-",
                r.spec.agent_type or "-",
                str(r.attempt),
                iso_utc(r.created_at),
            )
        )
    cli_support.table(rows)


@tasks_app.command("cancel")
def cancel(
    task_id: str = typer.Argument(..., metavar="TASK_ID", help="The task id (task-...)."),
) -> None:
    """Cancel a task: a pending one never runs, a running one is cancelled at its agent.

    A finished task cannot be cancelled: CONFLICT, exit 1.
    """
    record = _with_mesh(lambda mesh: mesh.tasks.cancel(task_id))
    if record.status is TaskStatus.CANCELED:
        typer.echo(f"canceled task {record.task_id}")
    else:
        typer.echo(f"cancel requested for task {record.task_id} ({record.status.value})")


@tasks_app.command("watch")
def watch(
    task_id: str = typer.Argument(..., metavar="TASK_ID", help="The task id (task-...)."),
    after: int = typer.Option(0, help="Resume after this event sequence (the first column)."),
    as_json: bool = typer.Option(False, "--json", help="Print each event as one JSON line."),
) -> None:
    """Print the task's events as they come, one a line, until its final status.

    Exits 0 if it completed, 1 if it failed, was canceled or rejected.
    """

    async def use(mesh: MeshClient) -> TaskStatus:
        record = await mesh.tasks.get(task_id)
        # A finished task has all its events already: replay them, don't wait for more.
        follow = not record.status.terminal
        final: TaskStatus | None = None
        async for event in mesh.tasks.events(task_id, after=after, follow=follow):
            if as_json:
                typer.echo(json.dumps(event.model_dump(mode="json"), ensure_ascii=False))
            else:
                typer.echo(_event_line(event))
            if event.kind is TaskEventKind.STATUS and event.status and event.status.terminal:
                final = event.status
        return final or (await mesh.tasks.get(task_id)).status

    status = _with_mesh(use)
    if status is not TaskStatus.COMPLETED:
        raise typer.Exit(1)


def _event_line(event: TaskEvent) -> str:
    words = [str(event.seq), event.kind.value]
    if event.kind is TaskEventKind.STATUS and event.status is not None:
        words.append(event.status.value)
    if event.attempt is not None:
        words.append(f"attempt {event.attempt}")
    if event.kind is TaskEventKind.CHUNK and event.chunk is not None:
        words.append(json.dumps(_render(event.chunk), ensure_ascii=False))
    if event.note:
        words.append(event.note)
    data = event.data
    if isinstance(data, dict) and event.kind is TaskEventKind.STATUS:
        words += [f"{k}={v}" for k, v in data.items() if v is not None]
    elif data is not None:
        words.append(json.dumps(data, ensure_ascii=False))
    if event.error is not None:
        words.append(_error(event.error))
    return " ".join(words)


@tasks_app.command("wait")
def wait_(
    task_id: str = typer.Argument(..., metavar="TASK_ID", help="The task id (task-...)."),
    timeout: float | None = typer.Option(
        None, help=f"Seconds to wait (default: until it finishes; then exit {EXIT_UNFINISHED})."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Wait until the task finished; print its result.

    Exits 0 if it completed; 1 if it failed, was canceled or rejected; 2 if not at --timeout.
    """
    record = _with_mesh(lambda mesh: mesh.tasks.wait(task_id, timeout=timeout))
    _finish(record, as_json=as_json, timeout=timeout)


def _finish(record: TaskRecord, *, as_json: bool, timeout: float | None) -> None:
    if as_json:
        _echo_json(record.model_dump(mode="json"))
    elif record.status is TaskStatus.COMPLETED:
        typer.echo(_render(record.result) if record.result else "")
    if record.status is TaskStatus.COMPLETED:
        return
    if not record.status.terminal:
        waited = f" after {timeout:g}s" if timeout is not None else ""
        raise cli_support.fail(
            f"task {record.task_id} is still {record.status.value}{waited}", EXIT_UNFINISHED
        )
    why = f": {_error(record.error)}" if record.error else ""
    raise cli_support.fail(f"task {record.task_id} {record.status.value}{why}")


def _render(msg: Message | Any) -> str:
    if msg.text or not msg.content:
        return str(msg.text)
    return json.dumps(msg.model_dump(mode="json")["content"], ensure_ascii=False)


def _error(error: ErrorInfo) -> str:
    return f"{error.code}: {error.message}"


# traces ----------------------------------------------------------------------------------------
@traces_app.command("create")
def create_trace(
    workspace: str = typer.Argument(
        ..., metavar="WORKSPACE", help="The workspace id (a user, a project...)."
    ),
    agent_type: str | None = typer.Option(
        None, "--type", help="The agent type its tasks go to when they name no agent."
    ),
    name: str | None = typer.Option(None, help="A name for people."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create a trace and print its id (submit to it with `tasks submit --trace ID`)."""
    trace = _with_mesh(lambda mesh: mesh.traces.create(workspace, agent_type=agent_type, name=name))
    if as_json:
        _echo_json(trace.model_dump(mode="json"))
    else:
        typer.echo(trace.trace_id)


@traces_app.command("get")
def get_trace(
    trace_id: str = typer.Argument(..., metavar="TRACE_ID", help="The trace id (32 hex digits)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: the trace and its tasks."),
) -> None:
    """A trace and its tasks."""

    async def use(mesh: MeshClient) -> tuple[Trace, list[TaskRecord]]:
        return await mesh.traces.get(trace_id), await mesh.traces.tasks(trace_id)

    trace, records = _with_mesh(use)
    if as_json:
        _echo_json(
            {**trace.model_dump(mode="json"), "tasks": [r.model_dump(mode="json") for r in records]}
        )
        return
    for label, value in [
        ("trace", trace.trace_id),
        ("workspace", trace.workspace_id),
        ("type", trace.agent_type or ""),
        ("name", trace.name or ""),
        ("created", iso_utc(trace.created_at)),
    ]:
        if value:
            typer.echo(f"{label:<10} {value}")
    typer.echo("")
    _task_table(records)


@traces_app.command("list")
def list_traces(
    workspace: str | None = typer.Option(None, help="Only the traces of this workspace."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The traces, newest first."""
    traces = _with_mesh(lambda mesh: mesh.traces.list(workspace))
    if as_json:
        _echo_json([t.model_dump(mode="json") for t in traces])
        return
    if not traces:
        typer.echo("no traces")
        return
    rows = [("TRACE ID", "WORKSPACE", "TYPE", "NAME", "CREATED")]
    rows += [
        (t.trace_id, t.workspace_id, t.agent_type or "-", t.name or "-", iso_utc(t.created_at))
        for t in traces
    ]
    cli_support.table(rows)


@traces_app.command("workspaces")
def workspaces(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The workspaces that have traces, with how many each."""
    counts = _with_mesh(lambda mesh: mesh.traces.workspaces())
    if as_json:
        _echo_json(counts)
        return
    if not counts:
        typer.echo("no workspaces")
        return
    cli_support.table([("WORKSPACE", "TRACES"), *((w, str(n)) for w, n in counts.items())])
