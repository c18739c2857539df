"""`ManagementClient`: the agent management seed's synchronous HTTP client, for traces and
durable tasks on any gateway replica (`/v1/traces`, `/v1/tasks`; PROTOCOL §12).

    client = ManagementClient("http://gateway-host:8001")
    trace_id = client.create_trace(workspace_id="user_001", agent_type="personal_assistant")
    task_id = client.submit_task(trace_id=trace_id, task_description="Analyse the sales data")
    client.get_task(task_id)["status"]          # pending / running / completed / failed / ...

Answers are the gateway's JSON as dicts; errors are raised as the mesh's `MeshError` classes
(`NotFound`, `Conflict`, `InvalidId`, ...). The WebSocket client for agents is `GatewayClient`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx

from agentmesh.schemas.errors import (
    ConnectionFailed,
    ErrorCode,
    ErrorInfo,
    Forbidden,
    MeshError,
    MeshTimeout,
    RemoteError,
    Unavailable,
    error_from_info,
)
from agentmesh.schemas.task import TaskStatus

DEFAULT_URL = "http://localhost:8001"
MAX_WAIT = 300.0  # what one `/wait` request may hold (the gateway's bound); longer waits loop
_MARGIN = 10.0  # seconds of read timeout beyond a server-side wait
_RESUMES = 5  # consecutive broken event streams before `events` gives up
_RESUME_DELAY = 0.2  # seconds, times the number of breaks in a row
_STREAM_SILENCE = 60.0  # seconds without a byte (the gateway pings every 15) before a resume
_FINAL = frozenset(s.value for s in TaskStatus if s.terminal)


class ManagementClient:
    """Traces and tasks over HTTP, synchronously (httpx). Use as a context manager or `close()`.

    Args:
        base_url: `http(s)://host:port` of any gateway replica.
        api_key: sent as `Authorization: Bearer <key>` when the gateway has auth on.
        timeout: seconds for each ordinary request.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def __enter__(self) -> ManagementClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Traces and workspaces ---------------------------------------------------------------------
    def create_trace(
        self,
        workspace_id: str,
        agent_type: str | None = None,
        *,
        name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """A new trace in `workspace_id`; its id. Its tasks that name no agent go to an agent of
        `agent_type`."""
        body = _without_none(
            workspace_id=workspace_id, agent_type=agent_type, name=name, metadata=metadata
        )
        return self._call("POST", "/v1/traces", json=body)["trace_id"]

    def get_trace(self, trace_id: str) -> dict[str, Any]:
        """The trace with its `tasks` (id, status, timings)."""
        return self._call("GET", f"/v1/traces/{trace_id}")

    def list_traces(self, workspace_id: str | None = None) -> list[dict[str, Any]]:
        params = _without_none(workspace_id=workspace_id)
        return self._call("GET", "/v1/traces", params=params)["traces"]

    def list_workspaces(self) -> list[dict[str, Any]]:
        """Each workspace with its `trace_count`."""
        return self._call("GET", "/v1/workspaces")["workspaces"]

    def get_workspace(self, workspace_id: str) -> dict[str, Any]:
        """The workspace with its `trace_count` and `traces`. Raises NotFound if it has none."""
        return self._call("GET", f"/v1/workspaces/{workspace_id}")

    # Tasks ---------------------------------------------------------------------------------------
    def submit_task(
        self,
        trace_id: str | None = None,
        task_description: str | None = None,
        *,
        agent_id: str | None = None,
        agent_type: str | None = None,
        input: dict[str, Any] | None = None,  # noqa: A002 - the HTTP body's name
        priority: str | None = None,
        deadline: float | None = None,
        not_before: float | None = None,
        max_attempts: int | None = None,
        retry_on_error: bool | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Store a task and return its id once the mesh has it durably. The target is
        `agent_id`, `agent_type` or the trace's agent type; the input is `task_description`
        (text) or `input` (a Message as JSON: `{"content": [parts], ...}`).

        Raises:
            NotFound: an unknown trace.
            InvalidId, InvalidMessage: a bad target, no target, a deadline in the past.
            PayloadTooLarge: the input does not fit.
        """
        body = _without_none(
            trace_id=trace_id,
            task_description=task_description,
            agent_id=agent_id,
            agent_type=agent_type,
            input=input,
            priority=priority,
            deadline=deadline,
            not_before=not_before,
            max_attempts=max_attempts,
            retry_on_error=retry_on_error,
            idempotency_key=idempotency_key,
            metadata=metadata,
        )
        return self._call("POST", "/v1/tasks", json=body)["task_id"]

    def get_task(self, task_id: str) -> dict[str, Any]:
        """The task: `status`, `result`, `result_text`, `error`, `attempts`, times, ..."""
        return self._call("GET", f"/v1/tasks/{task_id}")

    def list_tasks(
        self,
        *,
        trace_id: str | None = None,
        agent_id: str | None = None,
        agent_type: str | None = None,
        status: str | None = None,
        workspace_id: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Tasks, newest first, filtered."""
        params = _without_none(
            trace_id=trace_id,
            agent_id=agent_id,
            agent_type=agent_type,
            status=status,
            workspace_id=workspace_id,
            limit=limit,
        )
        return self._call("GET", "/v1/tasks", params=params)["tasks"]

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        """Cancel a task. Raises Conflict if it has finished, NotFound if there is none."""
        return self._call("POST", f"/v1/tasks/{task_id}/cancel")

    def wait_task(self, task_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The task once it has finished, or as it is after `timeout` seconds (None: until it
        finishes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = MAX_WAIT if deadline is None else max(0.0, deadline - time.monotonic())
            wait = min(MAX_WAIT, left)
            task = self._call(
                "GET",
                f"/v1/tasks/{task_id}/wait",
                params={"timeout": wait},
                timeout=wait + _MARGIN,
            )
            if task["status"] in _FINAL or (deadline is not None and time.monotonic() >= deadline):
                return task

    def events(
        self, task_id: str, *, after: int = 0, follow: bool = True
    ) -> Iterator[dict[str, Any]]:
        """The task's events after sequence `after` (each a dict with `seq`, `kind`, `status`,
        ...); with `follow`, until the final status event, resuming with `Last-Event-ID` when
        the stream breaks (a replica stopping, a network error)."""
        broken = 0  # streams in a row that broke or ended early without an event
        while True:
            ended = False
            broken += 1
            try:
                for event in self._stream(task_id, after, follow):
                    broken = 0
                    after = event.get("seq") or after
                    yield event
                    ended = event.get("kind") == "status" and event.get("status") in _FINAL
            except (ConnectionFailed, Unavailable):
                if broken >= _RESUMES:
                    raise
                time.sleep(_RESUME_DELAY * broken)  # a replica stopping, a load balancer's turn
            else:
                if broken and self.get_task(task_id)["status"] in _FINAL:
                    return  # nothing came: the final event is behind `after` already
                if broken >= _RESUMES:
                    raise Unavailable(f"the event stream of {task_id} keeps ending; retry later")
            if ended or not follow:
                return

    def _stream(self, task_id: str, after: int, follow: bool) -> Iterator[dict[str, Any]]:
        headers = {"last-event-id": str(after)} if after else {}
        params = {"follow": "true" if follow else "false"}
        # A quiet stream gets a ping every 15 s: four missed, the connection is dead.
        timeout = httpx.Timeout(self.timeout, read=_STREAM_SILENCE)
        try:
            with self._http.stream(
                "GET",
                f"/v1/tasks/{task_id}/events",
                params=params,
                headers=headers,
                timeout=timeout,
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                for kind, data in _sse(response.iter_lines()):
                    if kind == "error":
                        raise _error_of(json.loads(data), response.status_code)
                    event = json.loads(data)
                    if isinstance(event, dict):
                        yield event
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"the event stream of {task_id} broke: {exc}") from None

    # Plumbing ------------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,  # noqa: A002 - httpx's name
        params: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        try:
            response = self._http.request(
                method,
                path,
                json=json,
                params=params,
                timeout=self.timeout if timeout is None else timeout,
            )
        except httpx.TimeoutException as exc:
            raise MeshTimeout(f"{method} {path}: no answer from {self.base_url} ({exc})") from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"cannot reach the gateway at {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json()


def _without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) of each server-sent event; comments (pings) and ids are passed over (the
    data carries `seq`)."""
    kind, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield kind, "\n".join(data)
            kind, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)


def _error(response: httpx.Response) -> MeshError:
    try:
        body = response.json()
    except ValueError:
        body = None
    return _error_of(body, response.status_code, response.text)


def _error_of(body: Any, status: int, text: str = "") -> MeshError:
    """The mesh's exception for an error body `{"error": {"code", "message", "details"}}`."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        try:
            info = ErrorInfo.model_validate(error)
        except ValueError:
            info = None
        if info is not None:
            if status == 403 and info.code is ErrorCode.UNAUTHORIZED:
                return Forbidden(info.message, details=info.details)
            return error_from_info(info)
    message = f"the gateway answered HTTP {status}: {text[:200]}"
    if status >= 500:
        return Unavailable(message) if status == 503 else RemoteError(message)
    return RemoteError(message, code=ErrorCode.INVALID_MESSAGE)
