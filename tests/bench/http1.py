"""A minimal keep-alive HTTP/1.1 client for load generation: one prepared request, sent again
and again over one connection, one at a time.

httpx spends a few hundred microseconds of CPU per request; on a 2-core machine that would
take the cores the gateway is being measured on. This client only frames bytes and reads
`Content-Length` bodies, so nearly all the CPU of a request is the server's.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


class HttpError(RuntimeError):
    pass


def post(
    path: str, port: int, body: dict[str, Any], *, headers: dict[str, str] | None = None
) -> bytes:
    """A prepared `POST path` with a JSON body (and extra `headers`), keep-alive."""
    data = json.dumps(body, separators=(",", ":")).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{extra}"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


class Connection(asyncio.Protocol):
    """One HTTP/1.1 connection; `request()` sends one request and returns (status, body)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._transport: asyncio.Transport | None = None
        self._lost: Exception | None = None

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = HttpError(f"connection closed: {exc}")
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self._lost)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0 or self._waiter is None or self._waiter.done():
            return
        head = bytes(self._buffer[:head_end]).lower()
        start = head.find(b"\r\ncontent-length:")
        if start < 0:
            self._waiter.set_exception(HttpError("response without Content-Length"))
            return
        line_end = head.find(b"\r\n", start + 2)
        length = int(head[start + 17 : line_end if line_end >= 0 else None])
        end = head_end + 4 + length
        if len(self._buffer) < end:
            return
        status = int(head[9:12])
        body = bytes(self._buffer[head_end + 4 : end])
        del self._buffer[:end]
        self._waiter.set_result((status, body))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self._lost is not None:
            raise self._lost
        assert self._transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(raw)
        return await self._waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
