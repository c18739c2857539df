"""`Remote`: one outside A2A agent, through the official `a2a-sdk` client.

Its card is read with the SDK's `A2ACardResolver`; `ClientFactory` makes two clients on one
HTTP connection pool, JSON-RPC or HTTP+JSON as the card offers (1.0, or 0.3): one that sends
`SendMessage`, one `SendStreamingMessage`. A call that is cancelled (the mesh caller cancelled, or
gave up) sends `CancelTask` for the remote task, found by its id or, when a blocking SendMessage
had not told it yet, by `ListTasks` in the call's context (the task whose history holds the
call's message id).

The SDK's errors become mesh errors: the agent unreachable, 5xx → UNAVAILABLE; 401/403 →
UNAUTHORIZED; 429 → RATE_LIMIT; its timeout → TIMEOUT; invalid params → INVALID_MESSAGE; task not
found → NOT_FOUND; not cancelable → CONFLICT; anything else → INTERNAL (`details.a2a_error`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.client.errors import A2AClientError, A2AClientTimeoutError
from a2a.types.a2a_pb2 import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Role,
    SendMessageRequest,
    Task,
    TaskStatus,
)
from a2a.utils.constants import TransportProtocol
from a2a.utils.errors import (
    A2AError,
    ContentTypeNotSupportedError,
    InvalidParamsError,
    InvalidRequestError,
    TaskNotCancelableError,
    TaskNotFoundError,
)

from agentmesh.schemas.a2a import message_out
from agentmesh.schemas.envelope import Chunk, Message
from agentmesh.schemas.errors import (
    Conflict,
    InvalidMessage,
    MeshError,
    MeshTimeout,
    NotFound,
    RateLimited,
    RemoteError,
    Unauthorized,
    Unavailable,
)
from agentmesh.workers.a2a.config import CONNECT_TIMEOUT, OutsideAgent
from agentmesh.workers.a2a.replies import (
    SETTLED,
    Answer,
    closing_chunk,
    message_answer,
    parts_in,
    task_answer,
)

logger = logging.getLogger(__name__)

BINDINGS = [TransportProtocol.JSONRPC.value, TransportProtocol.HTTP_JSON.value]
CANCEL_TIMEOUT = 10.0  # seconds a CancelTask (and finding its task) may take
_FIND_TRIES = (0.05, 0.1, 0.2, 0.4, 0.8)  # waits between looks for a task not listed yet
_POLL_FIRST, _POLL_MAX = 0.2, 2.0  # seconds between GetTask of a task still working


class Remote:
    """One outside agent: `await open()` reads its card; then `send`, `stream`, `cancel`."""

    def __init__(self, config: OutsideAgent) -> None:
        self.config = config
        self.url = config.url
        self.card: AgentCard | None = None
        self._http = httpx.AsyncClient(
            headers=config.headers,
            timeout=httpx.Timeout(config.timeout, connect=CONNECT_TIMEOUT),
        )
        self._send: Client | None = None
        self._stream: Client | None = None
        self.pending_cancels: set[asyncio.Task[None]] = set()  # see cancel_soon

    async def open(self) -> AgentCard:
        """Read the card and make the clients.

        Raises:
            Unavailable: the card cannot be read (unreachable, an HTTP error, not a card).
            InvalidMessage: the card offers no binding the SDK's client speaks here.
        """
        resolver = A2ACardResolver(self._http, self.url, self.config.card_path)
        try:
            card = await resolver.get_agent_card()
        except A2AError as exc:  # AgentCardResolutionError, with the URL and the reason
            raise Unavailable(
                f"cannot read the card of the outside agent: {exc.message}",
                details={"url": self.url},
            ) from None
        try:
            self._send = self._client(card, streaming=False)
            self._stream = self._client(card, streaming=True)
        except ValueError as exc:
            raise InvalidMessage(
                f"the card at {self.url} offers no JSON-RPC or HTTP+JSON interface ({exc})",
                details={"url": self.url},
            ) from None
        self.card = card
        return card

    def _client(self, card: AgentCard, *, streaming: bool) -> Client:
        config = ClientConfig(
            httpx_client=self._http, streaming=streaming, supported_protocol_bindings=BINDINGS
        )
        return ClientFactory(config).create(card)

    async def close(self) -> None:
        for client in (self._send, self._stream):
            if client is not None:
                with contextlib.suppress(A2AError, httpx.HTTPError):
                    await client.close()  # the shared pool stays open until aclose below
        await self._http.aclose()

    # Calls -----------------------------------------------------------------------------------
    def request(self, message: Message, *, context_id: str, task_id: str | None) -> Any:
        """The mesh message as a SendMessageRequest (its parts; mesh metadata stays home)."""
        out = message_out(
            message,
            role=Role.ROLE_USER,
            task_id=task_id or "",
            context_id=context_id,
            message_id=message.message_id,
        )
        out.ClearField("metadata")
        return SendMessageRequest(message=out)

    async def send(self, message: Message, *, context_id: str, task_id: str | None) -> Answer:
        """`SendMessage` (blocking), and `GetTask` until the task settles if it came back early.

        Raises:
            MeshError: the agent failed or refused the task, or could not be reached.
        """
        assert self._send is not None
        known = task_id
        try:
            with self.errors():
                async with aclosing(
                    self._send.send_message(
                        self.request(message, context_id=context_id, task_id=task_id)
                    )
                ) as responses:
                    async for response in responses:
                        if response.HasField("message"):
                            return message_answer(response.message)
                        task = response.task
                        known = task.id
                        return task_answer(await self._settle(task), url=self.url)
            raise RemoteError(f"the outside agent at {self.url} sent no answer")
        except asyncio.CancelledError:
            self.cancel_soon(context_id, message.message_id, known)
            raise

    async def _settle(self, task: Task) -> Task:
        """The task once settled (a server may answer a blocking SendMessage before)."""
        assert self._send is not None
        wait = _POLL_FIRST
        while task.status.state not in SETTLED:
            await asyncio.sleep(wait)  # the SDK client has no wait; SubscribeToTask may be off
            wait = min(wait * 2, _POLL_MAX)
            task = await self._send.get_task(GetTaskRequest(id=task.id))
        return task

    async def stream(
        self, message: Message, *, context_id: str, task_id: str | None
    ) -> AsyncIterator[Chunk]:
        """`SendStreamingMessage`: artifact updates as chunks, then a closing chunk with the
        reply's metadata (`a2a_task_id`; an input-required question and `task_state`). A stream
        that ends before its task settles (or an agent that does not stream) is followed with
        `GetTask`.

        Raises:
            MeshError: the agent failed or refused the task, or could not be reached.
        """
        assert self._stream is not None
        known, context, status = task_id, context_id, TaskStatus()
        streamed = done = False
        try:
            with self.errors():
                async with aclosing(
                    self._stream.send_message(
                        self.request(message, context_id=context_id, task_id=task_id)
                    )
                ) as events:
                    async for event in events:
                        kind = event.WhichOneof("payload")
                        if kind == "message":
                            answer = message_answer(event.message)
                            done = True
                            yield Chunk(content=answer.content, metadata=answer.metadata)
                            return
                        if kind == "task":
                            known, context = event.task.id, event.task.context_id or context
                            status = event.task.status
                            for artifact in event.task.artifacts:
                                streamed = True
                                yield Chunk(content=parts_in(artifact.parts))
                        elif kind == "artifact_update":
                            known = event.artifact_update.task_id or known
                            streamed = True
                            yield Chunk(content=parts_in(event.artifact_update.artifact.parts))
                        elif kind == "status_update":
                            known = event.status_update.task_id or known
                            status = event.status_update.status
                        if status.state in SETTLED and known:
                            break
                if known is None:
                    raise RemoteError(
                        f"the outside agent at {self.url} ended its stream without a task",
                        details={"url": self.url},
                    )
                if status.state not in SETTLED:
                    task = await self._settle(await self._send_get(known))
                    status = task.status
                    if not streamed:
                        for artifact in task.artifacts:
                            streamed = True
                            yield Chunk(content=parts_in(artifact.parts))
            chunk = closing_chunk(known, context, status, streamed=streamed, url=self.url)
            done = True
            yield chunk
        except (asyncio.CancelledError, GeneratorExit):
            if not done:
                self.cancel_soon(context_id, message.message_id, known)
            raise

    async def _send_get(self, task_id: str) -> Task:
        assert self._send is not None
        return await self._send.get_task(GetTaskRequest(id=task_id))

    # Cancelling ------------------------------------------------------------------------------
    def cancel_soon(self, context_id: str, message_id: str, task_id: str | None) -> None:
        """Cancel the remote task of a call the mesh cancelled, in the background (the caller
        hears CANCELLED at once; the bridge waits for these when it stops)."""
        task = asyncio.get_running_loop().create_task(self.cancel(context_id, message_id, task_id))
        self.pending_cancels.add(task)
        task.add_done_callback(self.pending_cancels.discard)

    async def cancel(self, context_id: str, message_id: str, task_id: str | None) -> None:
        """`CancelTask` for the call's remote task (errors are logged: the call is over)."""
        assert self._send is not None
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT):
                task_id = task_id or await self._find(context_id, message_id)
                if task_id is None:
                    logger.warning(
                        "a cancelled call to %s: its task was not found to cancel", self.url
                    )
                    return
                with self.errors():
                    await self._send.cancel_task(CancelTaskRequest(id=task_id))
                logger.info("cancelled task %s at %s", task_id, self.url)
        except (Conflict, NotFound):
            logger.debug("task %s at %s had finished already", task_id, self.url)
        except (MeshError, TimeoutError) as exc:
            logger.warning("could not cancel task %s at %s: %s", task_id, self.url, exc)

    async def _find(self, context_id: str, message_id: str) -> str | None:
        """The unsettled task in `context_id` started by `message_id` (the only one, if the
        server keeps no history)."""
        assert self._send is not None
        for wait in (0.0, *_FIND_TRIES):
            await asyncio.sleep(wait)  # a task the agent has not created yet: look again
            with self.errors():
                page = await self._send.list_tasks(
                    ListTasksRequest(context_id=context_id, history_length=100)
                )
            open_tasks = [t for t in page.tasks if t.status.state not in SETTLED]
            for task in open_tasks:
                if any(m.message_id == message_id for m in task.history):
                    return task.id
            if len(open_tasks) == 1 and not open_tasks[0].history:
                return open_tasks[0].id
        return None

    # Errors ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def errors(self) -> Any:
        """The SDK's errors as mesh errors naming the agent."""
        try:
            yield
        except A2AError as exc:
            raise mesh_error(exc, self.url) from None


def mesh_error(exc: A2AError, url: str) -> MeshError:
    details: dict[str, Any] = {"url": url, "a2a_error": type(exc).__name__}
    said = exc.message
    cause = exc.__cause__
    if isinstance(exc, A2AClientTimeoutError):
        return MeshTimeout(f"the outside agent at {url} did not answer in time", details=details)
    if isinstance(exc, A2AClientError) and isinstance(cause, httpx.HTTPStatusError):
        status = cause.response.status_code
        details["http_status"] = status
        text = f"the outside agent at {url} answered HTTP {status}"
        if status in (401, 403):
            return Unauthorized(f"{text}: it refused the bridge's credentials", details=details)
        if status == 429:
            return RateLimited(f"{text}: too many requests", details=details)
        if status >= 500:
            return Unavailable(text, details=details)
        return RemoteError(text, details=details)
    if isinstance(exc, A2AClientError) and isinstance(cause, httpx.RequestError):
        return Unavailable(f"cannot reach the outside agent at {url}: {cause}", details=details)
    if isinstance(exc, InvalidParamsError | InvalidRequestError | ContentTypeNotSupportedError):
        return InvalidMessage(
            f"the outside agent at {url} refused the message: {said}", details=details
        )
    if isinstance(exc, TaskNotFoundError):
        return NotFound(f"the outside agent at {url}: {said}", details=details)
    if isinstance(exc, TaskNotCancelableError):
        return Conflict(f"the outside agent at {url}: {said}", details=details)
    return RemoteError(f"the outside agent at {url}: {said}", details=details)
