"""Following a config document that changes: a file (polled, or re-read on SIGHUP) or the mesh's
shared config in a JetStream KV bucket (watched). Each new text goes to one `apply` callback.

What the text means is the caller's business (the CLI parses the mesh file and hands each process
its section); this module only notices changes, drops repeats of the text already applied, and
keeps following when a read or an apply fails.

JetStream KV: bucket `agentmesh_config`, one key per mesh prefix (`mesh` by default), the value
the file's text as written (`${VAR}` unexpanded: each process expands its own environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import nats.errors
import nats.js.errors

logger = logging.getLogger(__name__)

Apply = Callable[[str], Awaitable[None]]

POLL_INTERVAL = 1.0  # seconds between two reads of a followed file
BUCKET = "agentmesh_config"
HISTORY = 10  # revisions kept in the bucket, for `nats kv history`


class Source(Protocol):
    def describe(self) -> str: ...

    async def read(self) -> str | None: ...

    def changes(self) -> AsyncIterator[str]: ...


class FileSource:
    """A file read every `interval` seconds; a change of its content is a new version.

    Reading (and hashing) the whole file is cheap for a config file and, unlike mtime, sees every
    edit: in place, by rename (editors' atomic save), or twice within one mtime tick.
    """

    def __init__(self, path: str | Path, *, interval: float = POLL_INTERVAL) -> None:
        self.path = Path(path)
        self.interval = interval

    def describe(self) -> str:
        return str(self.path)

    async def read(self) -> str:
        """The file's text. Raises OSError if it cannot be read."""
        return await asyncio.to_thread(self.path.read_text)

    async def changes(self) -> AsyncIterator[str]:
        unreadable = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                text = await self.read()
            except OSError as exc:
                # An editor's save may remove the file for a moment: say it once, keep polling.
                if not unreadable:
                    logger.warning("cannot read %s (%s); keeping the running config", self, exc)
                unreadable = True
                continue
            unreadable = False
            yield text

    def __str__(self) -> str:
        return self.describe()


class SharedSource:
    """The mesh's shared config: key `<prefix>` of the JetStream KV bucket `agentmesh_config`."""

    def __init__(self, kv: Any, key: str) -> None:
        self.kv = kv
        self.key = key

    @classmethod
    async def open(cls, nc: Any, prefix: str, *, create: bool = False) -> SharedSource:
        """The shared config of mesh `prefix` on connection `nc`; `create` makes the bucket.

        Raises:
            LookupError: the bucket does not exist (nothing was ever applied) and not `create`.
        """
        js = nc.jetstream()
        try:
            kv = await js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            if not create:
                raise LookupError(
                    f"no shared config (JetStream KV bucket {BUCKET} does not exist): "
                    "write one with `agentmesh config apply -f mesh.yaml`"
                ) from None
            kv = await js.create_key_value(bucket=BUCKET, history=HISTORY)
        return cls(kv, prefix)

    def describe(self) -> str:
        return f"the shared config (KV {BUCKET}/{self.key})"

    async def read(self) -> str | None:
        """The current text, or None if none was written for this mesh."""
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            return None
        return None if entry.value is None else entry.value.decode()

    async def put(self, text: str) -> int:
        """Write a new version; returns its revision."""
        return await self.kv.put(self.key, text.encode())

    async def entry(self) -> tuple[str | None, int]:
        """The current text and its revision; (None, 0) if none was written (or it was deleted).

        With `put_if`, a read-modify-write that never loses a concurrent writer's change.
        """
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:  # KeyDeletedError too
            return None, 0
        text = None if entry.value is None else entry.value.decode()
        return text, entry.revision or 0

    async def put_if(self, text: str, revision: int) -> int | None:
        """Write `text` only if the key is still at `revision` (0: still absent or deleted);
        the new revision, or None if another write came first (read again and retry)."""
        try:
            if revision == 0:
                return await self.kv.create(self.key, text.encode())
            return await self.kv.update(self.key, text.encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None

    async def changes(self) -> AsyncIterator[str]:
        watcher = await self.kv.watch(self.key)
        try:
            async for entry in watcher:
                if entry is None:  # the end of the initial values
                    continue
                if entry.operation in ("DEL", "PURGE") or entry.value is None:
                    logger.warning("%s was deleted; keeping the running config", self.describe())
                    continue
                yield entry.value.decode()
        finally:
            with contextlib.suppress(nats.errors.Error):
                await watcher.stop()

    def __str__(self) -> str:
        return self.describe()


class Follower:
    """Calls `apply(text)` for every new version of `source` (and on `reload()`, e.g. SIGHUP).

    `apply` decides whether a version is valid and logs a refusal; a version equal to the last one
    seen is not applied twice (a file rewritten unchanged, the KV's initial value).
    """

    def __init__(self, source: Source, apply: Apply, *, current: str | None = None) -> None:
        self.source = source
        self._apply = apply
        self._last = _digest(current) if current is not None else None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one apply at a time, in the order versions were seen

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="config")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def reload(self) -> None:
        """Re-read the source now and apply it even if unchanged (for SIGHUP)."""
        asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        try:
            text = await self.source.read()
        except OSError as exc:
            logger.error(
                "reload: cannot read %s (%s); keeping the running config", self.source, exc
            )
            return
        if text is not None:
            logger.info("reloading %s", self.source.describe())
            await self._offer(text, force=True)

    async def _follow(self) -> None:
        while True:
            try:
                async for text in self.source.changes():
                    await self._offer(text)
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                # Watching the KV failed (NATS gone for long): start a new watch.
                logger.warning("following %s failed (%s); retrying", self.source, exc)
                await asyncio.sleep(POLL_INTERVAL)

    async def _offer(self, text: str, *, force: bool = False) -> None:
        digest = _digest(text)
        async with self._lock:
            if digest == self._last and not force:
                return
            self._last = digest
            try:
                await self._apply(text)
            except Exception:  # a top-level loop: a bug in one apply must not stop following
                logger.exception("applying a new version of %s failed", self.source)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()
