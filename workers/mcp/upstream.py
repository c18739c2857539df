"""`Upstream`: one MCP server kept connected through the official `mcp` SDK client.

One session per server per worker serves every caller: calls are multiplexed on it and run
concurrently. The catalog (`tools`) is fetched on connect and again when the server says its
tools changed (`notifications/tools/list_changed`, or a `subscriptions/listen` event on
2026-07-28 connections). A session that ends (a stdio server that exited, an HTTP server that
stopped answering pings) is reconnected with exponential backoff; a stdio server is restarted
that way. While it is down, calls fail at once with `UNAVAILABLE`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any, Literal

import anyio
import httpx2
import mcp_types as types
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from agentmesh.schemas.errors import MeshTimeout, ToolError, ToolNotFound, Unavailable
from agentmesh.workers.mcp.config import ServerConfig

logger = logging.getLogger(__name__)

State = Literal["starting", "up", "down"]

BACKOFF_FIRST = 0.25  # seconds before the first reconnect; doubles up to backoff_max
BACKOFF_MAX = 30.0
MAX_PAGES = 100  # tools/list pages followed; a server that paginates forever cannot hang us
CHECK_TIMEOUT_MIN = 5.0  # seconds a health check (tools/list) may take before the session is dead


class Upstream:
    """One configured MCP server: its session, its tools and its state (`starting/up/down`)."""

    def __init__(
        self,
        config: ServerConfig,
        on_change: Callable[[Upstream], Awaitable[None]],
        *,
        ping_interval: float = 10.0,
    ) -> None:
        self.config = config
        self.name = config.name
        self.state: State = "starting"
        self.error: str | None = None  # why it is down
        self.tools: list[dict[str, Any]] = []  # MCP Tool objects as JSON
        self.restarts = 0
        self.backoff_first = BACKOFF_FIRST
        self.backoff_max = BACKOFF_MAX
        self._on_change = on_change
        self._ping_interval = ping_interval
        self._client: Client | None = None
        self._names: frozenset[str] = frozenset()
        self._last_status: int | None = None  # the last HTTP error status seen (http only)
        self._check = asyncio.Event()  # set: probe the session now (a call saw it fail)
        self._refresh_wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def info(self) -> dict[str, Any]:
        """What the worker announces for this server."""
        return {
            "state": self.state,
            "transport": self.config.transport,
            "tools": self.tools,
            "error": self.error,
            "restarts": self.restarts,
        }

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mcp:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        delay = self.backoff_first
        while True:
            closed = asyncio.Event()
            self._last_status = None
            try:
                async with Client(
                    _Watched(self._transport(), closed),
                    cache=None,  # always ask the server: the worker is the catalog's cache
                    message_handler=self._on_message,
                ) as client:
                    await self._fetch_tools(client)
                    self._client = client
                    await self._set("up", None)
                    delay = self.backoff_first
                    await self._watch(client, closed)
            except Exception as exc:  # noqa: BLE001 - any failure to connect or stay connected
                self.error = _describe(exc)
                if self._last_status is not None:
                    self.error = f"HTTP {self._last_status} from {self.config.url}: {self.error}"
            finally:
                self._client = None
            if self.state == "up":
                self.restarts += 1
            await self._set("down", self.error or "the session ended")
            logger.warning(
                "MCP server %s is down (%s); reconnecting in %.2fs", self.name, self.error, delay
            )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff_max)

    async def _set(self, state: State, error: str | None) -> None:
        changed = (state, error) != (self.state, self.error) or state == "up"
        self.state, self.error = state, error
        if changed:
            await self._notify()

    async def _notify(self) -> None:
        try:
            await self._on_change(self)
        except Exception:
            logger.exception("announcing MCP server %s failed", self.name)

    def _transport(self) -> AbstractAsyncContextManager[Any]:
        cfg = self.config
        if cfg.transport == "stdio":
            params = StdioServerParameters(
                command=cfg.executable, args=cfg.args, env=cfg.env or None, cwd=cfg.cwd
            )
            return stdio_client(params)
        assert cfg.url is not None
        if cfg.transport == "sse":
            return sse_client(cfg.url, headers=cfg.headers or None)
        return _streamable_http(cfg.url, cfg.headers, self._http_status)

    def _http_status(self, status: int) -> None:
        self._last_status = status

    async def _watch(self, client: Client, closed: asyncio.Event) -> None:
        """Keep the catalog fresh; return when the session is gone (raise if a check fails).

        Every wake-up re-reads the tools: a change notice, a call that failed at the transport,
        or the interval. The `tools/list` is also the health check (2026-07-28 has no ping), and
        it catches servers that change their tools without saying so.
        """
        listening = None
        tools_cap = client.server_capabilities.tools
        if tools_cap is not None and tools_cap.list_changed:
            if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                listening = asyncio.get_running_loop().create_task(self._listen(client))
        try:
            while True:
                await _first_of(closed, self._check, self._refresh_wanted, self._ping_interval)
                if closed.is_set():
                    self.error = "the server closed the connection"
                    return
                if listening is not None and listening.done():
                    # The periodic check stands in for it; a dead session fails that too.
                    logger.info("MCP server %s: change subscription ended", self.name)
                    listening = None
                self._check.clear()
                self._refresh_wanted.clear()
                before = self.tools
                # Generous: a loaded machine answers slowly, and a false "down" fails calls.
                with anyio.fail_after(max(self._ping_interval, CHECK_TIMEOUT_MIN)):
                    await self._fetch_tools(client)
                if self.tools != before:
                    await self._notify()
        finally:
            if listening is not None:
                listening.cancel()
                with suppress(asyncio.CancelledError, Exception):
                    await listening

    async def _listen(self, client: Client) -> None:
        async with client.listen(tools_list_changed=True) as events:
            async for _ in events:
                self._refresh_wanted.set()

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._refresh_wanted.set()

    async def _fetch_tools(self, client: Client) -> None:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        self.tools = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]
        names = frozenset(t.name for t in tools)
        if names != self._names:
            logger.info("MCP server %s: %d tools", self.name, len(tools))
        self._names = names

    # Calls -------------------------------------------------------------------------------------
    async def call(self, tool: str, arguments: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Call `tool`; the MCP `CallToolResult` as JSON (an `isError` result is returned).

        Raises:
            Unavailable: the server is not connected, or the session broke during the call.
            ToolNotFound: the server does not list `tool`.
            MeshTimeout: no answer within `timeout` seconds.
            ToolError: the server answered with a JSON-RPC error (its code in details).
        """
        client = self._client
        if client is None or self.state != "up":
            raise Unavailable(
                f"MCP server '{self.name}' is not connected ({self.error or self.state})",
                details={"server": self.name},
            )
        if tool not in self._names:
            raise ToolNotFound(
                f"MCP server '{self.name}' has no tool '{tool}'",
                details={"server": self.name, "tool": tool},
            )
        try:
            result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        except MCPError as exc:
            raise self._mcp_error(exc, tool, timeout) from None
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            self._check.set()
            raise Unavailable(
                f"MCP server '{self.name}' failed during the call: {_describe(exc)}",
                details={"server": self.name},
            ) from None
        return result.model_dump(mode="json", by_alias=True, exclude_none=True)

    def _mcp_error(self, exc: MCPError, tool: str, timeout: float) -> Exception:
        details = {"server": self.name, "tool": tool}
        if exc.code == types.CONNECTION_CLOSED:
            self._check.set()
            return Unavailable(f"MCP server '{self.name}' closed the connection", details=details)
        if exc.code == types.REQUEST_TIMEOUT:
            return MeshTimeout(
                f"MCP server '{self.name}' did not answer '{tool}' within {timeout:g}s",
                details=details,
            )
        mcp = {"mcp_code": exc.code, **({"mcp_data": exc.error.data} if exc.error.data else {})}
        return ToolError(f"{self.name}/{tool}: {exc.error.message}", details={**details, **mcp})


@asynccontextmanager
async def _streamable_http(
    url: str, headers: dict[str, str], on_status: Callable[[int], None]
) -> AsyncIterator[Any]:
    async def seen(response: httpx2.Response) -> None:
        if response.status_code >= 400:
            on_status(response.status_code)

    # The SDK's defaults (30 s, 300 s for reads of a stream), plus a hook: the SDK reports a
    # refused request as "Server returned an error response" without its status.
    timeout = httpx2.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT)
    http = httpx2.AsyncClient(
        headers=headers or None, timeout=timeout, event_hooks={"response": [seen]}
    )
    async with http, streamable_http_client(url, http_client=http) as streams:
        yield streams


async def _first_of(*events_and_timeout: Any) -> None:
    """Wait until one of the events is set, or the timeout (the last argument) passes."""
    *events, timeout = events_and_timeout
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    if isinstance(exc, MCPError):
        return exc.error.message
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Watched:
    """A transport whose read stream sets `closed` when it ends, so a dead session is noticed
    at once rather than at the next call (the SDK fails pending calls, but says nothing)."""

    def __init__(self, inner: AbstractAsyncContextManager[Any], closed: asyncio.Event) -> None:
        self._inner = inner
        self._closed = closed

    async def __aenter__(self) -> tuple[Any, Any]:
        read, write = await self._inner.__aenter__()
        return _ClosingReader(read, self._closed), write

    async def __aexit__(self, *exc: Any) -> bool | None:
        self._closed.set()
        return await self._inner.__aexit__(*exc)


class _ClosingReader:
    def __init__(self, inner: Any, closed: asyncio.Event) -> None:
        self._inner = inner
        self._closed = closed

    def __getattr__(self, name: str) -> Any:  # last_context and friends
        return getattr(self._inner, name)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._closed.set()
            raise

    def __aiter__(self) -> _ClosingReader:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> _ClosingReader:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        return await self._inner.__aexit__(*exc)
