"""The mesh's durable state in JetStream: KV buckets of JSON records and append-only streams.

Each bucket and stream is created on first use by whoever needs it (file storage, one replica
unless the cluster config says otherwise), and its handle is kept for the connection's life.
Every failure to reach JetStream raises `Unavailable` (503 with Retry-After at the gateway),
never a false "not found": a missing bucket is an empty one, an unreachable one is an error.

    agentmesh_config     KV      `<prefix>` → the shared config's text (broker/watch.py)
    agentmesh_keys       KV      `<prefix>.<key_id>` → an API key's record, with the key's hash
    agentmesh_webhooks   KV      `<prefix>.<name>` → a webhook's definition, with its secret
    agentmesh_usage      stream  `agentmesh.usage.<prefix>.<key id>.<model>`: one event per call
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import api
from nats.js.kv import KeyValue

from agentmesh.schemas.errors import Conflict, Unavailable

logger = logging.getLogger(__name__)

KEYS_BUCKET = "agentmesh_keys"
WEBHOOKS_BUCKET = "agentmesh_webhooks"
USAGE_STREAM = "agentmesh_usage"
USAGE_SUBJECTS = "agentmesh.usage.>"  # see Subjects.usage
DUPLICATE_WINDOW = 600.0  # seconds a `msg_id` de-duplicates a re-published event
FETCH_BATCH = 256  # stream messages per fetch when reading a stream
_UNREACHABLE = (nats.errors.Error, OSError, TimeoutError)  # nats.js.errors.Error is one too


@dataclass(frozen=True, slots=True)
class StreamState:
    """What identifies a stream and how far it goes: a stream deleted and made again has
    another `created`, and its sequences start over."""

    created: str  # ISO time the stream was created
    last_seq: int


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    data: bytes


class DurableState:
    """The JetStream buckets and streams of the mesh, on one NATS connection.

    Args:
        nc: the connection (a `Bus`'s `nc`).
        timeout: seconds one JetStream request may take before it counts as unreachable.
    """

    def __init__(self, nc: NatsClient, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.timeout = timeout
        self._buckets: dict[str, Bucket] = {}
        self._streams: dict[str, list[str]] = {USAGE_STREAM: [USAGE_SUBJECTS]}

    def add_stream(self, name: str, subjects: list[str]) -> None:
        """Make `name` (with these subjects) one of the streams `ensure_stream` creates."""
        self._streams.setdefault(name, subjects)

    async def purge(self, stream: str, subject: str) -> None:
        """Remove every message of `subject` from `stream` (nothing if the stream is missing)."""
        with self.calling(f"purging {stream}"):
            try:
                await self.js.purge_stream(stream, subject=subject)
            except nats.js.errors.NotFoundError:
                pass

    def bucket(self, name: str) -> Bucket:
        if name not in self._buckets:
            self._buckets[name] = Bucket(self, name)
        return self._buckets[name]

    async def ensure(self) -> None:
        """Create the mesh's buckets and streams now (a gateway at start), not on first use.

        Raises:
            Unavailable: JetStream cannot be reached, or is not enabled on the server.
        """
        for name in (KEYS_BUCKET, WEBHOOKS_BUCKET):
            await self.bucket(name).open(create=True)
        for stream in self._streams:
            await self.ensure_stream(stream)

    @contextlib.contextmanager
    def calling(self, what: str) -> Iterator[None]:
        """Failures to reach JetStream inside the block raise `Unavailable` saying `what` failed."""
        if not self.nc.is_connected:  # reconnecting: a request would only wait for its timeout
            raise Unavailable(f"NATS is reconnecting ({what}); retry shortly")
        try:
            yield
        except _UNREACHABLE as exc:
            logger.warning("JetStream unreachable (%s): %s", what, exc or type(exc).__name__)
            raise Unavailable(f"NATS JetStream is unreachable ({what}); retry shortly") from None

    # Streams -----------------------------------------------------------------------------------
    async def ensure_stream(self, name: str) -> None:
        config = api.StreamConfig(
            name=name,
            subjects=self._streams[name],
            storage=api.StorageType.FILE,
            retention=api.RetentionPolicy.LIMITS,
            duplicate_window=DUPLICATE_WINDOW,
            allow_direct=True,
        )
        with self.calling(f"creating the stream {name}"):
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # It exists with another configuration (made by hand, or by another version):
                # use it as it is, as long as it is there.
                await self.js.stream_info(name)

    async def append(
        self, stream: str, subject: str, data: bytes, *, msg_id: str | None = None
    ) -> int:
        """Publish one event and wait for JetStream's ack; returns its sequence. A `msg_id`
        already used within `DUPLICATE_WINDOW` is stored once.

        Raises:
            Unavailable: JetStream did not ack it.
        """
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        with self.calling(f"writing to {stream}"):
            try:
                ack = await self.js.publish(subject, data, stream=stream, headers=headers)
            except nats.js.errors.NoStreamResponseError:
                await self.ensure_stream(stream)  # deleted since: make it again, once
                ack = await self.js.publish(subject, data, stream=stream, headers=headers)
        return ack.seq

    async def stream_state(self, stream: str) -> StreamState | None:
        """The stream's identity and last sequence; None if it does not exist."""
        with self.calling(f"reading {stream}"):
            try:
                info = await self.js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                return None
        created = info.created.isoformat() if info.created else ""
        return StreamState(created=created, last_seq=info.state.last_seq)

    async def events(
        self, stream: str, subject: str, *, after: int, until: int | None = None
    ) -> AsyncIterator[list[Event]]:
        """Batches of the messages on `subject` (wildcards allowed) with a sequence above
        `after`, as stored when this is called; later ones may or may not be included, and
        once a batch reaches `until` no more are read (a busy stream never keeps it going).

        An ephemeral consumer (acks off, in memory) reads them and is deleted at the end.
        """
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after + 1,
            ack_policy=api.AckPolicy.NONE,
            filter_subject=subject,
            inactive_threshold=max(30.0, 3 * self.timeout),  # cleans up after a crash
            mem_storage=True,
        )
        with self.calling(f"reading {stream}"):
            info = await self.js.add_consumer(stream, config)
        consumer = info.name
        try:
            remaining = info.num_pending
            if not remaining:
                return
            with self.calling(f"reading {stream}"):
                sub = await self.js.pull_subscribe_bind(consumer=consumer, stream=stream)
            try:
                while remaining:
                    with self.calling(f"reading {stream}"):
                        msgs = await sub.fetch(min(remaining, FETCH_BATCH), timeout=self.timeout)
                    batch = [Event(m.metadata.sequence.stream, m.data) for m in msgs]
                    remaining = msgs[-1].metadata.num_pending if msgs else 0
                    if until is not None and batch and batch[-1].seq >= until:
                        remaining = 0
                    yield batch
            finally:
                with contextlib.suppress(*_UNREACHABLE):
                    await sub.unsubscribe()
        finally:
            with contextlib.suppress(*_UNREACHABLE):
                await self.js.delete_consumer(stream, consumer)


class Bucket:
    """One KV bucket of JSON records (objects), opened on first use and created by writers.

    Keys are `<prefix>.<name>` with both parts ids, so a key is always a valid KV key and a
    prefix's records are the subject `<prefix>.>` of the bucket.
    """

    def __init__(self, durable: DurableState, name: str) -> None:
        self.durable = durable
        self.name = name
        self._kv: KeyValue | None = None

    async def open(self, *, create: bool) -> KeyValue | None:
        """The bucket's handle; None if it does not exist and not `create`."""
        if self._kv is not None:
            return self._kv
        js = self.durable.js
        with self.durable.calling(f"opening the bucket {self.name}"):
            try:
                self._kv = await js.key_value(self.name)
            except nats.js.errors.BucketNotFoundError:
                if not create:
                    return None
                config = api.KeyValueConfig(
                    bucket=self.name, history=1, storage=api.StorageType.FILE, direct=True
                )
                try:
                    self._kv = await js.create_key_value(config)
                except nats.js.errors.BadRequestError:
                    self._kv = await js.key_value(self.name)  # another process made it first
        return self._kv

    async def get(self, key: str) -> dict[str, Any] | None:
        """The record at `key`; None if there is none (or no bucket, or it is not JSON)."""
        kv = await self.open(create=False)
        if kv is None:
            return None
        with self.durable.calling(f"reading {self.name}"):
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None
            except nats.errors.NoRespondersError:
                # A direct get has no responder when the bucket is gone (deleted by hand):
                # unknown, unless JetStream itself is gone too (then stream_info raises).
                if await self._exists():
                    raise
                return None
        return _decode(self.name, key, entry.value)

    async def create(self, key: str, record: dict[str, Any]) -> bool:
        """Store `record` at `key` if there is none; False if there is one."""
        kv = await self.open(create=True)
        assert kv is not None
        with self.durable.calling(f"writing to {self.name}"):
            try:
                await kv.create(key, _encode(record))
            except nats.js.errors.KeyWrongLastSequenceError:
                return False
        return True

    async def put(self, key: str, record: dict[str, Any]) -> None:
        """Store `record` at `key`, replacing what was there."""
        kv = await self.open(create=True)
        assert kv is not None
        with self.durable.calling(f"writing to {self.name}"):
            await kv.put(key, _encode(record))

    async def update(
        self, key: str, change: Callable[[dict[str, Any]], dict[str, Any]], *, attempts: int = 20
    ) -> dict[str, Any] | None:
        """Change the record at `key` with compare-and-set: `change` gets the record as stored
        and returns the new one; a concurrent writer's change makes it start again from that
        one, so neither is lost. None if there is no record (nothing is written).

        Raises:
            Conflict: the record kept changing under `attempts` tries.
        """
        kv = await self.open(create=False)
        if kv is None:
            return None
        for _ in range(attempts):
            with self.durable.calling(f"reading {self.name}"):
                try:
                    entry = await kv.get(key)
                except nats.js.errors.KeyNotFoundError:
                    return None
            current = _decode(self.name, key, entry.value)
            if current is None:
                return None
            new = change(current)
            with self.durable.calling(f"writing to {self.name}"):
                try:
                    await kv.update(key, _encode(new), last=entry.revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # another writer came first: apply the change to its record
            return new
        raise Conflict(f"{self.name}: the record {key!r} kept changing; retry")

    async def delete(self, key: str) -> bool:
        """Remove `key`; False if there was nothing there."""
        if await self.get(key) is None:
            return False
        kv = await self.open(create=False)
        if kv is None:
            return False
        with self.durable.calling(f"writing to {self.name}"):
            await kv.delete(key)
        return True

    async def scan(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every record under `<prefix>.`, by the rest of its key.

        The keys come from the stream's per-subject state, not a KV watch: nats-py's watcher
        can say "no more values" before it delivered them all under load (nats-io/nats.py#842).
        A deleted key's subject holds its delete marker: its `get` is None, and it is skipped.
        """
        kv = await self.open(create=False)
        if kv is None:
            return {}
        root = f"$KV.{self.name}."
        with self.durable.calling(f"reading {self.name}"):
            info = await self.durable.js.stream_info(
                f"KV_{self.name}", subjects_filter=f"{root}{prefix}.>"
            )
        out: dict[str, dict[str, Any]] = {}
        for subject in sorted(info.state.subjects or {}):
            key = subject[len(root) :]
            record = await self.get(key)
            if record is not None:
                out[key[len(prefix) + 1 :]] = record
        return out

    async def _exists(self) -> bool:
        try:
            await self.durable.js.stream_info(f"KV_{self.name}")
        except nats.js.errors.NotFoundError:
            self._kv = None  # made again on the next write
            return False
        return True


def _encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def _decode(bucket: str, key: str, value: bytes | None) -> dict[str, Any] | None:
    try:
        record = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError):
        record = None
    if not isinstance(record, dict):
        logger.warning("%s: the record at %r is not a JSON object; ignored", bucket, key)
        return None
    return record
