"""Following a config: a polled file, the shared config in JetStream KV, no repeats."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentmesh.broker.bus import Bus
from agentmesh.broker.settings import Settings
from agentmesh.broker.watch import FileSource, Follower, SharedSource


class Seen:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.changed = asyncio.Event()

    async def apply(self, text: str) -> None:
        self.texts.append(text)
        self.changed.set()

    async def next(self) -> str:
        async with asyncio.timeout(10):
            await self.changed.wait()
        self.changed.clear()
        return self.texts[-1]


async def test_a_followed_file_applies_each_new_content_once_and_reload_forces_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text("one")
    seen = Seen()
    follower = Follower(FileSource(path, interval=0.05), seen.apply, current="one")
    follower.start()
    try:
        path.write_text("two")
        assert await seen.next() == "two"
        tmp = tmp_path / "new"
        tmp.write_text("three")
        tmp.replace(path)  # an editor's atomic save
        assert await seen.next() == "three"
        follower.reload()  # SIGHUP: applied again although unchanged
        assert await seen.next() == "three"
    finally:
        await follower.stop()
    assert seen.texts == ["two", "three", "three"]


async def test_the_shared_config_in_jetstream_kv_is_followed_per_prefix(settings: Settings) -> None:
    async with await Bus.connect(settings) as bus:
        shared = await SharedSource.open(bus.nc, settings.prefix, create=True)
        await shared.put("first")
        assert await shared.read() == "first"
        other = await SharedSource.open(bus.nc, settings.prefix + "other")
        assert await other.read() is None  # another mesh's key

        seen = Seen()
        follower = Follower(shared, seen.apply, current="first")
        follower.start()
        try:
            await shared.put("second")
            assert await seen.next() == "second"
        finally:
            await follower.stop()
    assert seen.texts == ["second"]  # the initial value was the current one: not applied again
