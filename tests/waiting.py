"""`until`: the suite's one poll loop, for state that has no event to await.

Most waits in the tests are on something that happens: a frame, a reply, a presence event, a
task's end. Some state only changes where no one tells us: a record in Redis, JetStream's
consumer counters, another process's start-up, a count that arrives with the next heartbeat.
Those are polled, here, within a deadline, so a test reads "wait until X" and fails saying what
it was waiting for. Don't use it to pace a client or to prove an absence: that is a plain sleep.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

_NOTHING = object()  # no value seen yet: the first check was still running at the deadline


async def until(
    check: Callable[[], Awaitable[T] | T], *, timeout: float, what: str, every: float = 0.02
) -> T:
    """Poll `check` until it returns a truthy value; return it.

    `check` may be a plain function or return an awaitable (an `async def`, or a lambda around
    an async call); it is called at once, then `every` seconds after each falsy answer. An
    exception it raises ends the wait. After `timeout` seconds (a check still running then is
    cancelled) raise AssertionError naming `what` and the last value seen. For state with no
    event to await (Redis, JetStream counters, another process's start-up).
    """
    last: object = _NOTHING
    try:
        async with asyncio.timeout(timeout) as deadline:
            while True:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                if value:
                    return cast(T, value)
                last = value
                await asyncio.sleep(every)
    except TimeoutError:
        if not deadline.expired():
            raise  # the check's own timeout, not ours
        seen = "none yet" if last is _NOTHING else repr(last)
        raise AssertionError(f"not within {timeout:g} s: {what} (last seen: {seen})") from None
