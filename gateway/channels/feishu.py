"""Feishu and Lark (Feishu's international twin: the same protocol on open.larksuite.com) as a
`Channel`: event subscription requests in, the reply API out.

In: a JSON body, encrypted when the app has an Encrypt Key (`{"encrypt": ...}`: AES-256-CBC
with the SHA-256 of the key, the IV in the first 16 bytes, PKCS7). Then it is signed:
`X-Lark-Signature` = hex SHA-256 of timestamp + nonce + encrypt key + the raw body, and a
timestamp more than `MAX_EVENT_AGE` from now is refused — longer than Feishu's last retry (about
7 h after the first delivery, if a retry keeps its first timestamp) and shorter than the tasks'
retention, whose idempotency keys de-duplicate every event id seen inside it, so a replayed
signed request never makes new work. The verification token is checked on every request (the
URL check's and v1's `token`, v2's `header.token`). `im.message.receive_v1` becomes an
`Inbound`; other events are answered `{}`. The long-connection mode (feishu_ws.py) hands its
events, already authenticated by the connection, to `read_event`.

Out: `reply` posts to `/open-apis/im/v1/messages/{id}/reply` with a tenant_access_token.
A run of text parts is one text message (no markdown rendering); an image (inline bytes) is
uploaded and sent as an image; a data part `{"post": {"title", "content"}}` (or keyed by locale)
is sent as rich text; other data parts are written into the text as JSON, other files by name
or URI. Each message carries a `uuid` made from the reply's message id and its place, so Feishu
drops the duplicate of a retried post.

Redis (shared by every replica), `<prefix>:channels:<kind>:<name>:...`:
    tenant_token   {"token", "expires_at"}, expiring with the token; a new one is fetched when
                   under 30 min remain (two replicas refreshing at once is harmless: Feishu hands
                   out the same token then, and the old one stays valid to its expiry)
    bot            {"open_id", "app_name"} of the app's bot, from /open-apis/bot/v3/info (a day)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import redis.asyncio as aioredis
from Crypto.Cipher import AES  # pycryptodome, as lark-oapi's own AESCipher
from redis.exceptions import RedisError

from agentmesh.gateway.channels.base import Answer, Inbound, ReplyFailed, ReplyTarget
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.schemas.envelope import DataPart, FilePart, Message, TextPart
from agentmesh.schemas.errors import InvalidMessage, Unauthorized, Unavailable

logger = logging.getLogger(__name__)

MESSAGE_EVENT = "im.message.receive_v1"
MAX_EVENT_AGE = 24 * 3600.0  # seconds between a signed request's timestamp and now, at most
REFRESH_MARGIN = 30 * 60.0  # a token with less left than this is replaced
BOT_TTL = 24 * 3600  # seconds the bot's identity is kept in Redis
LOOKUP_TIMEOUT = 2.0  # seconds for learning the bot's open_id inside an event (3 s to answer)
TOKEN_INVALID = frozenset({99991661, 99991663, 99991664, 99991665, 99991666, 99991668})
# 99991400 is "request trigger frequency limit" (HTTP 400); lark_oapi.channel files it under
# auth denials, but Feishu's answers to throttled calls say otherwise.
RATE_LIMITED = frozenset({99991400, 99991402})

_DROP_IF_SAME = "if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end"


class FeishuError(ReplyFailed):
    """The open platform refused a call: its `code` and `msg` (None: no answer, or not JSON)."""

    def __init__(
        self, message: str, *, retriable: bool, code: int | None = None, msg: str | None = None
    ) -> None:
        super().__init__(message, retriable=retriable)
        self.code = code
        self.msg = msg


def decrypt(encrypt: str, encrypt_key: str) -> bytes:
    """The plaintext of an `{"encrypt": ...}` body (lark-oapi's AESCipher.decrypt_str)."""
    try:
        data = base64.b64decode(encrypt, validate=True)
    except ValueError:
        raise Unauthorized("feishu: the encrypted body is not base64") from None
    if len(data) < 2 * AES.block_size or len(data) % AES.block_size:
        raise Unauthorized("feishu: the encrypted body has a bad length")
    key = hashlib.sha256(encrypt_key.encode()).digest()
    plain = AES.new(key, AES.MODE_CBC, data[: AES.block_size]).decrypt(data[AES.block_size :])
    pad = plain[-1]
    if not 1 <= pad <= AES.block_size or plain[-pad:] != bytes([pad]) * pad:
        raise Unauthorized("feishu: cannot decrypt the body (is encrypt_key the app's?)")
    return plain[:-pad]


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """`X-Lark-Signature`: hex SHA-256 of timestamp + nonce + encrypt key + the raw body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()


def _same(expected: str, given: object) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


class FeishuChannel:
    """One Feishu or Lark app (config kind `feishu` or `lark`; the API base differs)."""

    kind: ClassVar[str] = "feishu"

    def __init__(
        self,
        config: ChannelConfig,
        redis: aioredis.Redis,
        prefix: str,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.redis = redis
        self._key = f"{prefix}:channels:{config.kind}:{config.name}"
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        self.base_url = config.api_base
        self._refreshing = asyncio.Lock()  # one token request at a time from this replica
        self._bot: dict[str, str] | None = None
        if config.bot_open_id:
            self._bot = {"open_id": config.bot_open_id, "app_name": ""}

    # In ----------------------------------------------------------------------------------------
    async def receive(self, body: bytes, headers: Mapping[str, str]) -> Answer | Inbound:
        """Check and read one event request (see the module docstring)."""
        outer = _json_object(body, "the body")
        encrypt_key = self.config.encrypt_key
        if "encrypt" in outer:
            if not encrypt_key:
                raise Unauthorized("feishu: an encrypted event, but no encrypt_key is configured")
            if not isinstance(outer["encrypt"], str):
                raise InvalidMessage("feishu: 'encrypt' is not a string")
            event = _json_object(decrypt(outer["encrypt"], encrypt_key), "the decrypted body")
        else:
            event = outer
        if event.get("type") == "url_verification":
            self._check_token(event.get("token"))
            challenge = event.get("challenge")
            if not isinstance(challenge, str):
                raise InvalidMessage("feishu: a URL check without a challenge")
            return Answer({"challenge": challenge})
        if encrypt_key:
            self._check_signature(body, headers, encrypt_key)
        v2 = event.get("schema") == "2.0"
        self._check_token(_dict(event.get("header")).get("token") if v2 else event.get("token"))
        return await self.read_event(event)

    async def read_event(self, event: Mapping[str, Any]) -> Answer | Inbound:
        """A decoded, authenticated event (a webhook's, or the long connection's) as an
        `Inbound`, or `Answer({})` for an event the mesh does not take.

        Raises:
            InvalidMessage: a message event without its ids.
            Unavailable: the bot's open_id (for `mentioned`) cannot be learned now.
        """
        header = event.get("header")
        if not isinstance(header, dict) or header.get("event_type") != MESSAGE_EVENT:
            return Answer({})
        body = event.get("event")
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict):
            raise InvalidMessage("feishu: a message event without its message")
        ids = {k: message.get(k) for k in ("message_id", "chat_id")}
        ids["event_id"] = header.get("event_id")
        missing = [k for k, v in ids.items() if not isinstance(v, str) or not v]
        if missing:
            raise InvalidMessage(f"feishu: a message event without {', '.join(missing)}")
        mentions = [m for m in message.get("mentions") or [] if isinstance(m, dict)]
        kind = str(message.get("message_type") or "text")
        content = _content(message.get("content"))
        sender = _dict(_dict(_dict(body).get("sender")).get("sender_id"))
        metadata = {
            k: message[k]
            for k in ("message_type", "root_id", "parent_id", "create_time")
            if message.get(k)
        }
        metadata.update({k: content[k] for k in ("image_key", "file_key") if k in content})
        if header.get("tenant_key"):
            metadata["tenant_key"] = header["tenant_key"]
        return Inbound(
            event_id=ids["event_id"],
            chat_id=ids["chat_id"],
            message_id=ids["message_id"],
            text=_resolve_mentions(_text(kind, content), mentions),
            chat_type="p2p" if message.get("chat_type") == "p2p" else "group",
            mentioned=await self._mentions_bot(mentions),
            # Only a thread (topic) is its own conversation: a quoted reply (root_id) stays in
            # the chat's, as the bot's own answers are quoted replies.
            thread_id=message.get("thread_id") or None,
            sender_id=sender.get("open_id") or None,
            metadata=metadata,
        )

    def _check_token(self, given: object) -> None:
        token = self.config.verification_token
        if not token or not _same(token, given):
            raise Unauthorized("feishu: bad verification token")

    def _check_signature(self, body: bytes, headers: Mapping[str, str], encrypt_key: str) -> None:
        timestamp = headers.get("x-lark-request-timestamp", "")
        nonce = headers.get("x-lark-request-nonce", "")
        if not _same(
            signature(timestamp, nonce, encrypt_key, body), headers.get("x-lark-signature")
        ):
            raise Unauthorized("feishu: bad X-Lark-Signature")
        try:
            age = abs(time.time() - float(timestamp))
        except ValueError:
            raise Unauthorized("feishu: X-Lark-Request-Timestamp is not a number") from None
        if age > MAX_EVENT_AGE:
            raise Unauthorized(f"feishu: the request's timestamp is {age:.0f} s from now")

    async def _mentions_bot(self, mentions: list[dict[str, Any]]) -> bool:
        open_ids = {(m.get("id") or {}).get("open_id") for m in mentions}
        if not open_ids:
            return False
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                bot = await self.bot()
        except (ReplyFailed, TimeoutError) as exc:
            raise Unavailable(f"feishu: cannot learn the bot's open_id: {exc}") from None
        return bot["open_id"] in open_ids

    # Out ---------------------------------------------------------------------------------------
    async def reply(self, target: ReplyTarget, message: Message) -> str:
        """Post `message` as the reply to `target.message_id`: its first posted message's id.

        Raises:
            FeishuError (a ReplyFailed): the platform did not take it; `retriable` for a 5xx, a
                timeout, a rate limit or a token refused twice.
        """
        pieces = _pieces(message)
        if not pieces:
            raise FeishuError("feishu: nothing to post (an empty reply)", retriable=False)
        posted: list[str] = []
        for n, (msg_type, value) in enumerate(pieces):
            if msg_type == "image":
                value = {"image_key": await self._upload_image(value)}
            body = {
                "msg_type": msg_type,
                "content": json.dumps(value, ensure_ascii=False),
                "uuid": hashlib.sha256(f"{message.message_id}:{n}".encode()).hexdigest()[:32],
            }
            if target.thread_id is not None:
                body["reply_in_thread"] = True
            data = await self.call(
                "POST", f"/open-apis/im/v1/messages/{target.message_id}/reply", json=body
            )
            posted.append(str((data.get("data") or {}).get("message_id") or ""))
        return posted[0]

    async def check(self) -> str:
        """A fresh token and the bot's identity: `bot <name> (<open_id>)`."""
        await self.tenant_token(fresh=True)
        self._bot = None
        bot = await self.bot(fresh=True)
        return f"bot {bot['app_name']} ({bot['open_id']})"

    async def bot(self, *, fresh: bool = False) -> dict[str, str]:
        """The app's bot: `{"open_id", "app_name"}` (kept in memory and in Redis)."""
        if self._bot is not None and not fresh:
            return self._bot
        cached = None if fresh else await self._cache_get("bot")
        if cached is not None:
            self._bot = json.loads(cached)
            return self._bot
        data = await self.call("GET", "/open-apis/bot/v3/info")
        info = data.get("bot") if isinstance(data.get("bot"), dict) else data.get("data", {})
        bot = {
            "open_id": str(info.get("open_id") or ""),
            "app_name": str(info.get("app_name") or ""),
        }
        if not bot["open_id"]:
            raise FeishuError("feishu: bot info without an open_id", retriable=False)
        await self._cache_set("bot", json.dumps(bot), BOT_TTL)
        self._bot = bot
        return bot

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    # The open platform ------------------------------------------------------------------------
    async def tenant_token(self, *, fresh: bool = False) -> str:
        """The app's tenant_access_token, from Redis while over 30 min of it remain."""
        if not fresh and (token := await self._cached_token()) is not None:
            return token
        async with self._refreshing:
            if not fresh and (token := await self._cached_token()) is not None:
                return token  # another call of this replica's got one meanwhile
            data = await self._send(
                "POST",
                "/open-apis/auth/v3/tenant_access_token/internal",
                json={"app_id": self.config.app_id, "app_secret": self.config.app_secret},
            )
            token, expire = data.get("tenant_access_token"), data.get("expire")
            if not isinstance(token, str) or not isinstance(expire, int) or expire <= 0:
                raise FeishuError("feishu: a token answer without a token", retriable=True)
            entry = {"token": token, "expires_at": time.time() + expire}
            await self._cache_set("tenant_token", json.dumps(entry), expire)
            return token

    async def _cached_token(self) -> str | None:
        cached = await self._cache_get("tenant_token")
        if cached is None:
            return None
        entry = json.loads(cached)
        return str(entry["token"]) if entry["expires_at"] - time.time() > REFRESH_MARGIN else None

    async def _cache_get(self, name: str) -> bytes | None:
        """Redis is a cache here: without it, tokens are fetched (and not shared)."""
        try:
            return await self.redis.get(f"{self._key}:{name}")
        except RedisError as exc:
            logger.warning("feishu %s: no token cache (Redis: %r)", self.name, exc)
            return None

    async def _cache_set(self, name: str, value: str, ttl: int) -> None:
        try:
            await self.redis.set(f"{self._key}:{name}", value, ex=ttl)
        except RedisError as exc:
            logger.warning("feishu %s: no token cache (Redis: %r)", self.name, exc)

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        """One API call with the tenant token. A token the platform calls invalid is dropped
        (from Redis too, unless another replica replaced it already) and the call is made once
        more with a new one; refused again, it fails retriable (FeishuError, code and msg)."""
        token = await self.tenant_token()
        try:
            return await self._send(method, path, token=token, **kw)
        except FeishuError as exc:
            if exc.code not in TOKEN_INVALID:
                raise
            logger.info("feishu %s: token refused (%s), fetching a new one", self.name, exc.code)
        await self._drop_token(token)
        return await self._send(method, path, token=await self.tenant_token(), **kw)

    async def _drop_token(self, token: str) -> None:
        current = await self._cache_get("tenant_token")
        if current is not None and json.loads(current)["token"] == token:
            try:
                await self.redis.eval(_DROP_IF_SAME, 1, f"{self._key}:tenant_token", current)  # type: ignore[misc]
            except RedisError as exc:
                logger.warning("feishu %s: no token cache (Redis: %r)", self.name, exc)

    async def _send(
        self, method: str, path: str, *, token: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        try:
            response = await self.http.request(method, self.base_url + path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise FeishuError(f"feishu {path}: {exc!r}", retriable=True) from None
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("code"), int):
            retriable = response.status_code >= 500 or response.status_code == 429
            raise FeishuError(f"feishu {path}: HTTP {response.status_code}", retriable=retriable)
        code, msg = data["code"], str(data.get("msg") or "")
        if code == 0:
            return data
        retriable = (
            code in RATE_LIMITED
            or code in TOKEN_INVALID
            or response.status_code >= 500
            or response.status_code == 429
        )
        raise FeishuError(
            f"feishu {path}: code {code}: {msg}", retriable=retriable, code=code, msg=msg
        )

    async def _upload_image(self, part: FilePart) -> str:
        assert part.bytes is not None
        files = {"image": (part.name or "image", part.bytes, part.mime_type or "image/png")}
        data = await self.call(
            "POST", "/open-apis/im/v1/images", data={"image_type": "message"}, files=files
        )
        key = (data.get("data") or {}).get("image_key")
        if not isinstance(key, str) or not key:
            raise FeishuError("feishu: an image upload without an image_key", retriable=True)
        return key


# Reading messages ------------------------------------------------------------------------------
_DESCRIBED = {
    "image": "[image]",
    "audio": "[audio]",
    "sticker": "[sticker]",
    "interactive": "[card]",
    "share_chat": "[shared chat]",
    "share_user": "[shared contact]",
    "merge_forward": "[forwarded messages]",
    "video_chat": "[video call]",
    "system": "[system message]",
}
_NAMED = {  # message type: (its label, the content field that names it)
    "file": ("file", "file_name"),
    "media": ("video", "file_name"),
    "folder": ("folder", "file_name"),
    "location": ("location", "name"),
}


def _json_object(raw: bytes | str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise InvalidMessage(f"feishu: {what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidMessage(f"feishu: {what} is not a JSON object")
    return value


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _content(raw: object) -> dict[str, Any]:
    """A message's `content` (a JSON string), or {} when it is none."""
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _text(kind: str, content: dict[str, Any]) -> str:
    """The words of a message; other kinds in a few words (`[image]`, `[file: a.pdf]`)."""
    if kind == "text":
        return str(content.get("text") or "")
    if kind == "post":
        return _post_text(content)
    if kind in _NAMED:
        label, field = _NAMED[kind]
        name = content.get(field)
        return f"[{label}: {name}]" if name else f"[{label}]"
    return _DESCRIBED.get(kind, f"[{kind} message]")


def _post_text(post: dict[str, Any]) -> str:
    """Rich text's words: the title, then each line (received posts have no locale level;
    sent ones do, so both are read)."""
    if "content" not in post:
        post = next((v for v in post.values() if isinstance(v, dict)), {})
    lines = [str(post["title"])] if post.get("title") else []
    for line in post.get("content") or []:
        if isinstance(line, list):
            lines.append("".join(_element(e) for e in line if isinstance(e, dict)))
    return "\n".join(lines)


def _element(element: dict[str, Any]) -> str:
    tag = element.get("tag")
    if tag in ("text", "a", "md", "code_block"):
        return str(element.get("text") or "")
    if tag == "at":
        name = element.get("user_name")
        return f"@{name}" if name else str(element.get("user_id") or "")
    if tag == "emotion":
        return f":{element.get('emoji_type') or ''}:"
    return {"img": "[image]", "media": "[video]"}.get(str(tag), "")


def _resolve_mentions(text: str, mentions: list[dict[str, Any]]) -> str:
    """`@_user_1` → `@Tom` (longest key first: `@_user_10` is not `@_user_1` + "0")."""
    for mention in sorted(mentions, key=lambda m: -len(str(m.get("key") or ""))):
        key, name = mention.get("key"), mention.get("name")
        if isinstance(key, str) and key and isinstance(name, str):
            text = text.replace(key, f"@{name}")
    return text.replace("@_all", "@all")


# Writing replies -------------------------------------------------------------------------------
def _pieces(message: Message) -> list[tuple[str, Any]]:
    """The reply as Feishu messages, in order: ("text", {"text"}), ("image", the part, to
    upload), ("post", the post's content). Runs of text are one message; a data part that is
    not a post, and a file that is not an inline image, are written into the text."""
    pieces: list[tuple[str, Any]] = []
    text: list[str] = []

    def flush() -> None:
        if "".join(text).strip():
            pieces.append(("text", {"text": "".join(text)}))
        text.clear()

    for part in message.content:
        if isinstance(part, TextPart):
            text.append(part.text)
        elif isinstance(part, FilePart) and part.bytes is not None and _is_image(part):
            flush()
            pieces.append(("image", part))
        elif isinstance(part, FilePart):
            where = part.uri or "not posted: only images are uploaded"
            text.append(f"\n[{part.name or 'file'}: {where}]")
        elif isinstance(part, DataPart) and isinstance(part.data, dict) and "post" in part.data:
            flush()
            post = part.data["post"]
            pieces.append(("post", {"zh_cn": post} if "content" in post else post))
        elif isinstance(part, DataPart):
            text.append(json.dumps(part.data, ensure_ascii=False, indent=2))
    flush()
    return pieces


def _is_image(part: FilePart) -> bool:
    return part.type == "image" or (part.mime_type or "").startswith("image/")
