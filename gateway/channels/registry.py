"""The replica's channel objects, made from the live config (`GatewayConfig.channels`): an app
whose config changed (a reload) gets a new object; a removed one is closed."""

from __future__ import annotations

import asyncio
import contextlib

import redis.asyncio as aioredis

from agentmesh.gateway.channels.base import Channel
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.gateway.state import GatewayConfig


def make_channel(config: ChannelConfig, redis: aioredis.Redis, prefix: str) -> Channel:
    """The platform module's channel for `config` (Lark speaks Feishu's protocol)."""
    if config.platform == "feishu":
        from agentmesh.gateway.channels.feishu import FeishuChannel

        return FeishuChannel(config, redis, prefix)
    from agentmesh.gateway.channels.slack import SlackChannel

    return SlackChannel(config, redis, prefix)


class ChannelSet:
    """`get(kind, name)`: the configured app and its channel object, as the config is now."""

    def __init__(self, config: GatewayConfig, redis: aioredis.Redis, prefix: str) -> None:
        self.config = config
        self.redis = redis
        self.prefix = prefix
        self._made: dict[tuple[str, str], tuple[ChannelConfig, Channel]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def configs(self) -> list[ChannelConfig]:
        return list(self.config.channels)

    def get(self, kind: str, name: str) -> tuple[ChannelConfig, Channel] | None:
        wanted = next((c for c in self.config.channels if (c.kind, c.name) == (kind, name)), None)
        made = self._made.get((kind, name))
        if made is not None and made[0] == wanted:
            return made
        if made is not None:  # changed or removed: a new one (if any) from now on
            del self._made[(kind, name)]
            self._close_later(made[1])
        if wanted is None:
            return None
        made = (wanted, make_channel(wanted, self.redis, self.prefix))
        self._made[(kind, name)] = made
        return made

    def _close_later(self, channel: Channel) -> None:
        task = asyncio.get_running_loop().create_task(channel.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        for _, channel in self._made.values():
            with contextlib.suppress(Exception):
                await channel.aclose()
        self._made.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
