"""Work on a durable JetStream pull consumer's messages, several at once, until cancelled: the
loop A2A push delivery and chat-channel replies share (every gateway replica runs one per
consumer; JetStream gives each message to one of them).

A message whose handler raised goes back to the stream (nak: after `retry` if JetStream was
unreachable, after `after_error` for any other error); one whose handler was cancelled (the
replica stops) goes back at once, to another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import api

from agentmesh.broker.durable import DurableState
from agentmesh.schemas.errors import Unavailable

logger = logging.getLogger(__name__)

Handle = Callable[[Msg], Awaitable[None]]


async def bind(durable: DurableState, stream: str, config: api.ConsumerConfig) -> None:
    """Create the durable consumer `config.durable_name` on `stream` (kept if it is there).

    Raises:
        Unavailable: JetStream cannot be reached.
    """
    with durable.calling(f"creating the consumer {config.durable_name}"):
        try:
            await durable.js.add_consumer(stream, config)
        except nats.js.errors.BadRequestError:
            await durable.js.consumer_info(stream, config.durable_name or "")  # another config


async def consume(
    durable: DurableState,
    stream: str,
    name: str,
    handle: Handle,
    *,
    concurrency: int,
    what: str,
    retry: float,
    after_error: float,
) -> None:
    """Hand each message of consumer `name` to `handle`, `concurrency` at a time, until
    cancelled. `what` names the work in logs.

    Raises:
        Unavailable, nats.errors.Error: JetStream went away (the caller binds again later).
    """
    with durable.calling(f"reading {name}"):
        sub = await durable.js.pull_subscribe_bind(consumer=name, stream=stream)
    working: set[asyncio.Task[None]] = set()
    try:
        while True:
            if len(working) >= concurrency:
                await asyncio.wait(working, return_when=asyncio.FIRST_COMPLETED)
            try:
                msgs = await sub.fetch(concurrency - len(working), timeout=5.0)
            except TimeoutError:  # nothing came (nats-py raises the builtin one)
                continue
            for msg in msgs:
                task = asyncio.create_task(_guarded(handle, msg, what, (retry, after_error)))
                working.add(task)
                task.add_done_callback(working.discard)
    finally:
        # No more messages first: those handed back (nak) then go to another replica.
        with contextlib.suppress(nats.errors.Error, OSError):
            await sub.unsubscribe()
        for task in working:
            task.cancel()
        await asyncio.gather(*working, return_exceptions=True)


async def _guarded(handle: Handle, msg: Msg, what: str, delays: tuple[float, float]) -> None:
    """`handle(msg)`, and the message back to the stream if that failed or was stopped."""
    retry, after_error = delays
    try:
        await handle(msg)
    except asyncio.CancelledError:
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.nak()  # the replica stops: another takes it now
        raise
    except Unavailable as exc:  # JetStream unreachable meanwhile: later
        logger.warning("%s: %s; looking again shortly", what, exc.message)
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.nak(delay=retry)
    except Exception:  # a top-level loop: one bad message never stops the others
        logger.exception("%s: a message failed", what)
        with contextlib.suppress(nats.errors.Error, OSError):
            await msg.nak(delay=after_error)
