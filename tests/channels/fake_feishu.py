"""A fake Feishu open platform (a real HTTP server on a free port) and events built as Feishu
sends them.

The server speaks what a channel uses: the tenant token, the bot's info, image upload, the
reply API, and the long connection (the endpoint request and the WebSocket of protobuf frames,
lark-oapi's own `Frame`). It records what it receives, can fail the next calls of an API with
a 5xx (or any code), and can expire every token it gave out. The helpers encrypt and sign
events with Feishu's algorithm; the tests check them against lark-oapi's own decrypt and
verification.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from Crypto.Cipher import AES
from Crypto.Util.Padding import pad
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.workers.fake_server import FakeServer

APP_ID = "cli_a1b2c3d4"
APP_SECRET = "app-secret"
VERIFICATION_TOKEN = "verification-token"
ENCRYPT_KEY = "encrypt-key"
BOT_OPEN_ID = "ou_bot0001"
BOT_NAME = "MeshBot"
TOKEN_INVALID = 99991663
_ids = itertools.count(1)


@dataclass
class Posted:
    """One reply the platform took."""

    to: str  # the message replied to
    msg_type: str
    content: dict[str, Any]
    uuid: str | None
    reply_in_thread: bool
    message_id: str  # the posted message's


@dataclass
class _Failure:
    api: str | None
    status: int
    code: int | None
    msg: str


@dataclass
class FakeFeishu:
    app_id: str = APP_ID
    app_secret: str = APP_SECRET
    bot_open_id: str = BOT_OPEN_ID
    bot_name: str = BOT_NAME
    token_ttl: int = 7200  # `expire` of the tokens it gives out
    replies: list[Posted] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    calls: list[tuple[str, int]] = field(default_factory=list)  # (api, HTTP status)
    token_requests: int = 0
    bot_requests: int = 0
    duplicates: int = 0  # replies dropped for a uuid seen before
    ws_connections: int = 0
    acks: list[dict[str, Any]] = field(default_factory=list)  # the long connection's answers

    def __post_init__(self) -> None:
        self._tokens: set[str] = set()
        self._failures: list[_Failure] = []
        self._by_uuid: dict[str, Posted] = {}
        self._sockets: list[WebSocket] = []
        self._acked: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.ws_connected = asyncio.Event()
        self._ws_changed = asyncio.Event()
        self._replied = asyncio.Event()
        self.server = FakeServer(
            [
                Route(
                    "/open-apis/auth/v3/tenant_access_token/internal", self._token, methods=["POST"]
                ),
                Route("/open-apis/bot/v3/info", self._bot, methods=["GET"]),
                Route("/open-apis/im/v1/images", self._image, methods=["POST"]),
                Route(
                    "/open-apis/im/v1/messages/{message_id}/reply", self._reply, methods=["POST"]
                ),
                Route("/callback/ws/endpoint", self._endpoint, methods=["POST"]),
                WebSocketRoute("/ws", self._socket),  # type: ignore[list-item]
            ]
        )
        self.base_url = f"http://127.0.0.1:{self.server.port}"

    async def start(self) -> FakeFeishu:
        await self.server.start()
        return self

    async def stop(self) -> None:
        for socket in list(self._sockets):
            try:
                await socket.close()
            except RuntimeError:
                pass
        await self.server.stop()

    # Faults -------------------------------------------------------------------------------------
    def fail_next(
        self,
        n: int = 1,
        *,
        api: str | None = "reply",
        status: int = 503,
        code: int | None = None,
        msg: str = "fake failure",
    ) -> None:
        """The next `n` calls of `api` ("token", "bot", "image", "reply"; None: any) fail with
        HTTP `status`, and with a JSON body `{"code", "msg"}` when `code` is given."""
        self._failures.extend(_Failure(api, status, code, msg) for _ in range(n))

    def expire_tokens(self) -> None:
        """Every token given out so far is refused from now on (code 99991663)."""
        self._tokens.clear()

    # The APIs -----------------------------------------------------------------------------------
    def _failed(self, api: str) -> JSONResponse | None:
        for failure in self._failures:
            if failure.api in (None, api):
                self._failures.remove(failure)
                self.calls.append((api, failure.status))
                if failure.code is None:  # a proxy's error page: no platform code
                    return JSONResponse({"message": "upstream error"}, failure.status)
                return JSONResponse({"code": failure.code, "msg": failure.msg}, failure.status)
        return None

    def _authorized(self, request: Request, api: str) -> JSONResponse | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            self.calls.append((api, 400))
            return JSONResponse({"code": 99991661, "msg": "Missing access token"}, 400)
        if auth.removeprefix("Bearer ") not in self._tokens:
            self.calls.append((api, 400))
            return JSONResponse({"code": TOKEN_INVALID, "msg": "Invalid access token"}, 400)
        return None

    async def _token(self, request: Request) -> JSONResponse:
        if (failed := self._failed("token")) is not None:
            return failed
        body = await request.json()
        self.token_requests += 1
        if (body.get("app_id"), body.get("app_secret")) != (self.app_id, self.app_secret):
            self.calls.append(("token", 400))
            return JSONResponse({"code": 10014, "msg": "app secret invalid"}, 400)
        token = f"t-{uuid.uuid4().hex}"
        self._tokens.add(token)
        self.calls.append(("token", 200))
        return JSONResponse(
            {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.token_ttl}
        )

    async def _bot(self, request: Request) -> JSONResponse:
        if (failed := self._failed("bot") or self._authorized(request, "bot")) is not None:
            return failed
        self.bot_requests += 1
        self.calls.append(("bot", 200))
        bot = {"activate_status": 2, "app_name": self.bot_name, "open_id": self.bot_open_id}
        return JSONResponse({"code": 0, "msg": "ok", "bot": bot})

    async def _image(self, request: Request) -> JSONResponse:
        if (failed := self._failed("image") or self._authorized(request, "image")) is not None:
            return failed
        async with request.form() as form:
            image = form.get("image")
            if form.get("image_type") != "message" or image is None or isinstance(image, str):
                self.calls.append(("image", 400))
                return JSONResponse({"code": 234001, "msg": "Invalid request param."}, 400)
            key = f"img_v3_{next(_ids):04d}"
            self.images[key] = await image.read()
        self.calls.append(("image", 200))
        return JSONResponse({"code": 0, "msg": "success", "data": {"image_key": key}})

    async def _reply(self, request: Request) -> JSONResponse:
        if (failed := self._failed("reply") or self._authorized(request, "reply")) is not None:
            return failed
        body = await request.json()
        problem = self._bad_content(body)
        if problem is not None:
            self.calls.append(("reply", 400))
            return JSONResponse({"code": 230001, "msg": problem}, 400)
        given_uuid = body.get("uuid")
        posted = self._by_uuid.get(given_uuid) if given_uuid else None
        if posted is not None:
            self.duplicates += 1
        else:
            posted = Posted(
                to=request.path_params["message_id"],
                msg_type=body["msg_type"],
                content=json.loads(body["content"]),
                uuid=given_uuid,
                reply_in_thread=bool(body.get("reply_in_thread")),
                message_id=f"om_reply{next(_ids):04d}",
            )
            self.replies.append(posted)
            self._replied.set()
            if given_uuid:
                self._by_uuid[given_uuid] = posted
        self.calls.append(("reply", 200))
        data = {"message_id": posted.message_id, "msg_type": posted.msg_type, "chat_id": "oc_x"}
        return JSONResponse({"code": 0, "msg": "success", "data": data})

    def _bad_content(self, body: dict[str, Any]) -> str | None:
        try:
            content = json.loads(body["content"])
        except (KeyError, TypeError, ValueError):
            return "content is not a JSON string"
        msg_type = body.get("msg_type")
        if msg_type == "text" and not isinstance(content.get("text"), str):
            return "a text message without text"
        if msg_type == "image" and content.get("image_key") not in self.images:
            return "no such image_key"
        if msg_type == "post" and not all(
            isinstance(v, dict) and isinstance(v.get("content"), list) for v in content.values()
        ):
            return "a post is {locale: {title, content: [[elements]]}}"
        if msg_type not in ("text", "image", "post"):
            return f"the fake does not take msg_type {msg_type!r}"
        return None

    # The long connection -------------------------------------------------------------------------
    async def _endpoint(self, request: Request) -> JSONResponse:
        body = await request.json()
        if (body.get("AppID"), body.get("AppSecret")) != (self.app_id, self.app_secret):
            return JSONResponse({"code": 10014, "msg": "app secret invalid"})
        url = f"ws://127.0.0.1:{self.server.port}/ws?device_id=dev{next(_ids)}&service_id=7"
        config = {"ReconnectCount": 5, "ReconnectInterval": 1, "ReconnectNonce": 0}
        config["PingInterval"] = 120
        return JSONResponse({"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": config}})

    async def _socket(self, websocket: WebSocket) -> None:
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        await websocket.accept()
        self._sockets.append(websocket)
        self.ws_connections += 1
        self.ws_connected.set()
        self._ws_changed.set()
        try:
            while True:
                frame = Frame()
                frame.ParseFromString(await websocket.receive_bytes())
                headers = {h.key: h.value for h in frame.headers}
                if frame.method == 0 and headers.get("type") == "ping":
                    await websocket.send_bytes(_frame(0, {"type": "pong"}, b"").SerializeToString())
                elif frame.method == 1:  # the answer to an event frame
                    answer = json.loads(frame.payload)
                    self.acks.append(answer)
                    waiting = self._acked.pop(headers.get("message_id", ""), None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(answer)
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self._sockets.remove(websocket)
            if not self._sockets:
                self.ws_connected.clear()
            self._ws_changed.set()

    async def wait_replies(self, n: int, *, timeout: float = 20) -> list[Posted]:
        """The replies taken, once there are `n` of them."""
        async with asyncio.timeout(timeout):
            while len(self.replies) < n:
                self._replied.clear()
                await self._replied.wait()
        return list(self.replies)

    async def push_event(self, event: dict[str, Any], *, timeout: float = 15) -> dict[str, Any]:
        """Send `event` down the long connection as Feishu does; the client's answer
        (`{"code": 200, ...}`: taken)."""
        await asyncio.wait_for(self.ws_connected.wait(), timeout)
        message_id = uuid.uuid4().hex
        self._acked[message_id] = asyncio.get_running_loop().create_future()
        headers = {"type": "event", "message_id": message_id, "trace_id": message_id[:8]}
        headers.update(sum="1", seq="0")
        frame = _frame(1, headers, json.dumps(event).encode())
        await self._sockets[-1].send_bytes(frame.SerializeToString())
        return await asyncio.wait_for(self._acked[message_id], timeout)

    async def until_ws(self, connections: int, *, open_now: int, timeout: float = 20) -> None:
        """Return once `connections` long connections were made and `open_now` are open."""
        async with asyncio.timeout(timeout):
            while (self.ws_connections, len(self._sockets)) != (connections, open_now):
                self._ws_changed.clear()
                await self._ws_changed.wait()

    async def drop_connections(self) -> None:
        """Close the long connections from the platform's side (the client reconnects)."""
        for socket in list(self._sockets):
            await socket.close()


def _frame(method: int, headers: dict[str, str], payload: bytes) -> Any:
    from lark_oapi.ws.pb.pbbp2_pb2 import Frame

    frame = Frame()
    frame.SeqID = next(_ids)
    frame.LogID = frame.SeqID
    frame.service = 7
    frame.method = method
    for key, value in headers.items():
        header = frame.headers.add()
        header.key, header.value = key, value
    frame.payload = payload
    return frame


# Events as Feishu sends them ---------------------------------------------------------------------
def mention(n: int, name: str, open_id: str) -> dict[str, Any]:
    return {
        "key": f"@_user_{n}",
        "id": {"open_id": open_id, "union_id": f"on_{open_id}", "user_id": None},
        "name": name,
        "tenant_key": "736588c9260f175d",
    }


def message_event(
    text: str = "hello",
    *,
    chat_id: str = "oc_chat0001",
    chat_type: str = "p2p",
    mentions: list[dict[str, Any]] | None = None,
    message_type: str = "text",
    content: dict[str, Any] | None = None,
    sender: str = "ou_user0001",
    thread_id: str | None = None,
    root_id: str | None = None,
    event_id: str | None = None,
    message_id: str | None = None,
    token: str = VERIFICATION_TOKEN,
    app_id: str = APP_ID,
) -> dict[str, Any]:
    """An `im.message.receive_v1` event (schema 2.0), field for field as Feishu sends it."""
    now = str(int(time.time() * 1000))
    message: dict[str, Any] = {
        "message_id": message_id or f"om_{uuid.uuid4().hex[:24]}",
        "create_time": now,
        "update_time": now,
        "chat_id": chat_id,
        "chat_type": chat_type,
        "message_type": message_type,
        "content": json.dumps(content if content is not None else {"text": text}),
        "user_agent": "Mozilla/5.0 Lark/7.30",
    }
    if root_id:
        message.update(root_id=root_id, parent_id=root_id)
    if thread_id:
        message["thread_id"] = thread_id
    if mentions:
        message["mentions"] = mentions
    return {
        "schema": "2.0",
        "header": {
            "event_id": event_id or uuid.uuid4().hex,
            "token": token,
            "create_time": now,
            "event_type": "im.message.receive_v1",
            "tenant_key": "736588c9260f175d",
            "app_id": app_id,
        },
        "event": {
            "sender": {
                "sender_id": {"open_id": sender, "union_id": f"on_{sender}", "user_id": None},
                "sender_type": "user",
                "tenant_key": "736588c9260f175d",
            },
            "message": message,
        },
    }


def url_verification(challenge: str = "ajls384kdjx98XX", token: str = VERIFICATION_TOKEN) -> dict:
    return {"challenge": challenge, "token": token, "type": "url_verification"}


def encrypt(plaintext: bytes, encrypt_key: str = ENCRYPT_KEY) -> str:
    """Feishu's `encrypt`: base64(IV + AES-256-CBC(PKCS7(plaintext))), key SHA-256(encrypt key)."""
    key = hashlib.sha256(encrypt_key.encode()).digest()
    iv = os.urandom(16)
    return base64.b64encode(
        iv + AES.new(key, AES.MODE_CBC, iv).encrypt(pad(plaintext, 16))
    ).decode()


def webhook_request(
    event: dict[str, Any],
    *,
    encrypt_key: str | None = None,
    timestamp: str | None = None,
    nonce: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of Feishu's POST of `event`: encrypted and signed when the app has
    an Encrypt Key (header names as Feishu writes them)."""
    plain = json.dumps(event, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "Feishu-Event"}
    if encrypt_key is None:
        return plain, headers
    body = json.dumps({"encrypt": encrypt(plain, encrypt_key)}).encode()
    timestamp = timestamp or str(int(time.time()))
    nonce = nonce or uuid.uuid4().hex[:16]
    headers["X-Lark-Request-Timestamp"] = timestamp
    headers["X-Lark-Request-Nonce"] = nonce
    signed = (timestamp + nonce + encrypt_key).encode() + body
    headers["X-Lark-Signature"] = hashlib.sha256(signed).hexdigest()
    return body, headers


def lowered(headers: dict[str, str]) -> dict[str, str]:
    """Header names as a channel's `receive` gets them."""
    return {k.lower(): v for k, v in headers.items()}
