"""`WS /gateway/connect`: the program at the other end of the socket becomes an agent of the mesh.

The socket serves `<p>.agent.<agent_id>` in the agent's queue group on this replica's bus, so a
message sent from anywhere (SDK, CLI, HTTP on any replica, other sockets) reaches it through
NATS. Its heartbeat frames keep it in presence; when the socket closes it leaves at once.
Frames are in `gateway.frames`; the protocol is docs/PROTOCOL.md §7.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats.errors
from fastapi import APIRouter, WebSocket
from redis.exceptions import RedisError
from starlette.websockets import WebSocketDisconnect

from agentmesh.agents.client import calling_agent
from agentmesh.broker.announcer import Announcer
from agentmesh.broker.lifecycle import agent_record
from agentmesh.broker.types import Request
from agentmesh.gateway import frames
from agentmesh.gateway.auth import Principal, Scope, require, stamp_sender
from agentmesh.gateway.frames import ChunkFrame, HeartbeatFrame, ResultFrame, SendFrame
from agentmesh.gateway.state import GatewayState, state_of
from agentmesh.schemas.agent import AgentCard
from agentmesh.schemas.codec import decode, encode
from agentmesh.schemas.envelope import Chunk, Message, merge_text, new_id
from agentmesh.schemas.errors import (
    ErrorCode,
    InvalidMessage,
    MeshError,
    MeshTimeout,
    RateLimited,
    Unavailable,
)
from agentmesh.schemas.service import ServiceRecord
from agentmesh.schemas.task import TaskSpec

logger = logging.getLogger(__name__)

router = APIRouter()

# Close codes: RFC 6455's, plus one of the private range.
CLOSE_POLICY = 1008  # bad query parameters, missing or refused credentials
CLOSE_INTERNAL = 1011  # a bug in the gateway (logged)
CLOSE_TRY_AGAIN = 1013  # rate limited, or NATS/Redis unreachable while connecting
CLOSE_HEARTBEAT_TIMEOUT = 4000  # no heartbeat frame within the heartbeat timeout

# What sending on a socket that is closing or closed raises (uvicorn's ClientDisconnected is an
# OSError; Starlette raises RuntimeError subclasses once a close was sent or received).
_SOCKET_GONE = (WebSocketDisconnect, RuntimeError, OSError)


_CLOSE_WAIT = 5.0  # seconds to send the last frames to a client that may not be reading


class _Gone(Exception):
    """The socket is closed: nothing more can be pushed to the agent."""


@router.websocket("/gateway/connect")
async def connect(websocket: WebSocket) -> None:
    """Attach as an agent: `?agent_id=...&agent_name=...&capabilities=[...]`."""
    state = state_of(websocket)
    try:
        principal = await require(Scope.CONNECT)(websocket)
        card = frames.card_from_query(websocket.query_params)
        principal.check_act_as(card.agent_id, what="attach as")  # no joining another's group
    except MeshError as exc:
        await _refuse(websocket, exc)
        return
    session = Session(websocket, state, card, principal)
    live = sessions_of(websocket.app)
    live.add(session)
    try:
        await session.run()
    except Exception:  # the top of one connection: log it, close, keep serving the others
        logger.exception("WebSocket session of agent %s failed", card.agent_id)
        await session.close(CLOSE_INTERNAL, "internal error")
    finally:
        live.discard(session)


def sessions_of(app: Any) -> set[Session]:
    """The agent sockets attached to this replica now."""
    sessions = getattr(app.state, "ws_sessions", None)
    if sessions is None:
        sessions = app.state.ws_sessions = set()
    return sessions


async def _refuse(websocket: WebSocket, exc: MeshError) -> None:
    """Accept only to say why: a browser cannot read the HTTP status of a refused handshake."""
    code = CLOSE_TRY_AGAIN if isinstance(exc, RateLimited | Unavailable) else CLOSE_POLICY
    try:
        await websocket.accept()
        await websocket.send_text(frames.dumps(frames.error(exc)))
        await websocket.close(code, str(exc.code))
    except _SOCKET_GONE:
        pass


class _Delivery:
    """A message pushed to the agent, waiting for its `result` (and `chunk`s before it)."""

    __slots__ = ("message", "items")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.items: asyncio.Queue[Chunk | ResultFrame | MeshError] = asyncio.Queue()

    async def get(self) -> Chunk | ResultFrame:
        item = await self.items.get()
        if isinstance(item, MeshError):
            raise item
        return item


class Session:
    """One connected socket: presence, serving, the reader loop, and the one writer."""

    def __init__(
        self, websocket: WebSocket, state: GatewayState, card: AgentCard, principal: Principal
    ) -> None:
        self.ws = websocket
        self.state = state
        self.card = card
        self.agent_id = card.agent_id
        self.principal = principal
        self.subjects = state.bus.subjects
        self.instance_id = uuid.uuid4().hex[:16]
        self.connected_at = time.time()
        settings = state.settings
        self.heartbeat = Announcer(
            state.registry, state.bus, self.record, interval=settings.heartbeat_interval
        )
        # Never longer than presence lasts: a connected agent is always an online one.
        idle = state.config.ws_idle_timeout or settings.heartbeat_timeout
        self.idle_timeout = min(idle, settings.heartbeat_timeout)
        self._lock = asyncio.Lock()  # one writer: frames never interleave
        self._pending: dict[str, _Delivery] = {}  # message id → delivery, oldest first
        self._sends: set[asyncio.Task[None]] = set()
        self._service: Any = None
        self._deadline: asyncio.Timeout | None = None
        self._last_beat = 0.0
        self._closed = False

    # Lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self.ws.accept()
            close: tuple[int, str] | None = (CLOSE_TRY_AGAIN, str(ErrorCode.UNAVAILABLE))
            try:
                if await self._attach():
                    logger.info("agent %s connected (instance %s)", self.agent_id, self.instance_id)
                    close = await self._read()
            finally:
                await self._detach()
            if close is not None:  # we end it: only now, so the agent is already offline
                await self.close(*close)
        except _Gone:
            pass
        logger.info("agent %s disconnected (instance %s)", self.agent_id, self.instance_id)

    def record(self) -> ServiceRecord:
        """The socket's registry record: an agent instance attached via the gateway."""
        return agent_record(
            self.card,
            instance_id=self.instance_id,
            started_at=self.connected_at,
            via="gateway",
            service=self._service,
        )

    async def _attach(self) -> bool:
        settings = self.state.settings
        async with self._lock:  # `connected` is the first frame, before any message
            try:
                self._service = await self.state.bus.serve(
                    self.subjects.agent(self.agent_id),
                    self._handle,
                    queue=self.subjects.agent_queue(self.agent_id),
                )
                await self.heartbeat.beat()  # served before presence: online means reachable
            except (RedisError, OSError, nats.errors.Error) as exc:
                logger.warning("cannot attach agent %s: %s", self.agent_id, exc)
                error = Unavailable(f"the gateway cannot register the agent right now ({exc})")
                await self._write(frames.error(error))
                return False
            self._last_beat = time.monotonic()
            await self._write(
                frames.connected(
                    agent_id=self.agent_id,
                    instance_id=self.instance_id,
                    interval=settings.heartbeat_interval,
                    timeout=self.idle_timeout,
                    max_bytes=self.state.config.max_body_bytes,
                )
            )
        return True

    async def _detach(self) -> None:
        """Offline at once, then fail what waits on the socket, stop serving, stop sends."""
        self._closed = True
        await self.heartbeat.stop()
        gone = Unavailable(
            f"agent '{self.agent_id}' disconnected", details={"agent_id": self.agent_id}
        )
        for delivery in self._pending.values():
            delivery.items.put_nowait(gone)
        self._pending.clear()
        if self._service is not None:
            await self._service.stop(timeout=5.0)
        for task in self._sends:
            task.cancel()
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)

    async def close(self, code: int, reason: str) -> None:
        # Bounded: a client that stopped reading never drains our buffer. Returning from the
        # endpoint makes uvicorn drop the connection anyway.
        try:
            async with asyncio.timeout(_CLOSE_WAIT):
                await self.ws.close(code, reason)
        except (*_SOCKET_GONE, TimeoutError):
            pass

    # Writing ---------------------------------------------------------------------------------
    async def push(self, frame: dict[str, Any]) -> None:
        """Send one frame to the agent; `_Gone` if the socket is closed."""
        async with self._lock:
            await self._write(frame)

    async def _write(self, frame: dict[str, Any]) -> None:
        try:
            await self.ws.send_text(frames.dumps(frame))
        except _SOCKET_GONE:
            raise _Gone from None

    # Reading ---------------------------------------------------------------------------------
    async def _read(self) -> tuple[int, str] | None:
        """Handle frames until the socket closes (→ None) or goes silent (→ close code)."""
        try:
            async with asyncio.timeout(self.idle_timeout) as self._deadline:
                while True:
                    event = await self.ws.receive()
                    if event["type"] == "websocket.disconnect":
                        return None
                    text = event.get("text")
                    if text is None:
                        error = InvalidMessage("binary frames are not supported: send JSON text")
                        await self.push(frames.error(error))
                    else:
                        await self._on_text(text)
        except TimeoutError:
            if self._deadline is None or not self._deadline.expired():
                raise
        error = MeshTimeout(f"no heartbeat frame within {self.idle_timeout:g}s: closing")
        try:
            async with asyncio.timeout(_CLOSE_WAIT):  # a client that stopped reading too
                await self.push(frames.error(error))
        except TimeoutError:
            pass
        return CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout"

    async def _on_text(self, text: str) -> None:
        ref: str | None = None
        try:
            frame = frames.parse_frame(text)
            if isinstance(frame, HeartbeatFrame):
                await self._on_heartbeat()
            elif isinstance(frame, SendFrame):
                ref = frame.message_id
                await self._start_send(frame)
            elif isinstance(frame, ResultFrame):
                ref = frame.message_id
                self._on_result(frame)
            elif isinstance(frame, ChunkFrame):
                ref = frame.message_id
                self._on_chunk(frame)
        except MeshError as exc:
            await self.push(frames.error(exc, message_id=ref))

    async def _on_heartbeat(self) -> None:
        assert self._deadline is not None
        self._deadline.reschedule(asyncio.get_running_loop().time() + self.idle_timeout)
        # Presence needs one write per interval; a client beating faster costs no Redis calls.
        now = time.monotonic()
        if now - self._last_beat >= self.state.settings.heartbeat_interval / 2:
            try:
                await self.heartbeat.beat()
                self._last_beat = now
            except (RedisError, OSError) as exc:
                logger.warning("heartbeat of agent %s failed: %s", self.agent_id, exc)
        await self.push(frames.heartbeat_ack(time.time()))

    def _on_result(self, frame: ResultFrame) -> None:
        delivery = self._take(frame.message_id, frame.conversation_id)
        delivery.items.put_nowait(frame if frame.success else frame.failure())

    def _on_chunk(self, frame: ChunkFrame) -> None:
        delivery = self._pending.get(frame.message_id)
        if delivery is None:
            raise _not_pending(f"message '{frame.message_id}'")
        delivery.items.put_nowait(frame.chunk())

    def _take(self, message_id: str | None, conversation_id: str | None) -> _Delivery:
        """The delivery a result answers: by message id, else the oldest of the conversation."""
        if message_id is not None:
            delivery = self._pending.pop(message_id, None)
            if delivery is None:
                raise _not_pending(f"message '{message_id}'")
            return delivery
        for key, delivery in self._pending.items():
            if delivery.message.conversation_id == conversation_id:
                del self._pending[key]
                return delivery
        raise _not_pending(f"message in conversation {conversation_id!r}")

    # Messages to the agent (served on the bus) -------------------------------------------------
    async def _handle(self, request: Request) -> bytes | AsyncIterator[bytes]:
        msg = decode(request.data, Message)
        task = frames.task_of(request.headers)
        if request.stream:
            return self._stream(msg, task)
        parts: list[Any] = []
        async with self._delivery(msg, stream=False, task=task) as delivery:
            while True:
                item = await delivery.get()
                if isinstance(item, Chunk):
                    parts.extend(item.content)
                else:
                    return encode(self._reply(msg, item, merge_text(parts + item.parts())))

    async def _stream(self, msg: Message, task: dict[str, Any] | None) -> AsyncIterator[bytes]:
        async with self._delivery(msg, stream=True, task=task) as delivery:
            while True:
                item = await delivery.get()
                if isinstance(item, Chunk):
                    yield encode(item)
                    continue
                if item.parts():  # the result's own content is the last chunk
                    yield encode(Chunk(content=item.parts(), metadata=item.metadata))
                return

    @asynccontextmanager
    async def _delivery(
        self, msg: Message, *, stream: bool, task: dict[str, Any] | None = None
    ) -> AsyncIterator[_Delivery]:
        mid = msg.message_id
        if self._closed:
            raise Unavailable(f"agent '{self.agent_id}' disconnected")
        if mid in self._pending:
            raise InvalidMessage(f"message '{mid}' is already in flight at this agent")
        delivery = self._pending[mid] = _Delivery(msg)
        try:
            await self.push(frames.message(msg, stream=stream, task=task))
            yield delivery
        except _Gone:
            raise Unavailable(f"agent '{self.agent_id}' disconnected") from None
        except asyncio.CancelledError:
            if self._pending.get(mid) is delivery:  # not answered yet: tell the agent to stop
                del self._pending[mid]
                try:
                    await self.push(frames.cancel(mid, "the caller cancelled or timed out"))
                except _Gone:
                    pass
            raise
        finally:
            if self._pending.get(mid) is delivery:
                del self._pending[mid]

    def _reply(self, msg: Message, frame: ResultFrame, parts: list[Any]) -> Message:
        return Message(
            from_agent_id=self.agent_id,
            to_agent_id=msg.from_agent_id,
            conversation_id=frame.conversation_id or msg.conversation_id,
            content=parts,
            metadata=frame.metadata,
        )

    # Messages from the agent -----------------------------------------------------------------
    async def _start_send(self, frame: SendFrame) -> None:
        subject = self.subjects.agent(frame.to_agent_id)  # InvalidId before anything is sent
        self.principal.check_reach(frame.to_agent_id)  # the key's to_agents patterns
        limit = self.state.settings.max_concurrency
        if len(self._sends) >= limit:
            raise RateLimited(f"{limit} sends are in flight on this socket: wait for results")
        await self._charge()
        message = Message(
            message_id=frame.message_id or new_id(),
            from_agent_id=self.agent_id,  # always this agent: a socket cannot speak for another
            to_agent_id=frame.to_agent_id,
            conversation_id=frame.conversation_id,
            content=frame.content,
            metadata=stamp_sender(frame.metadata, self.principal),
        )
        task = asyncio.get_running_loop().create_task(self._send(subject, message, frame))
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _charge(self) -> None:
        """Each send counts against the key's rate limit, as an HTTP call does."""
        principal = self.principal
        if principal.rate_limit is None or principal.key_id is None:
            return
        try:
            await self.state.limiter.check(f"key:{principal.key_id}", principal.rate_limit)
        except (RedisError, OSError):
            raise Unavailable("cannot apply the rate limit: Redis is unreachable") from None

    async def _send(self, subject: str, message: Message, frame: SendFrame) -> None:
        bus = self.state.bus
        mid = message.message_id
        target = frame.to_agent_id
        try:
            try:
                if frame.wait:
                    with calling_agent(target):
                        reply = await bus.request(subject, encode(message), timeout=frame.timeout)
                    out = frames.result(decode(reply.data, Message), message_id=mid)
                else:  # a durable task, as HTTP's send without wait: answered once stored
                    meta = stamp_sender({}, self.principal)
                    spec = TaskSpec(agent_id=target, input=message, metadata=meta)
                    ref = await self.state.tasks.submit(spec)
                    out = frames.sent(mid, time.time(), task_id=ref.task_id)
            except MeshError as exc:
                out = frames.error(exc, message_id=mid)
            await self.push(out)
        except _Gone:
            pass
        except Exception:  # the top of a task: a bug is logged, the socket carries on
            logger.exception("send from agent %s to %s failed", self.agent_id, target)


def _not_pending(what: str) -> InvalidMessage:
    return InvalidMessage(
        f"no pending {what}: it was answered, cancelled, or never delivered to this socket"
    )
