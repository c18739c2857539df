"""Processes that follow the mesh file (`-f mesh.yaml`) or the shared config (`--shared`).

Each running part (an LLM worker, an MCP worker, a gateway) is a `Part`: how to read its section
from a document and how to apply it live. A new version of the document is validated for every
part first; one invalid section refuses the whole version with one logged error naming the field,
and the running config stays in force. Sections that cannot change live are logged as needing a
restart. SIGHUP re-reads the source at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentmesh.broker.bus import Bus
from agentmesh.broker.settings import Settings
from agentmesh.broker.watch import FileSource, Follower, SharedSource, Source
from agentmesh.gateway.config import RESTART_FIELDS, GatewaySection
from agentmesh.gateway.state import GatewayConfig
from agentmesh.meshconfig import MeshDocument, parse_document
from agentmesh.workers.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class Part:
    """One running part of the mesh and its section of the document."""

    section: str  # "models", "mcpServers", "gateway"
    parse: Callable[[MeshDocument], Any]  # its config from a document; ConfigError if invalid
    apply: Callable[[Any], Awaitable[None]]


class MeshFollower:
    """Applies each new version of the document to the parts of this process."""

    def __init__(
        self, current: MeshDocument, parts: Sequence[Part], *, restart_only: Sequence[str] = ()
    ) -> None:
        self.current = current
        self.parts = list(parts)
        self.restart_only = list(restart_only)  # sections this process reads only at start

    async def on_text(self, text: str) -> None:
        source = self.current.source
        try:
            doc = parse_document(text, source=source)
            changed = [p for p in self.parts if self._changed(doc, p.section)]
            configs = [(part, part.parse(doc)) for part in changed]  # all valid, or none applied
        except ConfigError as exc:
            logger.error("refused the new version: %s; the running config stays in force", exc)
            return
        for warning in doc.warnings:
            logger.warning("%s", warning)
        for section in self.restart_only:
            if self._changed(doc, section):
                logger.warning("%s: %r changed; restart to apply it", source, section)
        for part, config in configs:
            if config is None:
                logger.warning(
                    "%s: section %r removed; restart to stop what it runs", source, part.section
                )
            else:
                await part.apply(config)
        self.current = doc
        logger.info("applied the new version of %s", source)

    def _changed(self, doc: MeshDocument, section: str) -> bool:
        return self.current.raw.get(section) != doc.raw.get(section)


# Parts ---------------------------------------------------------------------------------------
def llm_part(worker: Any) -> Part:
    return Part("models", lambda doc: doc.llm(), worker.apply)


def runtime_part(worker: Any) -> Part:
    return Part("runtime", lambda doc: doc.runtime(), worker.apply)


def mcp_part(worker: Any) -> Part:
    return Part("mcpServers", lambda doc: doc.mcp(), worker.apply)


def a2a_part(bridge: Any) -> Part:
    return Part("a2a", lambda doc: doc.a2a(), bridge.apply)


def gateway_part(config: GatewayConfig, base: GatewayConfig, started: GatewaySection) -> Part:
    """The gateway's live options: `config` (the replica's own) takes each new section's values
    over `base` (from the environment); a new host or port is logged as needing a restart."""
    last = started

    async def apply(section: GatewaySection) -> None:
        nonlocal last
        for name in RESTART_FIELDS:
            if getattr(section, name) != getattr(last, name):
                logger.warning(
                    "gateway.%s changed (%s → %s): restart the gateway to apply it",
                    name,
                    getattr(last, name),
                    getattr(section, name),
                )
        if section.max_body_bytes > started.max_body_bytes:
            logger.warning(
                "gateway.max_body_bytes raised: HTTP bodies now, WebSocket frames above %d bytes "
                "after a restart",
                started.max_body_bytes,
            )
        changed = config.apply(replace(section.to_config(base), channels=config.channels))
        if changed:
            logger.info("gateway: applied %s", ", ".join(f"gateway.{c}" for c in changed))
        last = section

    return Part("gateway", lambda doc: doc.gateway(), apply)


def channels_part(config: GatewayConfig) -> Part:
    """The gateway's chat apps (the `channels:` list): added, changed, removed live."""

    async def apply(channels: tuple[Any, ...]) -> None:
        if config.apply(replace(config, channels=channels)):
            logger.info("gateway: applied channels (%d)", len(channels))

    return Part("channels", lambda doc: doc.channels(), apply)


# Sources -------------------------------------------------------------------------------------
@dataclass
class Opened:
    source: Source
    text: str
    doc: MeshDocument
    bus: Bus | None = None  # the connection of a shared source, closed with `close()`

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()


async def open_source(file: Path | None, shared: bool, settings: Settings) -> Opened:
    """The source a process follows and its current document.

    Raises:
        ConfigError: unreadable or invalid, or no shared config yet.
    """
    if file is not None:
        source: Source = FileSource(file)
        try:
            text = await source.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
        doc = parse_document(text, source=str(file))
        return Opened(source, text, doc)
    assert shared
    bus = await Bus.connect(settings, name="agentmesh-config")
    try:
        try:
            kv = await SharedSource.open(bus.nc, settings.prefix)
        except LookupError as exc:
            raise ConfigError(str(exc)) from None
        found = await kv.read()
        if found is None:
            raise ConfigError(
                f"{kv.describe()} is empty: write it with `agentmesh config apply -f mesh.yaml`"
            )
        return Opened(kv, found, parse_document(found, source=kv.describe()), bus)
    except BaseException:
        await bus.close()
        raise


class Following:
    """A running service plus the follower that keeps it on its section (start/stop as one)."""

    def __init__(self, service: Any, opened: Opened, parts: Sequence[Part]) -> None:
        self.service = service
        self.opened = opened
        applier = MeshFollower(opened.doc, parts)
        self.follower = Follower(opened.source, applier.on_text, current=opened.text)

    async def start(self, settings: Settings | None = None) -> None:
        await self.service.start(settings)
        self.follower.start()
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.follower.reload)
        logger.info("following %s (edits apply live; SIGHUP re-reads it)", self.opened.source)

    async def stop(self) -> None:
        with contextlib.suppress(RuntimeError):  # no loop handler to remove
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        await self.follower.stop()
        try:
            await self.service.stop()
        finally:
            await self.opened.close()


def log_warnings(doc: MeshDocument) -> None:
    for warning in doc.warnings:
        logger.warning("%s", warning)


async def run_gateway(
    opened: Opened, settings: Settings, *, host: str | None, port: int | None
) -> None:
    """Run a gateway replica on the `gateway` section (flags win over it) until SIGINT/SIGTERM,
    applying new versions of the section live."""
    from agentmesh.gateway.server import make_server

    try:
        log_warnings(opened.doc)
        section = opened.doc.gateway()
        base = GatewayConfig.from_env()
        config = replace(section.to_config(base), channels=opened.doc.channels())
    except BaseException:
        await opened.close()
        raise
    host = host or section.host
    port = port or section.port
    server = make_server(settings, host=host, port=port, config=config)
    applier = MeshFollower(opened.doc, [gateway_part(config, base, section), channels_part(config)])
    follower = Follower(opened.source, applier.on_text, current=opened.text)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    loop.add_signal_handler(signal.SIGHUP, follower.reload)
    try:
        follower.start()
        logger.info("following %s (edits apply live; SIGHUP re-reads it)", opened.source)
        await server.serve()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
        await follower.stop()
        await opened.close()
    if not server.started:
        from agentmesh.schemas.errors import ConnectionFailed

        raise ConnectionFailed(f"the gateway could not start on {host}:{port} (see the log above)")
