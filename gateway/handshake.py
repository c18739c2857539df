"""A time limit on request headers, which uvicorn lacks: its HTTP protocol with one timer more.

uvicorn only bounds the idle time after a response (`timeout_keep_alive`), so a client that sent
nothing, its headers a byte at a time (slowloris) or half a WebSocket upgrade held its
connection, and a `max_connections` place, forever (issue 10, item 7).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from agentmesh.gateway.state import GatewayConfig

logger = logging.getLogger(__name__)

_REQUEST_TIMEOUT = b"Request Timeout"


class HandshakeTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline, `handshake_timeout`, on each request's headers.

    The timer takes turns with uvicorn's keep-alive one: armed when the connection is accepted
    and when bytes end a keep-alive wait (uvicorn cancels its timer at any byte, a lone CRLF
    too), disarmed once a request's headers are complete, which is also when a WebSocket upgrade
    leaves this protocol. A request sent while the previous response is still going out
    (pipelining) is covered by the keep-alive timer uvicorn arms when that response ends. On
    expiry a connection that began a request is answered 408; one that did not is just closed.
    """

    gateway: GatewayConfig  # the replica's, changed in place by a reload: read at each arming

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_handshake_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_handshake_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.timeout_keep_alive_task is not None and self._handshake_timer is None:
            self._arm_handshake_timer()  # before parsing: complete headers in `data` disarm it
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True

    def on_headers_complete(self) -> None:
        self._request_begun = False
        self._disarm_handshake_timer()
        super().on_headers_complete()

    def _arm_handshake_timer(self) -> None:
        self._handshake_timer = self.loop.call_later(
            self.gateway.handshake_timeout, self._handshake_timed_out
        )

    def _disarm_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if self.transport.is_closing():
            return
        logger.debug("%s: no complete request headers in time: closing", self.client)
        if self._request_begun:
            head = [STATUS_LINE[408]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-type: text/plain; charset=utf-8\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(_REQUEST_TIMEOUT))
            self.transport.write(b"".join(head) + _REQUEST_TIMEOUT)
        self.transport.close()


def handshake_protocol(config: GatewayConfig) -> type[HandshakeTimeoutProtocol]:
    """The HTTP protocol class for one replica (uvicorn builds one per connection)."""
    return type("HandshakeTimeoutProtocol", (HandshakeTimeoutProtocol,), {"gateway": config})
