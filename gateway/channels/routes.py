"""`POST /channels/{kind}/{name}/events`: a chat platform's event requests, on every replica.

The platform's token and signature are the credential (no API key). The channel module checks
and reads the request (a URL check is answered at once); a message becomes durable work
(pipeline.py) and the platform gets its 200 once that is stored — well within the platforms'
three seconds. A bad token or signature is a 401 that reaches no agent; an unknown channel a
404; JetStream unreachable a 503, which the platform retries. Not in the OpenAPI document: each
platform defines its own body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from agentmesh.gateway.channels import pipeline
from agentmesh.gateway.channels.base import Answer
from agentmesh.gateway.channels.connections import LongConnections
from agentmesh.gateway.channels.registry import ChannelSet
from agentmesh.gateway.channels.replies import Replies
from agentmesh.gateway.state import GatewayState, state_of
from agentmesh.schemas.errors import NotFound

router = APIRouter()


@router.post("/channels/{kind}/{name}/events", include_in_schema=False)
async def events(request: Request, kind: str, name: str) -> JSONResponse:
    channels: ChannelSet = request.app.state.channels
    found = channels.get(kind, name)
    if found is None:
        raise NotFound(
            f"no {kind} channel named {name!r} (the mesh file's `channels:`)",
            details={"kind": kind[:40], "name": name[:80]},
        )
    config, channel = found
    headers = {k.lower(): v for k, v in request.headers.items()}
    got = await channel.receive(await request.body(), headers)
    if isinstance(got, Answer):
        return JSONResponse(got.body, status_code=got.status)
    replies: Replies = request.app.state.channel_replies
    return JSONResponse(await pipeline.accept(state_of(request), replies, config, got))


@contextlib.asynccontextmanager
async def serving(app: object, state: GatewayState) -> AsyncIterator[None]:
    """The replica's channels for the block's duration (the gateway's lifespan): their objects
    (`app.state.channels`), reply delivery (`app.state.channel_replies`) and the long
    connections this replica holds."""
    channels = ChannelSet(state.config, state.redis, state.settings.prefix)
    replies = Replies(state, channels)
    app.state.channels, app.state.channel_replies = channels, replies  # type: ignore[attr-defined]
    try:
        async with running(replies.run()), running(LongConnections(state, channels, replies).run()):
            yield
    finally:
        await channels.aclose()


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """`work` in the background for the block's duration; cancelled at its end."""
    task = asyncio.get_running_loop().create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
