"""`GatewayClient`: an agent of the mesh over one WebSocket, for machines that only reach HTTP.

    client = GatewayClient(gateway_url="ws://localhost:8001", agent_id="my-agent-001")

    @client.on_message
    async def handle(message: dict) -> str | dict | None:   # or an async generator of chunks
        return f"got: {message['text']}"

    await client.connect()                       # or `async with client:`
    reply = await client.send("other-agent", "Hello")   # the `result` frame, as a dict
    await client.close()

Heartbeats and reconnecting are built in. The frames are docs/PROTOCOL.md §7.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from agentmesh.broker.subjects import validate_id
from agentmesh.schemas.envelope import iso_utc, new_id
from agentmesh.schemas.errors import (
    ConnectionFailed,
    ErrorCode,
    ErrorInfo,
    InvalidMessage,
    MeshError,
    MeshTimeout,
    RemoteError,
    Unauthorized,
    Unavailable,
    error_from_info,
)

logger = logging.getLogger(__name__)

DEFAULT_GATEWAY_URL = "ws://localhost:8001"
CONNECT_PATH = "/gateway/connect"
MAX_FRAME_BYTES = 16 * 1024 * 1024  # what we accept from the gateway
_SEND_MARGIN = 5.0  # seconds we wait beyond a send's timeout for the gateway's TIMEOUT frame
_PERMANENT_CLOSE = {1008}  # refused by policy (bad id, bad key): reconnecting cannot help

MessageHandler = Callable[[dict[str, Any]], Any]


class GatewayClient:
    """An agent attached to a gateway over WebSocket.

    Args:
        gateway_url: `ws://host:port` (or `wss://`, `http(s)://`) of any gateway replica.
        agent_id: the agent's id; 1-128 letters, digits, `_` or `-`.
        agent_name, capabilities: the Agent Card.
        auto_reconnect: reconnect (and re-register) when the connection drops.
        reconnect_interval: seconds between reconnect attempts.
        api_key: sent as `Authorization: Bearer <key>` when the gateway has auth on.
        heartbeat_interval: seconds between heartbeats; default the gateway's (from the
            `connected` frame). Never more than half the gateway's heartbeat timeout.
        connect_timeout: seconds to open the socket and be registered.
    """

    def __init__(
        self,
        gateway_url: str = DEFAULT_GATEWAY_URL,
        *,
        agent_id: str,
        agent_name: str | None = None,
        capabilities: list[str] | None = None,
        auto_reconnect: bool = True,
        reconnect_interval: float = 5.0,
        api_key: str | None = None,
        heartbeat_interval: float | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        self.gateway_url = gateway_url
        self.agent_id = validate_id(agent_id)
        self.agent_name = agent_name
        self.capabilities = list(capabilities or [])
        self.auto_reconnect = auto_reconnect
        self.reconnect_interval = reconnect_interval
        self.api_key = api_key
        self.heartbeat_interval = heartbeat_interval
        self.connect_timeout = connect_timeout
        self.instance_id: str | None = None  # of the current connection (new on reconnect)
        self.last_error: MeshError | None = None  # why the client stopped, if it did
        self._handler: MessageHandler | None = None
        self._ws: ClientConnection | None = None
        self._hello: dict[str, Any] = {}
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}  # our sends
        self._handling: dict[str, asyncio.Task[None]] = {}  # messages we are answering

    # Public API ------------------------------------------------------------------------------
    def on_message(self, fn: MessageHandler) -> MessageHandler:
        """Register the handler: `async def fn(message: dict)` returning the result (str, a
        JSON value, or None), or an async generator yielding text chunks. An exception answers
        with `success: false` (a `MeshError` keeps its code)."""
        self._handler = fn
        return fn

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def url(self) -> str:
        base = self.gateway_url.rstrip("/")
        for http, ws in (("http://", "ws://"), ("https://", "wss://")):
            if base.startswith(http):
                base = ws + base[len(http) :]
        if not base.endswith(CONNECT_PATH):
            base += CONNECT_PATH
        query = {"agent_id": self.agent_id, "agent_name": self.agent_name or self.agent_id}
        if self.capabilities:
            query["capabilities"] = json.dumps(self.capabilities)
        return f"{base}?{urlencode(query)}"

    async def connect(self) -> None:
        """Connect and register; returns once the gateway confirmed (the `connected` frame).

        Raises:
            ConnectionFailed: the gateway cannot be reached.
            Unauthorized: the gateway refused the key.
            InvalidMessage: the gateway refused the agent id or capabilities.
        """
        if self._runner is not None and not self._runner.done():
            raise RuntimeError("the client is already connected")
        self._closing = False
        self.last_error = None
        ws = await self._open()
        self._runner = asyncio.get_running_loop().create_task(self._supervise(ws))

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until connected (again, after a reconnect); `TimeoutError` at the deadline."""
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def send(
        self,
        to_agent_id: str,
        content: Any,
        *,
        conversation_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = 30.0,
        wait: bool = True,
    ) -> dict[str, Any]:
        """Send `content` (text, a list of parts, or any JSON value) to an agent.

        `timeout` is the gateway's deadline for the answer (None: the gateway's default).

        Returns the `result` frame (`result`, `content`, `from_agent_id`, ...), or with
        `wait=False` the `sent` frame (with `task_id`) once the message is stored as a durable
        task, which an executor delivers (also to an agent that comes online later).

        Raises:
            AgentNotFound, InvalidMessage, InvalidId, MeshTimeout, RateLimited, Unauthorized,
            RemoteError: as the gateway's error frame says.
            Unavailable: not connected, or the connection dropped before the answer.
        """
        ws = self._ws
        if ws is None or not self.connected:
            raise Unavailable("not connected to the gateway")
        mid = new_id()
        frame: dict[str, Any] = {
            "type": "send",
            "to_agent_id": to_agent_id,
            "content": _content(content),
            "metadata": metadata or {},
            "message_id": mid,
            "wait": wait,
        }
        if timeout is not None:
            frame["timeout"] = timeout
        if conversation_id is not None:
            frame["conversation_id"] = conversation_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[mid] = future
        try:
            await ws.send(json.dumps(frame))
            limit = None if timeout is None else timeout + _SEND_MARGIN
            try:
                async with asyncio.timeout(limit) as deadline:
                    return await future
            except TimeoutError:
                if not deadline.expired():
                    raise  # the gateway's own TIMEOUT error
                raise MeshTimeout(f"no answer from the gateway within {limit:g}s") from None
        except ConnectionClosed:
            raise Unavailable("the connection to the gateway was lost") from None
        finally:
            self._pending.pop(mid, None)

    async def close(self) -> None:
        """Leave the mesh: close the socket (the gateway takes the agent offline at once)."""
        self._closing = True
        ws, runner = self._ws, self._runner
        if ws is not None:
            await ws.close()
        if runner is not None:
            runner.cancel()
            try:
                await runner
            except asyncio.CancelledError:
                pass
        self._runner = None
        self._fail_pending(Unavailable("the client was closed"))

    async def __aenter__(self) -> GatewayClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # Connection ------------------------------------------------------------------------------
    async def _open(self) -> ClientConnection:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        try:
            async with asyncio.timeout(self.connect_timeout):
                ws = await ws_connect(
                    self.url, additional_headers=headers, max_size=MAX_FRAME_BYTES
                )
                try:
                    hello = json.loads(await ws.recv())
                except BaseException:
                    await ws.close()
                    raise
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ValueError) as exc:
            raise ConnectionFailed(
                f"cannot connect to the gateway at {self.gateway_url} ({exc or type(exc).__name__})"
            ) from None
        except ConnectionClosed as exc:
            raise ConnectionFailed(f"the gateway closed the connection ({exc})") from None
        if hello.get("type") != "connected":
            await ws.close()
            if hello.get("type") == "error":
                raise _error(hello)
            raise InvalidMessage(f"unexpected first frame from the gateway: {hello!r}")
        self._hello = hello
        self.instance_id = hello.get("instance_id")
        self._ws = ws
        self._connected.set()
        return ws

    async def _supervise(self, ws: ClientConnection) -> None:
        """Run connections one after another until closed, or reconnecting cannot help."""
        try:
            while True:
                code, reason = await self._session(ws)
                self._connected.clear()
                self._ws = None
                await (
                    self._stop_handlers()
                )  # their callers already got UNAVAILABLE from the gateway
                self._fail_pending(Unavailable(f"the connection to the gateway was lost ({code})"))
                if code in _PERMANENT_CLOSE:
                    self.last_error = Unavailable(f"the gateway closed the connection: {reason}")
                if self._closing or not self.auto_reconnect or code in _PERMANENT_CLOSE:
                    return
                logger.info("gateway connection lost (%s %s); reconnecting", code, reason)
                reconnected = await self._reconnect()
                if reconnected is None:
                    return
                ws = reconnected
        finally:
            self._connected.clear()
            await self._stop_handlers()

    def _stop_handlers(self) -> asyncio.Future[Any]:
        """Cancel the handlers still answering; await the result to wait until they ended."""
        tasks = list(self._handling.values())
        for task in tasks:
            task.cancel()
        return asyncio.gather(*tasks, return_exceptions=True)

    async def _reconnect(self) -> ClientConnection | None:
        """Try every `reconnect_interval`; None if the gateway refuses us for good."""
        while True:
            await asyncio.sleep(self.reconnect_interval)
            try:
                ws = await self._open()
            except (Unauthorized, InvalidMessage) as exc:  # retrying cannot fix these
                self.last_error = exc
                logger.error("the gateway refused agent %s: %s", self.agent_id, exc)
                return None
            except MeshError as exc:
                logger.debug("reconnect failed: %s", exc)
                continue
            logger.info("reconnected to the gateway (instance %s)", self.instance_id)
            return ws

    async def _session(self, ws: ClientConnection) -> tuple[int | None, str]:
        beats = asyncio.get_running_loop().create_task(self._heartbeats(ws))
        try:
            async for raw in ws:
                self._on_frame(ws, raw)
        except ConnectionClosed:
            pass
        finally:
            beats.cancel()
        return ws.close_code, ws.close_reason or ""

    async def _heartbeats(self, ws: ClientConnection) -> None:
        server = float(self._hello.get("heartbeat_interval") or 30.0)
        timeout = float(self._hello.get("heartbeat_timeout") or 60.0)
        interval = min(self.heartbeat_interval or server, timeout / 2)
        try:
            while True:
                await asyncio.sleep(interval)
                now = iso_utc(time.time())
                await ws.send(json.dumps({"type": "heartbeat", "timestamp": now}))
        except ConnectionClosed:
            pass

    def _fail_pending(self, error: MeshError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    # Frames ----------------------------------------------------------------------------------
    def _on_frame(self, ws: ClientConnection, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
        except ValueError:
            logger.warning("ignoring a frame from the gateway that is not JSON")
            return
        if not isinstance(frame, dict):
            return
        kind = frame.get("type")
        mid = frame.get("message_id")
        if kind == "message" and isinstance(mid, str):
            task = asyncio.get_running_loop().create_task(self._answer(ws, frame))
            self._handling[mid] = task
        elif kind == "cancel":
            task = self._handling.pop(mid, None) if isinstance(mid, str) else None
            if task is not None:
                task.cancel()
        elif kind in ("result", "sent", "error"):
            future = self._pending.get(mid) if isinstance(mid, str) else None
            if future is None or future.done():
                if kind == "error":
                    logger.warning("gateway error: %s %s", frame.get("code"), frame.get("message"))
                return
            if kind == "error":
                future.set_exception(_error(frame))
            else:
                future.set_result(frame)

    async def _answer(self, ws: ClientConnection, message: dict[str, Any]) -> None:
        mid = message["message_id"]
        message["text"] = "".join(
            p.get("text", "")
            for p in message.get("content") or []
            if isinstance(p, dict) and p.get("type") == "text"
        )
        reply: dict[str, Any] = {
            "type": "result",
            "message_id": mid,
            "conversation_id": message.get("conversation_id"),
        }
        try:
            if self._handler is None:
                raise RemoteError(f"agent {self.agent_id} has no message handler")
            value = self._handler(message)
            if inspect.isasyncgen(value):
                async for chunk in value:
                    await ws.send(json.dumps(_chunk(mid, chunk)))
                value = None
            elif inspect.isawaitable(value):
                value = await value
            text = json.dumps({**reply, "success": True, "result": value})
        except asyncio.CancelledError:
            raise  # the caller gave up (a `cancel` frame) or the connection dropped
        except ConnectionClosed:
            return
        except MeshError as exc:
            failure = {"success": False, "result": exc.message, "code": str(exc.code)}
            text = json.dumps({**reply, **failure})
        except Exception as exc:  # the handler's bug becomes the caller's error, as in the SDK
            logger.exception("message handler of %s failed", self.agent_id)
            text = json.dumps({**reply, "success": False, "result": f"{type(exc).__name__}: {exc}"})
        finally:
            self._handling.pop(mid, None)
        try:
            await ws.send(text)
        except ConnectionClosed:
            pass


def _content(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": value}]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(p, dict) and "type" in p for p in value)
    ):
        return value
    return [{"type": "data", "data": value}]


def _chunk(message_id: str, item: Any) -> dict[str, Any]:
    if isinstance(item, str):
        return {"type": "chunk", "message_id": message_id, "text": item}
    return {"type": "chunk", "message_id": message_id, "content": _content(item)}


def _error(frame: dict[str, Any]) -> MeshError:
    details = frame.get("details") if isinstance(frame.get("details"), dict) else {}
    message = str(frame.get("message") or "the gateway reported an error")
    try:
        info = ErrorInfo(code=frame.get("code"), message=message, details=details)
    except ValueError:
        return RemoteError(message, code=ErrorCode.INTERNAL, details=details)
    return error_from_info(info)
