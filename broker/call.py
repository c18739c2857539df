"""One outstanding call of the bus: where its frames wait, and what it needs to be sent again
or cancelled (broker/bus.py drives it)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from opentelemetry import trace

from agentmesh.broker.types import Frame
from agentmesh.schemas.errors import MeshError, MeshTimeout


class Call:
    """One outstanding call: frames arrive through the muxed inbox and wait here.

    A deque plus one waiter future, not an `asyncio.Queue`: most calls see one frame, and a
    Queue (with its Event and two deques) per call is measurable on the hot path.
    """

    __slots__ = (
        "subject",
        "reply",
        "_items",
        "_waiter",
        "instance",
        "last_seen",
        "dead",
        "ended",
        "timer",
        "span",
        "request",
        "retries",
        "resend",
        "ack_timer",
        "reroutes",
        "on_ack",
    )

    def __init__(self, subject: str, reply: str) -> None:
        self.subject = subject
        self.reply = reply
        self._items: deque[Frame | MeshError] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.instance: str | None = None
        self.last_seen = time.monotonic()
        self.dead = False
        self.ended = False  # the responder sent a terminal frame (or nobody was there)
        self.timer: asyncio.TimerHandle | None = None
        self.span: trace.Span | None = None
        self.request: tuple[bytes, dict[str, str] | None] = (b"", None)  # to send it again
        self.retries = 0  # re-sends after "no responders" while the bus was settling
        self.resend: asyncio.Task[None] | None = None
        self.ack_timer: asyncio.TimerHandle | None = None  # armed until the first frame
        self.reroutes = 0  # re-sends after an instance took no notice within the ack timeout
        self.on_ack: Callable[[str], None] | None = None  # told the acknowledging instance

    def deliver(self, item: Frame | MeshError) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Frame | MeshError:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def time_out(self, timeout: float) -> None:
        self.fail(
            MeshTimeout(
                f"no reply from {self.subject} within {timeout:g}s", details={"timeout": timeout}
            )
        )

    def fail(self, error: MeshError) -> None:
        if not self.dead:
            self.dead = True
            self.deliver(error)
