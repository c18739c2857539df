"""Feishu's long-connection event mode, for a deployment without a public URL: one process holds
the app's WebSocket (lark-oapi's `ws.Client`) and hands every event, decoded as the webhook's,
to a callback on the caller's asyncio loop (the pipeline, after `FeishuChannel.read_event`).

The SDK's client is a program of its own: `start()` blocks forever on an event loop, the
module-level `lark_oapi.ws.client.loop` taken when the SDK is first imported, on which it
schedules all its work; it has no stop. So each connection runs on a thread of its own with a
loop of its own, that module global stands for "the calling thread's loop" (so two connections
in one process do not share one), and `stop()` cancels everything on that loop, then closes the
socket with the SDK's `_disconnect` (what its own lark_oapi.channel does) and joins the thread.
An event is acknowledged (the SDK answers the frame 200) once the callback returned; if it
raised or took longer than `ack_timeout`, the SDK answers 500, its answer for a failed event
(whether Feishu delivers it again then is not known here: the fake platform does not).

Importing lark_oapi takes ~3.5 s (it loads its whole API), so it happens on that thread, on the
first start, never on the gateway's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.schemas.errors import Unauthorized, Unavailable

logger = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], Awaitable[object]]

ACK_TIMEOUT = 10.0  # seconds the callback has before the event is answered 500
STOP_TIMEOUT = 15.0  # seconds stop() waits for the thread (more than an event's ACK_TIMEOUT)


class _ThreadLoop:
    """Stands in for lark_oapi.ws.client's module-level `loop`: the calling thread's loop."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio.get_event_loop(), name)


@functools.cache
def _sdk() -> tuple[type, type, type]:
    """The SDK's ws client and event handler, subclassed to report to a connection, and its
    ClientException (credentials or permission refused: not worth retrying)."""
    import lark_oapi.ws.client as ws_client
    from lark_oapi.event.dispatcher_handler import EventDispatcherHandler
    from lark_oapi.ws.exception import ClientException

    ws_client.loop = _ThreadLoop()

    class Client(ws_client.Client):  # type: ignore[misc, name-defined]
        def __init__(self, connection: FeishuLongConnection, **kw: Any) -> None:
            super().__init__(**kw)
            self._mesh = connection

        async def _connect(self) -> None:  # also every reconnection
            await super()._connect()
            self._mesh._connected()

    class Handler(EventDispatcherHandler):  # type: ignore[misc]
        def __init__(self, connection: FeishuLongConnection) -> None:
            super().__init__()
            self._mesh = connection

        def _do_without_validation(self, payload: bytes) -> None:  # what the ws client calls
            self._mesh._deliver(payload)

    return Client, Handler, ClientException


class FeishuLongConnection:
    """One app's long connection: `await start()`, events go to `on_event`, `await stop()`
    (once: a stopped or failed one is not started again; make another)."""

    def __init__(
        self, config: ChannelConfig, on_event: EventCallback, *, ack_timeout: float = ACK_TIMEOUT
    ) -> None:
        self.config = config
        self.on_event = on_event
        self.ack_timeout = ack_timeout
        self.connected = False  # now (False while the SDK reconnects)
        self._thread: threading.Thread | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the thread's
        self._stopping = threading.Event()
        self._up = asyncio.Event()
        self._finished = asyncio.Event()
        self._failure: BaseException | None = None
        self._refused = False  # the failure is the SDK's ClientException: credentials, limits
        self._winding_down = False  # the thread's: its own clean-up is not cancelled

    async def start(self, *, timeout: float = 30.0) -> None:
        """Connect, on a thread of its own; return once connected (the SDK reconnects after).

        Raises:
            Unauthorized: the platform refused the app's credentials (or the connection).
            Unavailable: not connected within `timeout` (then it is stopped).
        """
        if self._thread is not None:
            raise RuntimeError("this long connection was started already")
        self._main = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, name=f"feishu-ws-{self.config.name}", daemon=True
        )
        self._thread.start()
        waits = [asyncio.ensure_future(e.wait()) for e in (self._up, self._finished)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if self._up.is_set():
            return
        failure = self._failure
        await self.stop()
        where = f"feishu long connection {self.config.name}"
        if failure is None:
            raise Unavailable(f"{where}: not connected within {timeout:g} s")
        if self._refused:
            raise Unauthorized(f"{where}: refused: {failure}") from failure
        raise Unavailable(f"{where}: {failure!r}") from failure

    async def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """Close the connection and end its thread (idempotent)."""
        self._stopping.set()
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._cancel_all)
            except RuntimeError:  # its loop is closed: the thread is ending by itself
                pass
        if self._thread is None:
            return
        try:
            await asyncio.wait_for(self._finished.wait(), timeout)
        except TimeoutError:
            # Only a blocking call of the SDK's (its endpoint request has no timeout) holds it.
            logger.warning("feishu long connection %s: its thread did not end", self.config.name)
        else:
            self._thread.join(1.0)  # it said so on its last line: a moment
        self.connected = False

    async def __aenter__(self) -> FeishuLongConnection:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # On the connection's thread ----------------------------------------------------------------
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        client, sdk = None, None
        try:
            sdk = _sdk()
            client_class, handler_class, _ = sdk
            if self._stopping.is_set():
                return
            client = client_class(
                self,
                app_id=self.config.app_id,
                app_secret=self.config.app_secret,
                event_handler=handler_class(self),
                domain=self.config.api_base,
                log_level=_warning_level(),
                auto_reconnect=True,
            )
            client.on_reconnecting = self._disconnected
            if not self._stopping.is_set():
                client.start()  # returns only by an exception: CancelledError is stop()'s
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # the SDK's failure, reported by start()
            self._failure = exc
            self._refused = sdk is not None and isinstance(exc, sdk[2])
            logger.warning("feishu long connection %s: %r", self.config.name, exc)
        finally:
            self._winding_down = True
            try:
                _wind_down(loop, client)
            finally:
                loop.close()
                self.connected = False
                self._tell(self._finished.set)

    def _cancel_all(self) -> None:
        """stop()'s, on the thread's loop: ends `client.start()` with CancelledError."""
        if not self._winding_down:
            for task in asyncio.all_tasks():
                task.cancel()

    def _connected(self) -> None:
        self.connected = True
        self._tell(self._up.set)

    def _disconnected(self) -> None:
        self.connected = False

    def _deliver(self, payload: bytes) -> None:
        """One event frame: hand it to the callback on the main loop and wait (the SDK answers
        the frame when this returns: 200, or 500 if it raised)."""
        assert self._main is not None
        event = json.loads(payload)
        future = asyncio.run_coroutine_threadsafe(self.on_event(event), self._main)
        try:
            future.result(timeout=self.ack_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            logger.warning("feishu long connection %s: an event took too long", self.config.name)
            raise
        except Exception:
            logger.exception("feishu long connection %s: an event failed", self.config.name)
            raise

    def _tell(self, callback: Callable[[], object]) -> None:
        if self._main is not None:
            try:
                self._main.call_soon_threadsafe(callback)
            except RuntimeError:  # the main loop is closed (the process is ending)
                pass


def _wind_down(loop: asyncio.AbstractEventLoop, client: Any) -> None:
    """End what the SDK left on the loop, then close its socket."""
    for _ in range(5):  # a task cancelled inside its `try` may sleep in its `finally`: again
        tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
        if not tasks:
            break
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
    if client is not None:
        try:
            loop.run_until_complete(asyncio.wait_for(client._disconnect(), 2.0))
        except Exception as exc:  # closing a socket that may be broken already
            logger.debug("feishu long connection: closing: %r", exc)
    loop.run_until_complete(loop.shutdown_asyncgens())


def _warning_level() -> Any:
    from lark_oapi.core.enum import LogLevel

    return LogLevel.WARNING
