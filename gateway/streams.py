"""Relaying an async source to a long-lived response (SSE): its items until it ends or the
replica drains, with a `None` after each quiet `ping` seconds so the response can send a
keep-alive comment. Each step of the source runs as a task of its own, so a quiet wait or a
drain never cancels the source in the middle of an item; the source is closed at the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from agentmesh.schemas.errors import MeshError

PING = 15.0  # seconds of quiet before a keep-alive
T = TypeVar("T")


async def relay(
    source: AsyncIterator[T], stop: asyncio.Event | None = None, *, ping: float | None = PING
) -> AsyncIterator[T | None]:
    """`source`'s items (raising what it raised), None after each `ping` seconds of quiet
    (never, with `ping=None`); ends when `source` ends or `stop` is set."""
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    step: asyncio.Future[Any] | None = None
    end = object()
    try:
        while True:
            step = asyncio.ensure_future(anext(source, end))
            while not step.done():
                waiting = {step} if stopping is None else {step, stopping}
                await asyncio.wait(waiting, timeout=ping, return_when=asyncio.FIRST_COMPLETED)
                if stopping is not None and stopping.done():
                    return
                if not step.done():
                    yield None
            got = step.result()
            if got is end:
                return
            yield got
    finally:
        if stopping is not None:
            stopping.cancel()
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, MeshError):
                await step
        with contextlib.suppress(MeshError, RuntimeError):
            await source.aclose()  # type: ignore[attr-defined]
