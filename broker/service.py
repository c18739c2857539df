"""Serving a subject: queue-group subscription, bounded concurrency, ack, keep-alives, cancel.

A `Service` runs each request in its own task (nats-py runs one callback at a time per
subscription, so a slow handler must not hold the subscription). `Control` is per connection:
it knows the calls in flight, sends their keep-alives, and cancels them on request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

from agentmesh.broker.tracing import tracing_enabled
from agentmesh.broker.types import (
    H_CALL,
    H_INSTANCE,
    H_KIND,
    H_SEQ,
    H_STREAM,
    Handler,
    Kind,
    Request,
)
from agentmesh.schemas.codec import encode
from agentmesh.schemas.errors import Cancelled, MeshError, PayloadTooLarge, RemoteError

if TYPE_CHECKING:
    from agentmesh.broker.bus import Bus

logger = logging.getLogger(__name__)
_MAX_EARLY_CANCELS = 10_000
tracer = trace.get_tracer("agentmesh.service")


class Control:
    """Per-connection bookkeeping of calls in flight: keep-alives and cancellation."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.inflight: dict[str, asyncio.Task[None]] = {}  # reply subject → handler task
        self._early: dict[str, float] = {}  # cancels that came before their call → expiry
        self._subs: list[Any] = []
        self._ticker: asyncio.Task[None] | None = None
        self._ack_headers = {H_KIND: Kind.ACK.value, H_INSTANCE: bus.instance_id}
        self._keepalive_headers = {H_KIND: Kind.KEEPALIVE.value, H_INSTANCE: bus.instance_id}

    async def start(self) -> None:
        subjects = self.bus.subjects
        for subject in (subjects.control(self.bus.instance_id), subjects.control_all()):
            self._subs.append(await self.bus.nc.subscribe(subject, cb=self._on_control))
        self._ticker = asyncio.get_running_loop().create_task(self._keepalives())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass  # connection already closing

    async def _on_control(self, msg: Msg) -> None:
        hdrs = msg.headers or {}
        if hdrs.get(H_KIND) != Kind.CANCEL:
            return
        call = hdrs.get(H_CALL, "")
        task = self.inflight.get(call)
        if task is not None:
            logger.debug("cancelling call %s on request", call)
            task.cancel()
        elif call:
            # The cancel may overtake its request (nats-py runs each subscription's callbacks in
            # a task of its own): remember it, so the request is refused when it arrives.
            self._early[call] = time.monotonic() + self.bus.settings.request_timeout
            if len(self._early) > _MAX_EARLY_CANCELS:
                del self._early[next(iter(self._early))]  # oldest first: a bounded memory

    def cancelled_early(self, reply: str) -> bool:
        """Whether a cancel for this call arrived before the call itself (consumes it)."""
        return self._early.pop(reply, None) is not None

    async def _keepalives(self) -> None:
        nc = self.bus.nc
        while True:
            await asyncio.sleep(self.bus.settings.keepalive_interval)
            now = time.monotonic()
            for call in [c for c, until in self._early.items() if until < now]:
                del self._early[call]
            for reply in list(self.inflight):
                try:
                    await nc.publish(reply, b"", headers=self._keepalive_headers)
                except nats.errors.Error:
                    break  # disconnected: the next tick tries again


class Service:
    """One served subject in one process."""

    def __init__(
        self,
        bus: Bus,
        subject: str,
        handler: Handler,
        *,
        queue: str,
        max_concurrency: int,
        max_queued: int,
    ) -> None:
        self.bus = bus
        self.subject = subject
        self.queue = queue
        self.handler = handler
        # Two bounds: `max_concurrency` handlers run at once, and up to `max_queued` more calls
        # are acknowledged and wait (kept alive) for a slot. Beyond both, requests wait in the
        # client's buffer unacknowledged, and their callers re-route them after the ack timeout.
        self._slots = asyncio.Semaphore(max_concurrency)
        self._admitted = asyncio.Semaphore(max_concurrency + max_queued)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Any = None
        self.served = 0  # requests taken since start (reported in the registry record)

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(self.subject, queue=self.queue, cb=self._on_request)
        await self.bus.nc.flush()  # the server knows the subscription before serve() returns

    async def unsubscribe(self) -> None:
        """Take no new requests (the calls in flight go on; `stop` waits for them)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
                await self.bus.nc.flush()  # the server routes no new request here after this
            except nats.errors.Error:
                pass

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Take no new requests, then wait (bounded) for the calls in flight to finish."""
        await self.unsubscribe()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
        self.bus.remove_service(self)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            logger.warning("dropping a message on %s without a reply subject", msg.subject)
            return
        if len(msg.data) > self.bus.max_payload:
            await self._send_error(
                msg.reply,
                PayloadTooLarge(
                    f"message of {len(msg.data)} bytes exceeds the limit of "
                    f"{self.bus.max_payload} bytes",
                    details={"size": len(msg.data), "limit": self.bus.max_payload},
                ),
            )
            return
        control = self.bus._control
        await self._admitted.acquire()  # backpressure on this subscription
        if control._early and control.cancelled_early(msg.reply):
            self._admitted.release()
            await self._send_error(msg.reply, Cancelled("the call was cancelled before it started"))
            return
        hdrs = msg.headers or {}
        request = Request(
            subject=msg.subject,
            data=msg.data,
            headers=hdrs,
            reply=msg.reply,
            instance_id=self.bus.instance_id,
            stream=hdrs.get(H_STREAM) == "1",
        )
        # The ack goes out before the handler can publish anything: a caller that sees any
        # frame of the handler (or its delegations) has seen the ack, so it always knows whom
        # to watch and to cancel. (Deferring it to skip acks for fast handlers let a replica
        # die unobserved between its first publish and the ack: the caller hung.)
        await self.bus.nc.publish(msg.reply, b"", headers=control._ack_headers)
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(request))
        control.inflight[msg.reply] = task
        self._tasks.add(task)
        self.served += 1
        # A done-callback, not a `finally` in _run: a task cancelled before its first step
        # never runs its body, and its slot and table entry must be freed all the same.
        task.add_done_callback(lambda t, reply=msg.reply: self._done(t, reply))

    def _done(self, task: asyncio.Task[None], reply: str) -> None:
        self._tasks.discard(task)
        self.bus._control.inflight.pop(reply, None)
        self._admitted.release()

    async def _run(self, request: Request) -> None:
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:
            await self._send_error(request.reply, Cancelled("the call was cancelled"))
            return
        try:
            await self._handle(request)
        finally:
            self._slots.release()

    async def _handle(self, request: Request) -> None:
        nc = self.bus.nc
        reply = request.reply
        token = span = None
        if "traceparent" in request.headers:
            token = otel_context.attach(propagate.extract(request.headers))
        if token is not None or tracing_enabled():
            span = tracer.start_span(f"serve {self.subject}", kind=trace.SpanKind.SERVER)
            token = otel_context.attach(trace.set_span_in_context(span))
        try:
            result = await self.handler(request)
            if isinstance(result, bytes):
                # A reply without Mesh-Kind is a result: the common frame needs no headers.
                await nc.publish(reply, result)
            else:
                await self._stream(reply, result)
        except asyncio.CancelledError:
            # Cancelled by the caller (or by shutdown): tell the caller, if it still listens.
            await self._send_error(reply, Cancelled("the call was cancelled"))
        except MeshError as exc:
            await self._send_error(reply, exc)
        except Exception as exc:  # the transport boundary: a handler bug becomes an error reply
            logger.exception("handler for %s failed", self.subject)
            await self._send_error(reply, RemoteError(f"{type(exc).__name__}: {exc}"))
        finally:
            if span is not None:
                span.end()
            if token is not None:
                otel_context.detach(token)

    async def _stream(self, reply: str, chunks: AsyncIterator[bytes]) -> None:
        nc = self.bus.nc
        seq = 0
        async for chunk in chunks:
            seq += 1
            await nc.publish(reply, chunk, headers={H_KIND: Kind.CHUNK.value, H_SEQ: str(seq)})
        await nc.publish(reply, b"", headers={H_KIND: Kind.RESULT.value})

    async def _send_error(self, reply: str, exc: MeshError) -> None:
        try:
            await self.bus.nc.publish(
                reply, encode(exc.to_info()), headers={H_KIND: Kind.ERROR.value}
            )
        except (nats.errors.Error, OSError):
            logger.debug("could not send error reply to %s", reply)
