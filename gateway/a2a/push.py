"""A2A push notifications: a task's updates POSTed to every webhook configured for it
(push_configs.py), from whichever gateway replica sees them, each once and in order.

Two durable JetStream consumers, shared by every replica, say when to look:

    a2a-push          the task event stream (`<p>.tasks.events.*`): a task's status changed
    a2a-push-configs  the configs' bucket (`cfg.>`): a config was made (or replaced)

For each config of the task, the replica that got the message takes the config's delivery lease
(compare-and-set on its `run.` record), reads the task's events after the cursor, POSTs one
notification per change of A2A state (the SDK's payload: a `StreamResponse` as JSON, with the
header `X-A2A-Notification-Token`; a `statusUpdate`, or at a final state the whole `task` with
its artifact), records the cursor after each, and releases the lease. A message whose config is
leased to another delivery is looked at again later (it is not acked until the cursor passed
it), so a replica that dies mid-delivery costs a lease, not an update.

A failed POST (no answer, 408, 429, 5xx) is tried `ATTEMPTS` times, `BACKOFF` doubling between,
then given up and logged; other 4xx are given up at once. None of this is in the task's path: a
webhook that is down delays only its own notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import nats.errors
import nats.js.errors
from a2a.types.a2a_pb2 import Task, TaskPushNotificationConfig, TaskState, TaskStatusUpdateEvent
from a2a.utils.proto_utils import to_stream_response
from google.protobuf.json_format import MessageToDict
from nats.aio.msg import Msg
from nats.js import api

from agentmesh.agents.runtime.builtins import check_public
from agentmesh.broker.consumer import Handle, bind, consume
from agentmesh.gateway.a2a import convert
from agentmesh.gateway.a2a.push_configs import LEASE, Held, LeaseLost, PushConfigs, Run, last_seq
from agentmesh.gateway.state import GatewayState
from agentmesh.schemas.codec import decode
from agentmesh.schemas.errors import Forbidden, InvalidMessage, MeshError, NotFound
from agentmesh.schemas.task import TaskEvent, TaskEventKind, TaskStatus
from agentmesh.schemas.version import __version__

logger = logging.getLogger(__name__)

CONSUMER = "a2a-push"
CONFIG_CONSUMER = "a2a-push-configs"
ATTEMPTS = 5  # POSTs of one notification before it is given up
BACKOFF = 0.5  # seconds before the second attempt, doubling: 0.5, 1, 2, 4
POST_TIMEOUT = 10.0
CONCURRENCY = 32  # messages a replica works on at once, per consumer
MAX_DELIVER = 50  # looks at one message (a held one waits up to LEASE) before it is dropped
RECHECK = 0.5  # seconds before a message whose config is held is looked at again, doubling
RETRY = 1.0  # seconds before the consumers are bound again after JetStream went away
RETRIED = frozenset({408, 425, 429})

Notice = Task | TaskStatusUpdateEvent  # what a webhook is sent (the SDK sends artifact updates too)


@asynccontextmanager
async def delivering(state: GatewayState) -> AsyncIterator[PushDelivery]:
    """The replica's deliveries, for the app's lifespan (stopped, handed over, at its end)."""
    delivery = PushDelivery(state)
    await delivery.prepare()
    task = asyncio.create_task(delivery.run(), name="a2a-push")
    try:
        yield delivery
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await delivery.http.aclose()


class PushDelivery:
    """One replica's share of the mesh's push notifications."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.configs = PushConfigs(state.durable, state.settings)
        self.replica = uuid.uuid4().hex[:12]
        self.http = httpx.AsyncClient(
            timeout=POST_TIMEOUT,
            follow_redirects=False,  # a redirect could lead anywhere, past the URL check
            headers={"User-Agent": f"agentmesh-gateway/{__version__}"},
        )
        # This replica's deliveries, by config: the lock, and how many hold or wait for it.
        self._runs: dict[str, tuple[asyncio.Lock, int]] = {}

    # Consumers ---------------------------------------------------------------------------------
    async def prepare(self) -> bool:
        """Create the bucket and both consumers (before the replica serves: a config made at
        once is seen); False if JetStream could not be reached (`run` tries again)."""
        try:
            await self._consumers()
        except MeshError as exc:
            logger.warning("A2A push notifications wait for JetStream: %s", exc.message)
            return False
        return True

    async def _consumers(self) -> list[tuple[str, str, Handle]]:
        tasks, durable = self.state.tasks, self.state.durable
        await tasks.ensure()
        await self.configs.open()
        events = tasks.names["task_events"]
        bucket = f"KV_{self.configs.name}"
        wanted = [
            (events, CONSUMER, tasks.subjects.task_events(), api.DeliverPolicy.NEW, self._event),
            # Every config there is, the first time: a pass over one with nothing new is cheap.
            (
                bucket,
                CONFIG_CONSUMER,
                f"$KV.{self.configs.name}.cfg.>",
                api.DeliverPolicy.ALL,
                self._config,
            ),
        ]
        out = []
        for stream, name, subject, policy, handle in wanted:
            config = api.ConsumerConfig(
                durable_name=name,
                filter_subject=subject,
                deliver_policy=policy,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=LEASE,
                max_deliver=MAX_DELIVER,
                max_ack_pending=1024,
            )
            await bind(durable, stream, config)
            out.append((stream, name, handle))
        return out

    async def run(self) -> None:
        """Work on both consumers' messages until cancelled; rebind when JetStream comes back."""
        while True:
            try:
                bound = await self._consumers()
                async with asyncio.TaskGroup() as group:
                    for stream, name, handle in bound:
                        group.create_task(
                            consume(
                                self.state.durable,
                                stream,
                                name,
                                handle,
                                concurrency=CONCURRENCY,
                                what="A2A push",
                                retry=RETRY,
                                after_error=LEASE,
                            )
                        )
            except* (MeshError, nats.errors.Error, OSError) as caught:
                logger.warning("A2A push notifications paused: %r", caught.exceptions[0])
            except* Exception:  # a top-level loop: log, and start again
                logger.exception("A2A push notifications stopped; starting again")
            await asyncio.sleep(RETRY)

    # One message ----------------------------------------------------------------------------
    async def _event(self, msg: Msg) -> None:
        try:
            event = decode(msg.data, TaskEvent)
        except InvalidMessage as exc:
            logger.warning("A2A push: a task event that is not one, skipped: %s", exc.message)
            await msg.ack()
            return
        if event.kind is not TaskEventKind.STATUS:  # chunks and notes: no state changes
            await msg.ack()
            return
        await self._look(msg, event.task_id, upto=msg.metadata.sequence.stream)

    async def _config(self, msg: Msg) -> None:
        operation = msg.headers.get("KV-Operation") if msg.headers else None
        task_id, _, ref = msg.subject.rpartition(".cfg.")[2].partition(".")
        if operation in ("DEL", "PURGE") or not ref:
            await msg.ack()
            return
        await self._look(msg, task_id, upto=None, only=ref)

    async def _look(self, msg: Msg, task_id: str, *, upto: int | None, only: str = "") -> None:
        """Deliver the task's updates up to `upto` (None: all there are) to each config (or
        the one `only`); ack, or look again later if a config is leased to another."""
        refs = [only] if only else list(await self.configs.of_task(task_id))
        waits = await asyncio.gather(
            *(self._deliver(msg, task_id, ref, upto) for ref in refs), return_exceptions=True
        )
        wait = 0.0
        for each in waits:
            if isinstance(each, BaseException):
                raise each
            wait = max(wait, each)
        if wait:
            await msg.nak(delay=wait)
        else:
            await msg.ack()

    async def _deliver(self, msg: Msg, task_id: str, ref: str, upto: int | None) -> float:
        """Bring the config's delivery up to `upto`; 0, or seconds to wait for its holder."""
        key = f"{task_id}.{ref}"
        lock, users = self._runs.get(key) or (asyncio.Lock(), 0)
        self._runs[key] = (lock, users + 1)
        try:
            async with lock:  # one delivery per config on this replica; others wait here
                while True:
                    holder = f"{self.replica}-{uuid.uuid4().hex[:8]}"
                    try:
                        run = await self.configs.take(task_id, ref, holder, upto=upto)
                    except Held as held:
                        backoff = RECHECK * 2 ** min(msg.metadata.num_delivered - 1, 6)
                        return min(held.left + 0.1, backoff, LEASE)
                    if run is None:
                        return 0.0
                    try:
                        cursor = await self._catch_up(msg, task_id, ref, holder, run)
                    except LeaseLost:
                        return 0.0  # deleted, or taken over by another (who delivers on)
                    finally:
                        with contextlib.suppress(MeshError):
                            await self.configs.release(task_id, ref, holder)
                    # Events that came while it was held may have found it held: look again.
                    last = await last_seq(self.state, task_id)
                    if cursor is None or last <= cursor:
                        return 0.0
                    upto = last
                    with contextlib.suppress(nats.errors.Error, OSError):
                        await msg.in_progress()
        finally:
            lock, users = self._runs[key]
            if users > 1:
                self._runs[key] = (lock, users - 1)
            else:
                del self._runs[key]

    async def _catch_up(
        self, msg: Msg, task_id: str, ref: str, holder: str, run: Run
    ) -> int | None:
        """POST the notifications of the events after the cursor; the new cursor (None: the
        task or the config is gone)."""
        config = await self.configs.config(task_id, ref)
        if config is None:
            return None
        cursor, state = run.cursor, run.state
        stored = cursor
        try:
            async for event in self.state.tasks.events(task_id, after=cursor):
                cursor = event.seq or cursor
                notice = await self._notice(event, state)
                if notice is None:
                    continue
                await self._post(msg, task_id, ref, holder, config, notice)
                state, stored = notice.status.state, cursor
                await self.configs.keep(task_id, ref, holder, cursor=cursor, state=state)
        except NotFound:
            return None  # the task expired
        if cursor != stored:  # past events with nothing to send
            await self.configs.keep(task_id, ref, holder, cursor=cursor, state=state)
        return cursor

    async def _notice(self, event: TaskEvent, state: int) -> Notice | None:
        """What the webhook hears of `event` after `state`: a status update per change of
        A2A state (a retry waiting is still working), the whole task at a final state."""
        status = event.status
        if event.kind is not TaskEventKind.STATUS or status is None:
            return None
        new = convert.state_of(status)
        if new == state or (status is TaskStatus.PENDING and state == TaskState.TASK_STATE_WORKING):
            return None
        record = await self.state.tasks.get(event.task_id)
        if record is None:
            return None
        if status.terminal:
            return convert.task_out(record)
        # Input-required: the record still waiting carries the agent's question.
        return convert.status_update(record, convert.status_out(record, status, at=event.timestamp))

    # One POST ---------------------------------------------------------------------------------
    async def _post(
        self,
        msg: Msg,
        task_id: str,
        ref: str,
        holder: str,
        config: TaskPushNotificationConfig,
        notice: Notice,
    ) -> None:
        """POST `notice` as the SDK's sender does, retrying; gives up (logged) at the end."""
        body = MessageToDict(to_stream_response(notice))
        headers = _headers(config)
        why = ""
        for attempt in range(1, ATTEMPTS + 1):
            await self.configs.keep(task_id, ref, holder)  # the lease holds through this try
            with contextlib.suppress(nats.errors.Error, OSError):
                await msg.in_progress()
            why, again = await self._send(config.url, body, headers)
            if not why:
                logger.debug("A2A push for task %s sent to %s", task_id, config.url)
                return
            if not again:
                break
            if attempt < ATTEMPTS:
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
        logger.warning(
            "A2A push for task %s to %s: given up after %d attempt(s): %s",
            task_id,
            config.url,
            attempt,
            why,
        )

    async def _send(self, url: str, body: object, headers: dict[str, str]) -> tuple[str, bool]:
        """One POST: ("", _) when taken; else why, and whether to try again."""
        try:  # again at each POST: the name may resolve elsewhere now
            await check_public(url, allow_private=self.state.config.a2a_push_allow_private)
        except Forbidden as exc:
            return f"refused: {exc.message}", False
        except InvalidMessage as exc:  # not resolved now: perhaps later
            return exc.message, True
        try:
            response = await self.http.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}", True
        code = response.status_code
        if 200 <= code < 300:
            return "", False
        return f"HTTP {code}", code >= 500 or code in RETRIED


def _headers(config: TaskPushNotificationConfig) -> dict[str, str]:
    """The SDK's: the config's token, and its authentication as `Authorization`."""
    headers = {}
    if config.token:
        headers["X-A2A-Notification-Token"] = config.token
    auth = config.authentication
    if config.HasField("authentication") and auth.scheme and auth.credentials:
        headers["Authorization"] = f"{auth.scheme} {auth.credentials}"
    return headers
