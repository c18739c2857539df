"""The NATS bus: one connection with one muxed reply inbox, for calling and serving.

Callers use `request` (one terminal frame) and `stream` (chunks, then one terminal frame);
responders use `serve` (see `broker.service`). A watchdog declares a call dead when its
responder, after acknowledging it, misses three keep-alives. A call nobody acknowledges within
`Settings.ack_timeout` went to a frozen (or overloaded) instance: it is cancelled there and sent
again, and NATS picks a queue-group member anew. While the connection is down or
has just come back (`Bus.settling`), "no responders" is retried and a call nobody took fails
with `Unavailable`, not `NoResponders` or `MeshTimeout`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from opentelemetry import propagate, trace

from agentmesh.broker.call import Call
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.broker.tracing import tracing_enabled
from agentmesh.broker.types import (
    H_CALL,
    H_INSTANCE,
    H_KIND,
    H_STREAM,
    TERMINAL,
    Frame,
    Handler,
    Kind,
)
from agentmesh.schemas.codec import decode
from agentmesh.schemas.errors import (
    ConnectionFailed,
    ErrorInfo,
    MeshError,
    NoResponders,
    PayloadTooLarge,
    Unavailable,
    error_from_info,
)

logger = logging.getLogger(__name__)
tracer = trace.get_tracer("agentmesh.bus")

_MISSED_KEEPALIVES = 3
_STATUS = "Status"
_NO_RESPONDERS = "503"
_RETRY_FIRST, _RETRY_MAX = 0.05, 0.4  # seconds between re-sends of a request nobody took
# The publish failed because there is no connection (closed, or its reconnect buffer is full).
_NOT_CONNECTED = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    OSError,
)


class Bus:
    """A connection to the mesh's NATS. Create with `await Bus.connect(settings)`."""

    def __init__(self, nc: NatsClient, settings: Settings, *, instance_id: str) -> None:
        self.nc = nc
        self.settings = settings
        self.subjects = Subjects(settings.prefix)
        self.instance_id = instance_id
        self._inbox = nc.new_inbox()
        self._inbox_len = len(self._inbox) + 1
        self._tokens = itertools.count(1)
        self._calls: dict[str, Call] = {}
        self._inbox_sub: Any = None
        self._watchdog: asyncio.Task[None] | None = None
        self._services: list[Any] = []
        self._retired_served = 0  # requests served by services that have stopped
        self.calls_made = 0  # requests this connection sent (request, deliver, stream)
        self._control: Any = None  # broker.service.Control, created with the first service
        self._unsettled_until = 0.0  # monotonic; inf while disconnected (see `settling`)

    # Connection ------------------------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        settings: Settings | None = None,
        *,
        name: str = "agentmesh",
        instance_id: str | None = None,
    ) -> Bus:
        """Connect to NATS; raise `ConnectionFailed` naming the URL if it cannot be reached."""
        settings = settings or Settings.from_env()

        connected = False
        bus: Bus | None = None

        async def on_error(exc: Exception) -> None:
            # Before the first connection the failure is raised as ConnectionFailed instead.
            logger.log(
                logging.WARNING if connected else logging.DEBUG,
                "NATS %s: %s",
                settings.nats_url,
                exc,
            )

        async def on_disconnect() -> None:
            if not nc.is_closed and not nc.is_draining:
                logger.warning("disconnected from NATS %s; reconnecting", settings.nats_url)
            if bus is not None:
                bus._disconnected()

        async def on_reconnect() -> None:
            logger.info("reconnected to NATS %s", settings.nats_url)
            if bus is not None:
                bus._reconnected()

        try:
            nc = await nats.connect(
                settings.nats_url,
                name=name,
                connect_timeout=settings.connect_timeout,
                # nats-py would retry an unreachable first server forever with -1; try twice,
                # then allow unlimited reconnects once connected (the option is read live).
                max_reconnect_attempts=1,
                reconnect_time_wait=0.25,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            raise ConnectionFailed(
                f"cannot reach NATS at {settings.nats_url} ({exc or type(exc).__name__}). "
                "Start a local mesh with `make up` (or `agentmesh up`), "
                "or point AGENTMESH_NATS_URL at your NATS server."
            ) from None
        nc.options["max_reconnect_attempts"] = -1
        connected = True
        bus = cls(nc, settings, instance_id=instance_id or uuid.uuid4().hex[:16])
        bus._inbox_sub = await nc.subscribe(f"{bus._inbox}.*", cb=bus._on_reply)
        bus._watchdog = asyncio.get_running_loop().create_task(bus._watch())
        return bus

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def server_version(self) -> str:
        """The connected NATS server's version."""
        v = self.nc.connected_server_version
        return f"{v.major}.{v.minor}.{v.patch}" + (f"-{v.prerelease}" if v.prerelease else "")

    async def jetstream_enabled(self, *, timeout: float = 2.0) -> bool:
        """Whether the server (and this account) has JetStream."""
        try:
            await self.nc.jetstream(timeout=timeout).account_info()
        except (nats.errors.Error, TimeoutError, OSError):
            return False
        return True

    @property
    def settling(self) -> bool:
        """Disconnected from NATS, or reconnected less than `Settings.reconnect_grace` ago.

        Meanwhile other clients may not have re-subscribed yet, so "no responders" may be
        untrue: a request is sent again until someone takes it or the grace ends.
        """
        return time.monotonic() < self._unsettled_until or not self.nc.is_connected

    def _disconnected(self) -> None:
        self._unsettled_until = math.inf
        # A request not yet acknowledged (or its ack) may have been lost with the connection:
        # say so now, as UNAVAILABLE, rather than as TIMEOUT at the deadline.
        for call in self._calls.values():
            if call.instance is None:
                call.fail(
                    Unavailable(
                        f"the connection to NATS was lost before anyone took the call to "
                        f"{call.subject}; it may not have been delivered",
                        details={"subject": call.subject},
                    )
                )

    def _reconnected(self) -> None:
        self._unsettled_until = time.monotonic() + self.settings.reconnect_grace

    @property
    def max_payload(self) -> int:
        return min(self.settings.max_message_bytes, self.nc.max_payload or 1 << 20)

    async def close(self, *, drain_timeout: float = 10.0) -> None:
        """Stop serving (finishing calls in flight), then drain and close the connection."""
        for service in list(self._services):
            await service.stop(timeout=drain_timeout)
        if self._control is not None:
            await self._control.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
        for call in self._calls.values():
            call.fail(Unavailable("the connection to the mesh was closed"))
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (nats.errors.Error, OSError, TimeoutError):
                try:
                    await self.nc.close()
                except OSError:  # nats-py flushes what it buffered while reconnecting
                    logger.debug("closed NATS with unsent messages (it was unreachable)")

    # Publishing ------------------------------------------------------------------------------
    def _check_size(self, data: bytes) -> None:
        if len(data) > self.max_payload:
            raise PayloadTooLarge(
                f"message of {len(data)} bytes exceeds the limit of {self.max_payload} bytes",
                details={"size": len(data), "limit": self.max_payload},
            )

    async def publish(
        self, subject: str, data: bytes = b"", *, headers: dict[str, str] | None = None
    ) -> None:
        self._check_size(data)
        await self.nc.publish(subject, data, headers=headers)

    # Calling ---------------------------------------------------------------------------------
    async def request(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> Frame:
        """Send one request and return its terminal `result` frame (chunks are skipped).

        Raises the `MeshError` the responder sent, `NoResponders` at once when nobody serves
        `subject`, `MeshTimeout` at the deadline, `Unavailable` when the responder went silent.
        """
        call = await self._start(subject, data, headers, timeout, stream=False)
        try:
            while True:
                frame = await self._next(call)
                if frame.kind is Kind.RESULT:
                    return frame
        finally:
            await self._finish(call)

    async def deliver(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> str | None:
        """Send a request and return once a responder took it, leaving the call running.

        "Took it" is the first frame (ack, chunk or result); its later frames are dropped. An
        error frame before that is raised. Returns the responder's instance id when it acked.
        """
        call = await self._start(subject, data, headers, timeout, stream=True)
        try:
            await self._next(call)
        finally:
            # Delivered (or failed): stop listening without cancelling the responder's work.
            if not call.dead:
                call.ended = True
            await self._finish(call)
        return call.instance

    async def stream(
        self,
        subject: str,
        data: bytes,
        *,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        on_ack: Callable[[str], None] | None = None,
    ) -> AsyncIterator[Frame]:
        """Send one request and yield its `chunk` frames, then the terminal `result` frame.

        Leaving the iteration early (break, cancel) cancels the call at the responder.
        `on_ack` is called with the instance id that acknowledged the call.
        """
        call = await self._start(subject, data, headers, timeout, stream=True, on_ack=on_ack)
        try:
            while True:
                frame = await self._next(call)
                yield frame
                if frame.kind is Kind.RESULT:
                    return
        finally:
            await self._finish(call)

    async def _start(
        self,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        timeout: float | None,
        *,
        stream: bool,
        on_ack: Callable[[str], None] | None = None,
    ) -> Call:
        self._check_size(data)
        timeout = self.settings.request_timeout if timeout is None else timeout
        token = format(next(self._tokens), "x")
        call = Call(subject, f"{self._inbox}.{token}")
        call.on_ack = on_ack
        hdrs = dict(headers) if headers else {}
        if stream:
            hdrs[H_STREAM] = "1"
        if tracing_enabled():
            # The span is not made current: a call may outlive the context it started in.
            call.span = tracer.start_span(f"call {subject}", kind=trace.SpanKind.CLIENT)
            propagate.inject(hdrs, context=trace.set_span_in_context(call.span))
        loop = asyncio.get_running_loop()
        call.timer = loop.call_later(timeout, self._expire, call, timeout)
        if self.settings.ack_timeout < timeout:
            call.ack_timer = loop.call_later(self.settings.ack_timeout, self._ack_overdue, call)
        call.request = (data, hdrs or None)
        self._calls[token] = call
        self.calls_made += 1
        try:
            await self.nc.publish(subject, data, reply=call.reply, headers=hdrs or None)
        except _NOT_CONNECTED as exc:
            call.ended = True
            await self._finish(call)
            raise Unavailable(
                f"cannot send to {subject}: not connected to NATS ({exc or type(exc).__name__})",
                details={"subject": subject},
            ) from None
        except BaseException as exc:
            # Cancelled inside publish: nats-py had already buffered the request, so it goes
            # out and must be cancelled. Any other failure means nothing was sent.
            call.ended = not isinstance(exc, asyncio.CancelledError)
            await self._finish(call)
            raise
        return call

    async def _next(self, call: Call) -> Frame:
        item = await call.get()
        if isinstance(item, MeshError):
            raise item  # local: timeout, silent responder, nobody serving, connection closed
        if item.kind in TERMINAL:
            call.ended = True
            if item.kind is Kind.ERROR:
                raise error_from_info(decode(item.data, ErrorInfo))
        return item

    async def _finish(self, call: Call) -> None:
        self._calls.pop(call.reply[self._inbox_len :], None)
        if call.timer is not None:
            call.timer.cancel()
        if call.resend is not None:
            call.resend.cancel()
        if call.ack_timer is not None:
            call.ack_timer.cancel()
        if call.span is not None:
            call.span.end()
        if not call.ended:  # timed out, went silent, or the caller cancelled or stopped
            await self._send_cancel(call)

    async def _send_cancel(self, call: Call) -> None:
        await self._cancel(call.reply, call.instance)

    async def _cancel(self, reply: str, instance: str | None) -> None:
        target = self.subjects.control(instance) if instance else self.subjects.control_all()
        try:
            await self.nc.publish(target, b"", headers={H_KIND: Kind.CANCEL, H_CALL: reply})
        except (nats.errors.Error, OSError):
            logger.debug("could not send cancel for %s", reply)

    async def _on_reply(self, msg: Msg) -> None:
        call = self._calls.get(msg.subject[self._inbox_len :])
        if call is None:
            return  # a late frame for a call that already ended
        call.last_seen = time.monotonic()
        if call.ack_timer is not None:  # someone took notice (any frame, or "no responders")
            call.ack_timer.cancel()
            call.ack_timer = None
        hdrs = msg.headers
        if not hdrs:  # a reply without headers is a result (also what a plain NATS reply is)
            call.deliver(Frame(Kind.RESULT, msg.data, {}))
            return
        kind = hdrs.get(H_KIND)
        if kind is None:
            if hdrs.get(_STATUS) == _NO_RESPONDERS:
                if self.settling and not call.dead:
                    call.resend = asyncio.get_running_loop().create_task(self._send_again(call))
                    return
                call.ended = True
                call.fail(
                    NoResponders(
                        f"nothing is serving {call.subject} right now",
                        details={"subject": call.subject},
                    )
                )
                return
            kind = Kind.RESULT
        if kind == Kind.ACK:
            call.instance = hdrs.get(H_INSTANCE)
            if call.on_ack is not None and call.instance:
                call.on_ack(call.instance)
            return
        if kind == Kind.KEEPALIVE:
            return
        try:
            call.deliver(Frame(Kind(kind), msg.data, hdrs))
        except ValueError:
            logger.debug("ignoring a frame of unknown kind %r", kind)

    async def _send_again(self, call: Call) -> None:
        """Nobody took the request while the bus is settling: send it again shortly (safe, as
        "no responders" means no one received it)."""
        call.retries += 1
        await asyncio.sleep(min(_RETRY_FIRST * 2 ** (call.retries - 1), _RETRY_MAX))
        if call.dead:
            return
        data, hdrs = call.request
        try:
            await self.nc.publish(call.subject, data, reply=call.reply, headers=hdrs)
        except _NOT_CONNECTED as exc:
            call.ended = True
            call.fail(
                Unavailable(
                    f"cannot send to {call.subject}: not connected to NATS ({exc})",
                    details={"subject": call.subject},
                )
            )

    def _ack_overdue(self, call: Call) -> None:
        """No frame within the ack timeout: the instance NATS chose is frozen (SIGSTOP, a
        blocked event loop) or has more queued than it admits. Unless the connection itself is
        settling (then the settling re-sends own the call), try another member."""
        call.ack_timer = None
        if call.dead or call.ended or call.instance is not None:
            return
        if self.settling or call.resend is not None and not call.resend.done():
            call.ack_timer = asyncio.get_running_loop().call_later(
                self.settings.ack_timeout, self._ack_overdue, call
            )
            return
        call.resend = asyncio.get_running_loop().create_task(self._reroute(call))

    async def _reroute(self, call: Call) -> None:
        """Cancel the unacknowledged attempt (it may yet start when its instance thaws) and
        send the request again under a new reply subject, so that the cancel cannot touch the
        new attempt and late frames of the old one are dropped."""
        old = call.reply
        token = format(next(self._tokens), "x")
        self._calls.pop(old[self._inbox_len :], None)
        call.reply = f"{self._inbox}.{token}"
        self._calls[token] = call
        call.reroutes += 1
        logger.info(
            "no ack from %s within %gs; sending the call again (attempt %d)",
            call.subject,
            self.settings.ack_timeout,
            call.reroutes + 1,
        )
        await self._cancel(old, None)
        data, hdrs = call.request
        try:
            await self.nc.publish(call.subject, data, reply=call.reply, headers=hdrs)
        except _NOT_CONNECTED as exc:
            call.fail(
                Unavailable(
                    f"cannot send to {call.subject}: not connected to NATS ({exc})",
                    details={"subject": call.subject},
                )
            )
            return
        if not call.dead:
            call.ack_timer = asyncio.get_running_loop().call_later(
                self.settings.ack_timeout, self._ack_overdue, call
            )

    def _expire(self, call: Call, timeout: float) -> None:
        """The deadline passed. A call nobody took while the connection was settling is
        UNAVAILABLE (retry later), not TIMEOUT."""
        if call.instance is None and (call.retries or self.settling):
            call.fail(
                Unavailable(
                    f"nobody took the call to {call.subject} within {timeout:g}s while the "
                    "connection to NATS was being re-established",
                    details={"subject": call.subject, "timeout": timeout},
                )
            )
        else:
            call.time_out(timeout)

    async def _watch(self) -> None:
        """Fail calls whose acknowledged responder missed three keep-alives (it died).

        A round that wakes late (this process was held up: a long GC pause, a starved CPU) fails
        nothing: the keep-alives that came meanwhile wait unread behind it, so only the next
        round can tell a silent responder from a busy caller."""
        interval = self.settings.keepalive_interval
        woke = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            late, woke = now - woke > 2 * interval, now
            if late:
                continue
            limit = now - _MISSED_KEEPALIVES * interval
            for call in self._calls.values():
                if call.instance and call.last_seen < limit:
                    call.fail(
                        Unavailable(
                            f"instance {call.instance} stopped responding "
                            f"(no keep-alive for {_MISSED_KEEPALIVES * interval:g}s)",
                            details={"instance_id": call.instance},
                        )
                    )

    # Serving ---------------------------------------------------------------------------------
    @property
    def services(self) -> list[Any]:
        """The `Service`s this connection runs now (for load reports)."""
        return list(self._services)

    @property
    def served(self) -> int:
        """Requests this connection's services took since it connected."""
        return self._retired_served + sum(s.served for s in self._services)

    def remove_service(self, service: Any) -> None:
        """Called by a `Service` that stopped: keep its count, forget it."""
        if service in self._services:
            self._services.remove(service)
            self._retired_served += service.served

    @property
    def calls_in_flight(self) -> int:
        """Calls this connection made that have not ended yet."""
        return len(self._calls)

    async def serve(
        self, subject: str, handler: Handler, *, queue: str, max_concurrency: int | None = None
    ) -> Any:
        """Serve `subject` in queue group `queue`; returns the running `Service`."""
        from agentmesh.broker.service import Control, Service

        if self._control is None:
            self._control = Control(self)
            await self._control.start()
        service = Service(
            self,
            subject,
            handler,
            queue=queue,
            max_concurrency=max_concurrency or self.settings.max_concurrency,
            max_queued=self.settings.max_queued,
        )
        await service.start()
        self._services.append(service)
        return service
