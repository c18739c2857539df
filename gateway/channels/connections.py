"""Long-connection channels (`mode: long_connection`, Feishu and Lark): for a deployment without a
public URL, one gateway replica of the mesh holds each app's WebSocket and hands its events to
the same pipeline as the webhook's.

Which replica: the one holding the app's claim in Redis (`<p>:channels:<kind>:<name>:holder`,
its instance id, for `HOLD` seconds, renewed every third of it). A replica that stops releases
it; one that dies loses it within `HOLD`, and another replica connects. An app whose connection
cannot start (bad credentials, the platform unreachable) is tried again after `RETRY`, by
whichever replica claims it then. A config change applies live: the connection is made again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from redis.exceptions import RedisError

from agentmesh.gateway.channels import pipeline
from agentmesh.gateway.channels.base import Inbound
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.gateway.channels.feishu import FeishuChannel
from agentmesh.gateway.channels.feishu_ws import FeishuLongConnection
from agentmesh.gateway.channels.registry import ChannelSet
from agentmesh.gateway.channels.replies import Replies
from agentmesh.gateway.state import GatewayState
from agentmesh.schemas.errors import MeshError

logger = logging.getLogger(__name__)

HOLD = 15.0  # seconds a replica's claim on an app's connection lasts without renewal
RETRY = 30.0  # seconds before a connection that failed to start is tried again
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

Key = tuple[str, str]  # (kind, name)


class LongConnections:
    """The long connections this replica holds, kept in line with the config and the claims."""

    def __init__(self, state: GatewayState, channels: ChannelSet, replies: Replies) -> None:
        self.state = state
        self.channels = channels
        self.replies = replies
        self.me = uuid.uuid4().hex
        self._held: dict[Key, tuple[ChannelConfig, FeishuLongConnection]] = {}
        self._not_before: dict[Key, float] = {}
        self._claimed: set[Key] = set()  # claims this replica holds (renewed by _renew)

    def _claim_key(self, key: Key) -> str:
        return f"{self.state.settings.prefix}:channels:{key[0]}:{key[1]}:holder"

    async def run(self) -> None:
        """Keep the connections until cancelled; then close them and release the claims."""
        renewer = asyncio.get_running_loop().create_task(self._renew())
        try:
            while True:
                try:
                    await self._round()
                except (RedisError, OSError) as exc:
                    logger.warning("long connections: Redis unreachable (%r); holding on", exc)
                await asyncio.sleep(HOLD / 3)
        finally:
            renewer.cancel()
            await asyncio.shield(self._close_all())

    async def _renew(self) -> None:
        """Renew every claim this replica has (held or opening), whatever the rounds are doing
        (opening or closing a connection takes seconds)."""
        while True:
            await asyncio.sleep(HOLD / 3)
            for key in list(self._claimed):
                with contextlib.suppress(RedisError, OSError):
                    if not await self._claim(key):
                        self._claimed.discard(key)  # lost: the next round drops it

    async def _round(self) -> None:
        wanted = {
            (c.kind, c.name): c for c in self.state.config.channels if c.mode == "long_connection"
        }
        for key, (config, connection) in list(self._held.items()):
            if wanted.get(key) != config:  # removed or changed: closed (a changed one reopens)
                await self._drop(key, connection)
        for key, config in wanted.items():
            if not await self._claim(key):
                if key in self._held:  # lost it (a pause longer than HOLD): another holds it
                    await self._drop(key, self._held[key][1], release=False)
                continue
            if key not in self._held and time.monotonic() >= self._not_before.get(key, 0.0):
                await self._open(key, config)

    async def _claim(self, key: Key) -> bool:
        redis, name, ms = self.state.redis, self._claim_key(key), int(HOLD * 1000)
        ours = bool(
            await redis.set(name, self.me, nx=True, px=ms)
            or await redis.eval(_RENEW, 1, name, self.me, ms)
        )
        if ours:
            self._claimed.add(key)
        return ours

    async def _open(self, key: Key, config: ChannelConfig) -> None:
        connection = FeishuLongConnection(config, self._handler(key))
        try:
            await connection.start()  # seconds (the SDK's import, the platform): _renew holds
        except MeshError as exc:
            logger.warning(
                "channel %s/%s: the long connection did not start (%s); again in %.0f s",
                *key,
                exc.message,
                RETRY,
            )
            self._not_before[key] = time.monotonic() + RETRY
            await self._release(key)
            return
        logger.info("channel %s/%s: holding the long connection", *key)
        self._held[key] = (config, connection)

    def _handler(self, key: Key) -> Any:
        async def on_event(event: dict[str, Any]) -> None:
            """One event from the platform, into the pipeline (raising: the SDK answers 500)."""
            found = self.channels.get(*key)
            if found is None:
                return
            config, channel = found
            assert isinstance(channel, FeishuChannel)  # the only platform with this mode
            got = await channel.read_event(event)
            if isinstance(got, Inbound):
                # Shielded: if the SDK stops waiting (its ack timeout), the task and its reply
                # job are still stored together.
                await asyncio.shield(pipeline.accept(self.state, self.replies, config, got))

        return on_event

    async def _drop(
        self, key: Key, connection: FeishuLongConnection, *, release: bool = True
    ) -> None:
        self._held.pop(key, None)
        await connection.stop()
        if release:
            await self._release(key)
        else:
            self._claimed.discard(key)

    async def _release(self, key: Key) -> None:
        self._claimed.discard(key)
        with contextlib.suppress(RedisError, OSError):
            await self.state.redis.eval(_RELEASE, 1, self._claim_key(key), self.me)

    async def _close_all(self) -> None:
        for key, (_, connection) in list(self._held.items()):
            await self._drop(key, connection)
