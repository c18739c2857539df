"""Slack as a mesh channel: the Events API in, `chat.postMessage` out.

Every event request is signed: `X-Slack-Signature` = `v0=` + hex HMAC-SHA256 of
`v0:<X-Slack-Request-Timestamp>:<raw body>` with the app's signing secret, checked with the
official `slack_sdk` SignatureVerifier; a timestamp more than 5 minutes from now is refused
(Slack's own rule). A retry (`X-Slack-Retry-Num`) carries the first delivery's `event_id`.

The app subscribes to the bot events `app_mention` and `message.im` (scopes app_mentions:read,
im:history, chat:write, users:read); `message.channels` and the like are optional. Which events
become work, so that one post is one Inbound (Slack sends a channel post that mentions the bot
twice: as `app_mention` and, with `message.channels`, as `message`):
- direct messages (`channel_type: im`): the `message` event; an `app_mention` there is dropped;
- channels and group DMs: the `app_mention`; a `message` event that mentions the bot is dropped
  (its `app_mention` is the one taken); one that does not is handed on with `mentioned=False`
  (the pipeline answers groups only when mentioned);
- messages with a subtype (edits, joins, `bot_message`, ...), with a `bot_id`, or from the bot's
  own user are dropped: no reply loops. Any other event is answered `{}`.

The conversation: in channels the answer goes in a thread, `thread_id` = the message's
`thread_ts`, or its own `ts` when it is top-level, so one Slack thread is one conversation (its
first message and the follow-ups alike). In a DM the answer goes inline: `thread_id` =
`thread_ts` (None for a top-level message), so the DM is one conversation.

Mentions `<@U123>` become `@name` from `users.info` (the profile's display name, else the real
name); the sender's name too. Redis, shared by the replicas:
- `<p>:channels:slack:<name>:bot_user`  STRING the bot's user id (auth.test), 1 day
- `<p>:channels:slack:<name>:user:<id>`  STRING a user's name, 1 day ("" for 10 minutes when
  Slack gives none: user_not_found, a missing scope)
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
import redis.asyncio as aioredis
from slack_sdk.signature import SignatureVerifier

from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.channels.base import Answer, Inbound, ReplyFailed, ReplyTarget
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.schemas.envelope import (
    DataPart,
    FilePart,
    ImagePart,
    Message,
    TextPart,
    merge_text,
)
from agentmesh.schemas.errors import InvalidMessage, Unauthorized, Unavailable

logger = logging.getLogger(__name__)

MAX_AGE = 300  # seconds: Slack's rule, a request signed longer ago (or ahead) is refused
TIMEOUT = 10.0  # seconds, a Web API call from reply() and check()
LOOKUP_TIMEOUT = 2.0  # seconds, a lookup inside receive(), which Slack wants answered in 3 s
NAME_TTL = 86_400  # seconds: user names and the bot's id, cached in Redis
MISS_TTL = 600  # seconds: a user Slack does not describe (user_not_found, missing scope)
MAX_TEXT = 39_000  # characters: Slack cuts `text` at 40,000
SECTION = 3_000  # characters: the most a section block's text holds
# Slack's `ok: false` errors that say "later": the rest (channel_not_found, not_in_channel,
# invalid_auth, msg_too_long, ...) never succeed on a retry.
RETRIABLE = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)

_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_USER = re.compile(r"[UW][A-Z0-9]{1,30}")
_MENTION = re.compile(r"<@([UW][A-Z0-9]{1,30})(?:\|[^<>]*)?>")
_TOKEN = re.compile(r"<([^<>]+)>")


class SlackChannel:
    """One Slack app: its Events API requests in, its bot's replies out."""

    kind: ClassVar[str] = "slack"

    def __init__(
        self,
        config: ChannelConfig,
        redis: aioredis.Redis,
        prefix: str,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        if config.bot_token is None or config.signing_secret is None:
            raise ValueError(f"slack channel {config.name!r} needs bot_token and signing_secret")
        self.name = config.name
        self._token = config.bot_token
        self._verifier = SignatureVerifier(config.signing_secret)
        self._api = config.api_base
        self._redis = redis
        self._key = Subjects(prefix).key("channels", "slack", config.name)
        self._bot_user_id = config.bot_user_id
        self._http = http or httpx.AsyncClient(timeout=TIMEOUT)
        self._owns_http = http is None

    # Events in ------------------------------------------------------------------------------
    async def receive(self, body: bytes, headers: Mapping[str, str]) -> Answer | Inbound:
        headers = {k.lower(): v for k, v in headers.items()}
        self._verify(body, headers)
        payload = _json(body)
        if payload.get("type") == "url_verification":
            challenge = payload.get("challenge")
            if not isinstance(challenge, str):
                raise InvalidMessage("slack url_verification without a challenge")
            return Answer({"challenge": challenge})
        if payload.get("type") != "event_callback":
            return Answer({})  # app_rate_limited and the like: nothing for an agent
        event, event_id = payload.get("event"), payload.get("event_id")
        if not isinstance(event, dict) or not isinstance(event_id, str) or not event_id:
            raise InvalidMessage("slack event_callback without an event or an event_id")
        etype = event.get("type")
        if etype not in ("message", "app_mention"):
            return Answer({})
        if event.get("subtype") is not None or event.get("bot_id") is not None:
            return Answer({})  # edits, joins, bots (this one's own posts among them)
        channel, ts, user = event.get("channel"), event.get("ts"), event.get("user")
        text = event.get("text") or ""
        if not all(isinstance(v, str) and v for v in (channel, ts, user)) or not isinstance(
            text, str
        ):
            raise InvalidMessage(f"slack {etype} event without channel, ts, user or text")
        bot = await self._bot_user()
        if user == bot:
            return Answer({})
        # app_mention has no channel_type: a DM's channel id starts with D.
        direct = event.get("channel_type") == "im" if etype == "message" else channel[0] == "D"
        mentions_bot = any(m.group(1) == bot for m in _MENTION.finditer(text))
        if etype == "app_mention":
            if direct:
                return Answer({})  # the DM's message event is the one taken
            mentioned = True
        elif mentions_bot and not direct:
            return Answer({})  # its app_mention is the one taken
        else:
            mentioned = mentions_bot
        thread_ts = event.get("thread_ts") if isinstance(event.get("thread_ts"), str) else None
        return Inbound(
            event_id=event_id,
            chat_id=channel,
            message_id=ts,
            text=await self._plain(text),
            chat_type="p2p" if direct else "group",
            mentioned=mentioned,
            thread_id=thread_ts if direct else (thread_ts or ts),
            sender_id=user,
            sender_name=await self._user_name(user),
            metadata=_metadata(payload, event, headers),
        )

    def _verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        timestamp = headers.get("x-slack-request-timestamp")
        signature = headers.get("x-slack-signature")
        details = {"channel": f"slack:{self.name}"}
        if not timestamp or not signature:
            raise Unauthorized(
                "missing X-Slack-Request-Timestamp or X-Slack-Signature: not a request from Slack",
                details=details,
            )
        if not _TIMESTAMP.fullmatch(timestamp):
            raise Unauthorized("X-Slack-Request-Timestamp is not Unix seconds", details=details)
        skew = time.time() - int(timestamp)
        if abs(skew) > MAX_AGE:
            raise Unauthorized(
                "X-Slack-Request-Timestamp is more than 5 minutes from now: refused as a replay",
                details={**details, "skew_seconds": round(skew)},
            )
        try:
            valid = self._verifier.is_valid(body, timestamp, signature)
        except UnicodeDecodeError:  # the verifier reads the body as UTF-8, as Slack sends it
            valid = False
        if not valid:
            raise Unauthorized(
                "X-Slack-Signature does not match: 'v0=' + HMAC-SHA256 of "
                "'v0:<timestamp>:<body>' with the app's signing secret",
                details=details,
            )

    async def _plain(self, text: str) -> str:
        """Slack's markup as plain text: `<@U123>` → `@name`, `<#C1|general>` → `#general`,
        `<!here>` → `@here`, links as their URL (with the label when it says more)."""
        names = {uid: await self._user_name(uid) for uid in set(_MENTION.findall(text))}

        def one(match: re.Match[str]) -> str:
            target, _, label = match.group(1).partition("|")
            if target.startswith("@"):
                return "@" + (names.get(target[1:]) or label or target[1:])
            if target.startswith("#"):
                return "#" + (label or target[1:])
            if target.startswith("!"):  # !here, !channel, !subteam^S1|@team, !date^...|text
                return label or "@" + target[1:]
            return target if not label or label in target else f"{label} ({target})"

        plain = _TOKEN.sub(one, text)
        return plain.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")

    async def _user_name(self, user_id: str) -> str | None:
        """The user's name, from Redis or users.info; None when Slack gives none."""
        if not _USER.fullmatch(user_id):
            return None
        key = f"{self._key}:user:{user_id}"
        cached = await self._redis.get(key)
        if cached is not None:
            return _text(cached) or None
        try:
            data = await self._call("users.info", params={"user": user_id}, timeout=LOOKUP_TIMEOUT)
        except ReplyFailed as exc:
            if exc.retriable:  # a blip: shown by id this once, asked again next time
                logger.warning("slack %s: no name for %s: %s", self.name, user_id, exc)
                return None
            logger.info("slack %s: no name for %s: %s", self.name, user_id, exc)
            name = ""
        else:
            name = _display_name(data.get("user"))
        await self._redis.set(key, name, ex=NAME_TTL if name else MISS_TTL)
        return name or None

    async def _bot_user(self) -> str:
        """The bot's user id: from the config, else auth.test's (cached in Redis)."""
        if self._bot_user_id is not None:
            return self._bot_user_id
        key = f"{self._key}:bot_user"
        cached = await self._redis.get(key)
        if cached is None:
            try:
                data = await self._call("auth.test", json_body={}, timeout=LOOKUP_TIMEOUT)
            except ReplyFailed as exc:
                raise Unavailable(
                    f"slack channel {self.name!r} cannot learn its bot's user id ({exc}); "
                    "set bot_user_id in the mesh file",
                    details={"channel": f"slack:{self.name}"},
                ) from None
            return await self._remember_bot(data)
        self._bot_user_id = _text(cached)
        return self._bot_user_id

    async def _remember_bot(self, auth: Mapping[str, Any]) -> str:
        user_id = auth.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            raise Unavailable(f"slack channel {self.name!r}: auth.test gave no user_id")
        await self._redis.set(f"{self._key}:bot_user", user_id, ex=NAME_TTL)
        self._bot_user_id = user_id
        return user_id

    # Replies out ----------------------------------------------------------------------------
    async def reply(self, target: ReplyTarget, message: Message) -> str:
        text, blocks = _render(message)
        body: dict[str, Any] = {"channel": target.chat_id, "text": text}
        if target.thread_id is not None:
            body["thread_ts"] = target.thread_id
        if blocks:
            body["blocks"] = blocks
        data = await self._call("chat.postMessage", json_body=body)
        return str(data.get("ts") or "")

    async def check(self) -> str:
        data = await self._call("auth.test", json_body={})
        if self._bot_user_id is None:
            await self._remember_bot(data)
        return f"bot {data.get('user')} on {data.get('team')}"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def _call(
        self,
        method: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """One Web API call with the bot token: its answer when `ok`, else ReplyFailed.
        `timeout`: seconds; default, the HTTP client's (TIMEOUT for the channel's own)."""
        url = f"{self._api}/{method}"
        limit: Any = httpx.USE_CLIENT_DEFAULT if timeout is None else timeout
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            if json_body is None:
                response = await self._http.get(url, params=params, headers=headers, timeout=limit)
            else:
                headers["Content-Type"] = "application/json; charset=utf-8"
                content = json.dumps(json_body, ensure_ascii=False).encode()
                response = await self._http.post(
                    url, content=content, headers=headers, timeout=limit
                )
        except httpx.TimeoutException:
            message = f"slack {method}: no answer in time (HTTP timeout)"
            raise ReplyFailed(message, retriable=True) from None
        except httpx.TransportError as exc:
            raise ReplyFailed(f"slack {method}: {exc!r}", retriable=True) from None
        status = response.status_code
        if status == 429:
            wait = response.headers.get("retry-after", "?")
            raise ReplyFailed(
                f"slack {method}: ratelimited (HTTP 429, Retry-After {wait} s)",
                retriable=True,
                retry_after=float(wait) if wait.isdigit() else None,
            )
        if status >= 500:
            raise ReplyFailed(f"slack {method}: HTTP {status}", retriable=True)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ReplyFailed(f"slack {method}: HTTP {status}, not a Slack answer", retriable=False)
        if data.get("ok") is not True:
            error = str(data.get("error") or f"HTTP {status}")
            raise ReplyFailed(f"slack {method}: {error}", retriable=error in RETRIABLE)
        return data


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidMessage("a slack event request's body is not JSON") from None
    if not isinstance(payload, dict):
        raise InvalidMessage("a slack event request's body is not a JSON object")
    return payload


def _metadata(
    payload: Mapping[str, Any], event: Mapping[str, Any], headers: Mapping[str, str]
) -> dict[str, Any]:
    fields = {
        "team_id": payload.get("team_id"),
        "api_app_id": payload.get("api_app_id"),
        "event_type": event.get("type"),
        "event_time": payload.get("event_time"),
        "channel_type": event.get("channel_type"),
        "ts": event.get("ts"),
        "thread_ts": event.get("thread_ts"),
        "retry_num": headers.get("x-slack-retry-num"),
        "retry_reason": headers.get("x-slack-retry-reason"),
    }
    return {k: v for k, v in fields.items() if v is not None}


def _display_name(user: object) -> str:
    if not isinstance(user, dict):
        return ""
    profile = user.get("profile") if isinstance(user.get("profile"), dict) else {}
    for name in (
        profile.get("display_name"),
        profile.get("real_name"),
        user.get("real_name"),
        user.get("name"),
    ):
        if isinstance(name, str) and name.strip():
            return name.strip()
    return ""


def _escape(text: str) -> str:
    """Slack's three control characters, so an agent's `a < b` is not read as markup."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render(message: Message) -> tuple[str, list[dict[str, Any]]]:
    """The reply as chat.postMessage's `text`, and `blocks` when it has images (http(s) URIs):
    text parts as text, data parts as JSON code, other files as links."""
    pieces: list[str] = []
    images: list[dict[str, Any]] = []
    for part in merge_text(list(message.content)):
        if isinstance(part, TextPart):
            pieces.append(_escape(part.text))
        elif isinstance(part, DataPart):
            pieces.append(f"```{_escape(json.dumps(part.data, ensure_ascii=False, indent=2))}```")
        elif isinstance(part, FilePart):
            image = isinstance(part, ImagePart) or (part.mime_type or "").startswith("image/")
            label = part.name or ("image" if image else "file")
            if part.uri is None:
                pieces.append(f"({_escape(label)}: an inline file, not posted to Slack)")
            elif image and part.uri.startswith(("https://", "http://")):
                images.append({"type": "image", "image_url": part.uri, "alt_text": label[:2000]})
            else:
                pieces.append(f"<{_escape(part.uri)}|{_escape(label)}>")
    text = "\n".join(p for p in pieces if p)
    if len(text) > MAX_TEXT:
        text = text[: _cut(text, MAX_TEXT - 1)] + "…"
    if not images:
        if not text.strip():
            raise ReplyFailed("the reply has nothing Slack can show", retriable=False)
        return text, []
    sections = [
        {"type": "section", "text": {"type": "mrkdwn", "text": chunk}}
        for chunk in _chunks(text, SECTION)
    ]
    blocks = (sections + images)[:50]  # Slack's limit per message
    fallback = text or ", ".join(image["alt_text"] for image in images)
    return fallback, blocks


def _chunks(text: str, size: int) -> list[str]:
    """`text` in pieces of at most `size`, cut at a line break where one is near, never inside
    an escape (`&amp;`): every `&` of escaped text starts one."""
    out: list[str] = []
    while len(text) > size:
        cut = text.rfind("\n", size // 2, size)
        if cut == -1:
            cut = _cut(text, size)
        out.append(text[:cut])
        text = text[cut:].lstrip("\n")
    if text.strip():
        out.append(text)
    return out


def _cut(text: str, at: int) -> int:
    """Where to cut `text` at most `at` characters in, not inside an escape (`&amp;` is the
    longest, 5): in escaped text every `&` starts one."""
    amp = text.rfind("&", at - 4, at)
    return at if amp == -1 else amp
