"""The SDK's abstract `RequestHandler`, over the mesh's durable tasks.

The SDK's dispatchers (JSON-RPC, HTTP+JSON, their 0.3 adapters) parse, negotiate the version and
format the answers and errors; this class does the work, on the replica's TaskStore: a message
becomes a durable task for the agent (an executor delivers it as a normal mesh call), and every
read comes from the task's JetStream record and event log, so any replica answers for any task.
Nothing runs in the gateway (unlike the SDK's DefaultRequestHandler, which runs the agent in the
receiving process).

A task is the agent's if it was submitted for its `agent_id`; another agent's task is not found.
The A2A `messageId` is the task's idempotency key (per API key and agent): a client that sends
the same message again, after a lost answer, gets the same task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass

from a2a.server.context import ServerCallContext
from a2a.server.events import Event
from a2a.server.request_handlers.request_handler import RequestHandler, validate_request_params
from a2a.types.a2a_pb2 import (
    AgentCard,
    CancelTaskRequest,
    DeleteTaskPushNotificationConfigRequest,
    GetExtendedAgentCardRequest,
    GetTaskPushNotificationConfigRequest,
    GetTaskRequest,
    ListTaskPushNotificationConfigsRequest,
    ListTaskPushNotificationConfigsResponse,
    ListTasksRequest,
    ListTasksResponse,
    Message,
    SendMessageRequest,
    SubscribeToTaskRequest,
    Task,
    TaskPushNotificationConfig,
    TaskState,
)
from a2a.utils.constants import DEFAULT_LIST_TASKS_PAGE_SIZE
from a2a.utils.errors import (
    ExtendedAgentCardNotConfiguredError,
    InternalError,
    InvalidParamsError,
    TaskNotCancelableError,
    TaskNotFoundError,
    UnsupportedOperationError,
)
from a2a.utils.task import (
    ListTasksCursor,
    apply_history_length,
    decode_list_tasks_cursor,
    encode_list_tasks_cursor,
    validate_history_length,
    validate_page_size,
)

from agentmesh.gateway.a2a import convert, events, push_configs
from agentmesh.gateway.auth import SENDER_KEY, Principal, Scope, stamp_sender
from agentmesh.gateway.state import GatewayState
from agentmesh.schemas.envelope import new_id
from agentmesh.schemas.errors import (
    Conflict,
    InvalidMessage,
    MeshError,
    NotFound,
    PayloadTooLarge,
)
from agentmesh.schemas.task import TASK_ID_RE, TaskRecord, TaskSpec, TaskStatus

MAX_WAIT = 300.0  # seconds a blocking SendMessage waits; then the task as it is (poll GetTask)
CANCEL_WAIT = 10.0  # seconds CancelTask waits for the executor to record `canceled`
MAX_LISTED = 10_000  # task records ListTasks reads, newest first
CALL = "agentmesh.a2a"  # the ServerCallContext state key of the request's `Call`


@dataclass(frozen=True, slots=True)
class Call:
    """What the gateway's routes know of a request: set before the SDK dispatches it."""

    state: GatewayState
    agent_id: str
    principal: Principal
    drain: asyncio.Event  # set when the replica begins to stop


def call_of(context: ServerCallContext) -> Call:
    call = context.state.get(CALL)
    if not isinstance(call, Call):  # the routes always set it
        raise InternalError(message="the request reached the A2A handler without its agent")
    return call


@contextlib.contextmanager
def mesh_errors() -> Iterator[None]:
    """The mesh's errors as A2A errors (the dispatchers format those per binding)."""
    try:
        yield
    except NotFound as exc:
        raise TaskNotFoundError(message=exc.message) from None
    except Conflict as exc:
        raise TaskNotCancelableError(message=exc.message) from None
    except (InvalidMessage, PayloadTooLarge) as exc:
        raise InvalidParamsError(message=exc.message) from None
    except MeshError as exc:  # UNAVAILABLE (JetStream unreachable: retry), ...
        raise InternalError(message=f"{exc.code}: {exc.message}") from None


def _idempotency_key(call: Call, message_id: str) -> str:
    if len(message_id) > 128:
        message_id = "sha256:" + hashlib.sha256(message_id.encode()).hexdigest()
    return f"api:{call.principal.key_id or 'anonymous'}:a2a:{call.agent_id}:{message_id}"


def sees(principal: Principal, record: TaskRecord) -> bool:
    """Whether the caller's A2A requests see the task. As the SDK's task stores scope tasks by
    user, a key sees the tasks submitted with it (over A2A or any other route that stamps the
    key); an admin key, and everyone when auth is off, sees every task of the agent."""
    if principal.key_id is None or Scope.ADMIN in principal.scopes:
        return True
    return record.spec.metadata.get(SENDER_KEY) == principal.key_id


class MeshRequestHandler(RequestHandler):
    """A2A requests for mesh agents, answered from the mesh's durable tasks."""

    # Reads ---------------------------------------------------------------------------------
    async def _record(self, call: Call, task_id: str) -> TaskRecord:
        """The agent's task `task_id`, if the caller sees it.

        Raises:
            TaskNotFoundError: no such task, another agent's, or another key's.
        """
        if not TASK_ID_RE.fullmatch(task_id):
            raise TaskNotFoundError(message=f"no task {task_id[:80]!r}")
        with mesh_errors():
            record = await call.state.tasks.get(task_id)
        if (
            record is None
            or record.spec.agent_id != call.agent_id
            or not sees(call.principal, record)
        ):
            raise TaskNotFoundError(message=f"no task {task_id!r} of agent {call.agent_id!r}")
        return record

    @validate_request_params
    async def on_get_task(self, params: GetTaskRequest, context: ServerCallContext) -> Task | None:
        validate_history_length(params)
        record = await self._record(call_of(context), params.id)
        return apply_history_length(convert.task_out(record), params)

    @validate_request_params
    async def on_list_tasks(
        self, params: ListTasksRequest, context: ServerCallContext
    ) -> ListTasksResponse:
        """The agent's tasks the caller sees, newest created first, `pageSize` at a time
        (default 50)."""
        validate_history_length(params)
        size = DEFAULT_LIST_TASKS_PAGE_SIZE
        if params.HasField("page_size"):
            validate_page_size(params.page_size)
            size = params.page_size
        call = call_of(context)
        records: list[TaskRecord] = []
        wanted = convert.status_of(params.status)
        if params.status == TaskState.TASK_STATE_UNSPECIFIED or wanted is not None:
            with mesh_errors():
                records = await call.state.tasks.list(
                    agent_id=call.agent_id, status=wanted, limit=MAX_LISTED
                )
        records = [r for r in records if sees(call.principal, r)]
        if params.context_id:
            records = [r for r in records if convert.context_of(r) == params.context_id]
        if params.HasField("status_timestamp_after"):
            after = params.status_timestamp_after.ToNanoseconds()
            records = [r for r in records if int(r.updated_at * 1e9) >= after]
        records.sort(key=lambda r: _cursor(r).sort_key(), reverse=True)
        total = len(records)
        if params.page_token:
            cursor = decode_list_tasks_cursor(params.page_token)
            if cursor is None:
                raise InvalidParamsError(message="pageToken is not a token ListTasks gave")
            records = [r for r in records if _cursor(r).sort_key() < cursor.sort_key()]
        page, more = records[:size], len(records) > size
        return ListTasksResponse(
            tasks=[apply_history_length(convert.task_out(r), params) for r in page],
            next_page_token=encode_list_tasks_cursor(_cursor(page[-1])) if more else "",
            page_size=size,
            total_size=total,
        )

    @validate_request_params
    async def on_subscribe_to_task(
        self, params: SubscribeToTaskRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        call = call_of(context)
        record = await self._record(call, params.id)
        if record.status.terminal:  # as the SDK's own handler: nothing more will come
            raise UnsupportedOperationError(
                message=f"task {record.task_id} is in a terminal state: {record.status.value}"
            )
        with mesh_errors():
            async for event in events.follow(call.state.tasks, record, call.drain):
                yield event

    # Writes --------------------------------------------------------------------------------
    @push_configs.registers_given  # a push notification config given with the message
    async def _submit(self, call: Call, params: SendMessageRequest) -> TaskRecord:
        """The message as a durable task for the agent (or the earlier task of its id); with a
        `taskId`, the next turn of that task."""
        message = params.message
        if message.task_id:
            return await self._continue(call, message)
        sender = call.principal
        given = stamp_sender(convert.metadata_in(message.metadata), sender)
        spec_input = convert.message_in(
            message, conversation_id=message.context_id or new_id("ctx"), metadata=given
        )
        spec_input.to_agent_id = call.agent_id
        spec = TaskSpec(
            agent_id=call.agent_id,
            input=spec_input,
            idempotency_key=_idempotency_key(call, message.message_id),
            metadata=stamp_sender(convert.metadata_in(params.metadata), sender),
        )
        with mesh_errors():
            ref = await call.state.tasks.submit(spec)
            record = await call.state.tasks.get(ref.task_id)
        return record or TaskRecord(task_id=ref.task_id, status=ref.status, spec=spec)

    async def _continue(self, call: Call, message: Message) -> TaskRecord:
        """The caller's answer to a task that asked for input (`input-required`): the task's
        next turn, in its context. Any other state: UnsupportedOperation, as the SDK's own."""
        record = await self._record(call, message.task_id)
        context_id = convert.context_of(record)
        if message.context_id and message.context_id != context_id:
            raise InvalidParamsError(
                message=f"task {record.task_id} is in context {context_id!r}, "
                f"not {message.context_id!r}"
            )
        if record.status is not TaskStatus.INPUT_REQUIRED and (
            record.turn_of(message.message_id) is None  # not a retried answer
        ):
            state = record.status.value
            taking = "is in a terminal state" if record.status.terminal else "takes no input"
            raise UnsupportedOperationError(message=f"task {record.task_id} {taking}: {state}")
        given = stamp_sender(convert.metadata_in(message.metadata), call.principal)
        answer = convert.message_in(message, conversation_id=context_id, metadata=given)
        answer.to_agent_id = call.agent_id
        try:
            with mesh_errors():
                return await call.state.tasks.resume(record.task_id, answer)
        except TaskNotCancelableError as exc:  # a Conflict: it changed meanwhile
            raise UnsupportedOperationError(message=exc.message) from None

    async def _settled(self, call: Call, task_id: str, timeout: float) -> TaskRecord:
        """The record once the task has finished, at `timeout`, or when the replica drains."""
        waiting = asyncio.ensure_future(call.state.tasks.wait(task_id, timeout=timeout))
        drain = asyncio.ensure_future(call.drain.wait())
        try:
            await asyncio.wait({waiting, drain}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drain.cancel()
            if not waiting.done():
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
        if waiting.done() and not waiting.cancelled() and waiting.exception() is None:
            return waiting.result()
        return await self._record(call, task_id)  # unreachable meanwhile: as it is now

    @validate_request_params
    async def on_message_send(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> Task | Message:
        """Blocking by default: the task once it has finished or asks for input (waiting at
        most `MAX_WAIT`); `returnImmediately`: the task as submitted."""
        validate_history_length(params.configuration)
        call = call_of(context)
        record = await self._submit(call, params)
        if not params.configuration.return_immediately and not record.status.settled:
            record = await self._settled(call, record.task_id, MAX_WAIT)
        return apply_history_length(convert.task_out(record), params.configuration)

    @validate_request_params
    async def on_message_send_stream(
        self, params: SendMessageRequest, context: ServerCallContext
    ) -> AsyncGenerator[Event]:
        call = call_of(context)
        record = await self._submit(call, params)
        with mesh_errors():
            async for event in events.follow(call.state.tasks, record, call.drain):
                yield event

    @validate_request_params
    async def on_cancel_task(
        self, params: CancelTaskRequest, context: ServerCallContext
    ) -> Task | None:
        """A submitted task is canceled at once; a working one at its instance, by the executor
        running it (awaited up to `CANCEL_WAIT`). A finished task: TaskNotCancelable."""
        call = call_of(context)
        record = await self._record(call, params.id)
        if record.status.terminal:
            raise TaskNotCancelableError(
                message=f"task {record.task_id} is {record.status.value} already"
            )
        with mesh_errors():
            record = await call.state.tasks.cancel(record.task_id)
        if not record.status.terminal:
            record = await self._settled(call, record.task_id, CANCEL_WAIT)
        return convert.task_out(record)

    # Push notification configs (push_configs.py; push.py delivers) ------------------------
    @validate_request_params
    async def on_create_task_push_notification_config(
        self, params: TaskPushNotificationConfig, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        """A webhook for one of the agent's tasks (replacing the caller's config of that id): it
        gets the task's updates from now on, from any replica."""
        call = call_of(context)
        record = await self._record(call, params.task_id)
        with mesh_errors():
            return await push_configs.create(call.state, call.principal, record, params)

    @validate_request_params
    async def on_get_task_push_notification_config(
        self, params: GetTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> TaskPushNotificationConfig:
        """The caller's config of that id (as the SDK: an unknown one is TaskNotFound)."""
        call = call_of(context)
        await self._record(call, params.task_id)
        with mesh_errors():
            owned = await push_configs.configs_of(call.state).owned(
                params.task_id, push_configs.owner_of(call.principal)
            )
        for config in owned:
            if config.id == (params.id or params.task_id):
                return config
        raise TaskNotFoundError(
            message=f"no push notification config {params.id[:80]!r} for task {params.task_id}"
        )

    @validate_request_params
    async def on_list_task_push_notification_configs(
        self, params: ListTaskPushNotificationConfigsRequest, context: ServerCallContext
    ) -> ListTaskPushNotificationConfigsResponse:
        """The caller's configs of the task, oldest first, in one page."""
        call = call_of(context)
        await self._record(call, params.task_id)
        with mesh_errors():
            owned = await push_configs.configs_of(call.state).owned(
                params.task_id, push_configs.owner_of(call.principal)
            )
        return ListTaskPushNotificationConfigsResponse(configs=owned)

    @validate_request_params
    async def on_delete_task_push_notification_config(
        self, params: DeleteTaskPushNotificationConfigRequest, context: ServerCallContext
    ) -> None:
        """Remove the caller's config of that id (none there: nothing to do, as the SDK)."""
        call = call_of(context)
        await self._record(call, params.task_id)
        with mesh_errors():
            await push_configs.configs_of(call.state).remove(
                params.task_id, push_configs.owner_of(call.principal), params.id or params.task_id
            )

    async def on_get_extended_agent_card(
        self, params: GetExtendedAgentCardRequest, context: ServerCallContext
    ) -> AgentCard:
        raise ExtendedAgentCardNotConfiguredError


def _cursor(record: TaskRecord) -> ListTasksCursor:
    return ListTasksCursor(timestamp_ns=int(record.created_at * 1e9), task_id=record.task_id)
