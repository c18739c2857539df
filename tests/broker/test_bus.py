"""The bus itself: calls cancelled at every moment leave nothing running and no slot taken;
a call nobody serves fails at once with `NoResponders`."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentmesh.broker.bus import Bus
from agentmesh.broker.servers import NatsServer
from agentmesh.broker.settings import Settings
from agentmesh.broker.types import Request
from agentmesh.schemas.errors import ErrorCode, NoResponders, Unavailable
from tests.waiting import until


async def test_calls_cancelled_at_any_moment_leave_no_handler_running_and_no_slot_taken(
    settings: Settings,
) -> None:
    subject = f"{settings.prefix}.agent.cancelme"
    running = 0
    async with await Bus.connect(settings) as server, await Bus.connect(settings) as caller:

        async def handler(request: Request) -> bytes:
            nonlocal running
            if request.data == b"ping":
                return b"pong"
            running += 1
            try:
                await asyncio.Event().wait()
            finally:
                running -= 1
            return b""

        await server.serve(subject, handler, queue=subject, max_concurrency=4)
        # Cancel after 0, 1, 2, ... loop turns: before the request is sent, while it is in
        # flight (the cancel may overtake it), and while the handler runs.
        for i in range(120):
            call = asyncio.create_task(caller.request(subject, b"work", timeout=10))
            for _ in range(i % 6):
                await asyncio.sleep(0)
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
        async with asyncio.timeout(5):
            await until(  # the remote side settles
                lambda: not running and not server._control.inflight,
                timeout=5,
                what="no handler running and no call in flight",
            )
            # Only 4 slots: one leaked slot per lost cancel would block this call.
            assert (await caller.request(subject, b"ping")).data == b"pong"


async def test_a_call_nobody_serves_raises_no_responders_at_once_for_every_kind_of_call(
    settings: Settings,
) -> None:
    subject = f"{settings.prefix}.agent.nobody"
    async with await Bus.connect(settings) as caller:
        # The deadline is far away: the error comes from NATS's "no responders", not a timeout.
        async with asyncio.timeout(5):
            with pytest.raises(NoResponders) as err:
                await caller.request(subject, b"x", timeout=60)
            assert err.value.code is ErrorCode.UNAVAILABLE
            assert err.value.details == {"subject": subject}
            with pytest.raises(NoResponders):
                await caller.deliver(subject, b"x", timeout=60)
            with pytest.raises(NoResponders):
                async for _ in caller.stream(subject, b"x", timeout=60):
                    pass


async def test_a_request_nobody_took_just_after_a_reconnect_is_sent_again_until_served(
    settings: Settings, own_nats: NatsServer
) -> None:
    own = settings.with_(nats_url=own_nats.url, reconnect_grace=30.0)
    subject = f"{own.prefix}.agent.late"
    async with await Bus.connect(own) as caller:
        reconnected = asyncio.Event()
        mark_settling = caller._reconnected

        def on_reconnected() -> None:
            mark_settling()
            reconnected.set()

        caller._reconnected = on_reconnected  # type: ignore[method-assign]
        await asyncio.to_thread(own_nats.stop)
        await asyncio.to_thread(own_nats.start)
        async with asyncio.timeout(15):
            await reconnected.wait()
        assert caller.settling
        call = asyncio.create_task(caller.request(subject, b"hi", timeout=10))
        await asyncio.sleep(0)  # let the call publish its request
        await caller.nc.flush()  # the server has answered it: nobody serves `subject` yet
        async with await Bus.connect(own) as server:

            async def handler(request: Request) -> bytes:
                return b"late but " + request.data

            await server.serve(subject, handler, queue=subject)
            await server.nc.flush()
            async with asyncio.timeout(10):
                assert (await call).data == b"late but hi"


async def test_a_call_nobody_took_while_nats_is_down_is_unavailable_not_a_timeout(
    settings: Settings, own_nats: NatsServer
) -> None:
    own = settings.with_(nats_url=own_nats.url)
    async with await Bus.connect(own) as caller:
        await asyncio.to_thread(own_nats.stop)
        with pytest.raises(Unavailable) as err:
            await caller.request(f"{own.prefix}.agent.anyone", b"hi", timeout=0.5)
        assert not isinstance(err.value, NoResponders)
        await asyncio.to_thread(own_nats.start)


async def test_an_unacknowledged_call_is_cancelled_there_and_served_by_another_member(
    settings: Settings,
) -> None:
    """A queue-group member that never acks (frozen, from the caller's side) gets the request,
    then a cancel for exactly that attempt; the call itself is answered by a live member."""
    subject = f"{settings.prefix}.agent.frozen"
    settings = settings.with_(ack_timeout=0.2)
    async with await Bus.connect(settings) as server, await Bus.connect(settings) as caller:
        await server.serve(subject, _echo, queue=subject)
        silent = await Bus.connect(settings)
        received: asyncio.Queue[str] = asyncio.Queue()
        cancelled: asyncio.Queue[str] = asyncio.Queue()
        try:

            async def take(msg) -> None:  # type: ignore[no-untyped-def]
                received.put_nowait(msg.reply)  # and never answer

            async def on_cancel(msg) -> None:  # type: ignore[no-untyped-def]
                cancelled.put_nowait((msg.headers or {}).get("Mesh-Call", ""))

            await silent.nc.subscribe(subject, queue=subject, cb=take)
            await silent.nc.subscribe(silent.subjects.control_all(), cb=on_cancel)
            await silent.nc.flush()
            async with asyncio.timeout(10):
                # NATS picks either member; call until the silent one has had one.
                while received.empty():
                    assert (await caller.request(subject, b"hi")).data == b"hi"
                attempt = received.get_nowait()
                assert await cancelled.get() == attempt
        finally:
            await silent.close()


async def test_calls_waiting_for_a_slot_are_acknowledged_and_not_sent_again(
    settings: Settings,
) -> None:
    """Beyond `max_concurrency`, calls wait at the instance acknowledged (and kept alive), so a
    busy instance is not taken for a frozen one: each call is published once."""
    subject = f"{settings.prefix}.agent.busy"
    settings = settings.with_(ack_timeout=0.2)
    release = asyncio.Event()

    async def slow(request: Request) -> bytes:
        await release.wait()
        return request.data

    async with await Bus.connect(settings) as server, await Bus.connect(settings) as caller:
        published = 0

        async def tap(msg) -> None:  # type: ignore[no-untyped-def]
            nonlocal published
            published += 1

        await caller.nc.subscribe(subject, cb=tap)  # sees every publish to the subject
        await server.serve(subject, slow, queue=subject, max_concurrency=1)
        calls = [asyncio.create_task(caller.request(subject, b"%d" % i)) for i in range(4)]
        async with asyncio.timeout(10):
            # Proving an absence takes a window: three ack timeouts with three calls queued
            # behind the first, in which an unacknowledged call would have been sent again.
            await asyncio.sleep(settings.ack_timeout * 3)
            release.set()
            assert [f.data for f in await asyncio.gather(*calls)] == [b"0", b"1", b"2", b"3"]
        assert published == 4


async def _echo(request: Request) -> bytes:
    return request.data


async def test_a_call_outlives_a_pause_of_its_own_process_longer_than_the_keepalive_limit(
    settings: Settings,
) -> None:
    """A whole-process pause (a long GC, a starved CPU) holds up the responder's keep-alives
    and the caller's watch alike: the call must not be failed as if its responder had died."""
    subject = f"{settings.prefix}.agent.paused"
    started = asyncio.Event()
    async with await Bus.connect(settings) as server, await Bus.connect(settings) as caller:

        async def handler(request: Request) -> bytes:
            started.set()
            await asyncio.sleep(5 * settings.keepalive_interval)  # the work, keep-alives sent
            return b"done"

        await server.serve(subject, handler, queue="q")
        call = asyncio.create_task(caller.request(subject, b"work", timeout=10))
        async with asyncio.timeout(5):
            await started.wait()
        acked = lambda: [c for c in caller._calls.values() if c.instance]  # noqa: E731
        await until(acked, timeout=5, what="the call acknowledged (so its keep-alives are watched)")
        time.sleep(5 * settings.keepalive_interval)  # noqa: ASYNC251 - the pause itself
        reply = await call
    assert reply.data == b"done"
