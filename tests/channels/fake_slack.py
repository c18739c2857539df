"""A fake Slack: a real HTTP server speaking the Web API methods the Slack channel calls, and
Events API requests built and signed exactly as Slack sends them.

`FakeSlack` answers `auth.test`, `chat.postMessage` and `users.info` under `/api` like Slack
(HTTP 200 with `{"ok": false, "error": ...}` for a bad token, an unknown channel, an unknown
user), records every call, and fails the next calls on request: `fail_next(n, how="5xx" |
"ratelimited" | "hang")` (a 503; a 429 with Retry-After and `ratelimited`; no answer until the
server stops). `wait_posted(n)` waits for posts without sleeping.

`signed(payload, secret)` is one request as Slack delivers it: compact JSON with `/` escaped,
`X-Slack-Request-Timestamp`, `X-Slack-Signature` (`v0=` + HMAC-SHA256 of `v0:<ts>:<body>`) and,
for a retry, `X-Slack-Retry-Num` and `X-Slack-Retry-Reason`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.workers.fake_server import FakeServer

TOKEN = "xoxb-1111-2222-fake"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_USER_ID = "U0BOTMESH"
BOT_NAME = "meshbot"
TEAM = "Mesh Team"
TEAM_ID = "T0MESH"
APP_ID = "A0MESH"
_BOT_USER = {
    "name": BOT_NAME,
    "real_name": BOT_NAME,
    "is_bot": True,
    "profile": {"display_name": "", "real_name": BOT_NAME},
}
Failure = Literal["5xx", "ratelimited", "hang"]

_seq = itertools.count(1)


@dataclass
class Call:
    """One request the fake received: the API method, its arguments, its headers."""

    method: str
    args: dict[str, Any]
    headers: dict[str, str]


class FakeSlack(FakeServer):
    def __init__(
        self,
        *,
        token: str = TOKEN,
        bot_user_id: str = BOT_USER_ID,
        users: dict[str, dict[str, Any]] | None = None,
        channels: set[str] | None = None,
        outside: set[str] | None = None,
    ) -> None:
        super().__init__(
            [
                Route("/api/auth.test", self._auth_test, methods=["GET", "POST"]),
                Route("/api/chat.postMessage", self._post_message, methods=["POST"]),
                Route("/api/users.info", self._users_info, methods=["GET", "POST"]),
            ]
        )
        self.token = token
        self.bot_user_id = bot_user_id
        # id → users.info's `user`; the bot is a user too.
        self.users = {bot_user_id: _BOT_USER, **(users or {})}
        self.channels = channels  # the ids chat.postMessage knows; None: any
        self.outside = outside or set()  # channels the bot is not in: not_in_channel
        self.calls: list[Call] = []
        self.posted: list[dict[str, Any]] = []  # chat.postMessage's arguments, as taken
        self._failures: deque[tuple[Failure, int]] = deque()
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def fail_next(self, n: int = 1, *, how: Failure = "5xx", retry_after: int = 1) -> None:
        self._failures.extend([(how, retry_after)] * n)

    def called(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    async def wait_posted(self, n: int = 1, *, timeout: float = 20) -> list[dict[str, Any]]:
        """The first `n` posts, once they have come."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.posted) >= n)
        return self.posted[:n]

    async def stop(self) -> None:
        self._released.set()  # a hanging call ends, so the server can shut down
        await super().stop()

    # The Web API --------------------------------------------------------------------------
    async def _read(self, request: Request, method: str) -> tuple[dict[str, Any], Response | None]:
        """Record the call; an answer now (a scripted failure, a bad token) or None."""
        args: dict[str, Any] = dict(request.query_params)
        if request.method == "POST":
            if request.headers.get("content-type", "").startswith("application/json"):
                body = await request.json()
                args.update(body if isinstance(body, dict) else {})
            else:
                args.update(dict(await request.form()))
        self.calls.append(Call(method, args, dict(request.headers)))
        if self._failures:
            how, retry_after = self._failures.popleft()
            if how == "hang":
                await self._released.wait()
                return args, Response(status_code=503)
            if how == "ratelimited":
                headers = {"retry-after": str(retry_after)}
                return args, JSONResponse({"ok": False, "error": "ratelimited"}, 429, headers)
            return args, Response("<html>503 Service Unavailable</html>", 503)
        auth = request.headers.get("authorization")
        if auth is None:
            return args, _error("not_authed")
        if auth != f"Bearer {self.token}":
            return args, _error("invalid_auth")
        return args, None

    async def _auth_test(self, request: Request) -> Response:
        _, answer = await self._read(request, "auth.test")
        return answer or JSONResponse(
            {
                "ok": True,
                "url": "https://meshteam.slack.com/",
                "team": TEAM,
                "user": BOT_NAME,
                "team_id": TEAM_ID,
                "user_id": self.bot_user_id,
                "bot_id": "B0BOTMESH",
                "is_enterprise_install": False,
            }
        )

    async def _users_info(self, request: Request) -> Response:
        args, answer = await self._read(request, "users.info")
        if answer is not None:
            return answer
        user = self.users.get(str(args.get("user")))
        if user is None:
            return _error("user_not_found")
        return JSONResponse({"ok": True, "user": {"id": args["user"], **user}})

    async def _post_message(self, request: Request) -> Response:
        args, answer = await self._read(request, "chat.postMessage")
        if answer is not None:
            return answer
        channel = args.get("channel")
        if not channel or (self.channels is not None and channel not in self.channels):
            return _error("channel_not_found")
        if channel in self.outside:
            return _error("not_in_channel")
        blocks = args.get("blocks")
        if not args.get("text") and not blocks:
            return _error("no_text")
        if blocks is not None and not _valid_blocks(blocks):
            return _error("invalid_blocks")
        ts = f"{int(time.time())}.{next(_seq):06d}"
        async with self._changed:
            self.posted.append(args)
            self._changed.notify_all()
        message = {"type": "message", "user": self.bot_user_id, "bot_id": "B0BOTMESH", "ts": ts}
        message.update({k: args[k] for k in ("text", "thread_ts", "blocks") if k in args})
        return JSONResponse({"ok": True, "channel": channel, "ts": ts, "message": message})


def _error(error: str) -> Response:
    return JSONResponse({"ok": False, "error": error})


def _valid_blocks(blocks: object) -> bool:
    """The block rules the channel relies on: at most 50; sections ≤ 3000 characters; images
    with an http(s) `image_url` and an `alt_text`."""
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 50:
        return False
    for block in blocks:
        if block.get("type") == "section":
            if not 0 < len(block.get("text", {}).get("text", "")) <= 3000:
                return False
        elif block.get("type") == "image":
            if not str(block.get("image_url", "")).startswith(("https://", "http://")):
                return False
            if not block.get("alt_text"):
                return False
        else:
            return False
    return True


# Events API requests ------------------------------------------------------------------------
def sign(body: bytes, timestamp: str, secret: str = SIGNING_SECRET) -> str:
    """Slack's request signature: `v0=` + hex HMAC-SHA256 of `v0:<timestamp>:<body>`."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def signed(
    payload: dict[str, Any],
    secret: str = SIGNING_SECRET,
    *,
    timestamp: int | None = None,
    retry_num: int | None = None,
    retry_reason: str = "http_timeout",
) -> tuple[bytes, dict[str, str]]:
    """The body and headers (lower-case names) of one event request, as Slack sends it."""
    # Slack's JSON is compact, with `/` escaped ("https:\/\/..."): the signature covers those
    # bytes, not a re-encoding.
    body = json.dumps(payload, separators=(",", ":")).replace("/", "\\/").encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "host": "gateway.example",
        "user-agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        "content-type": "application/json",
        "accept": "*/*",
        "accept-encoding": "gzip,deflate",
        "x-slack-request-timestamp": ts,
        "x-slack-signature": sign(body, ts, secret),
    }
    if retry_num is not None:
        headers["x-slack-retry-num"] = str(retry_num)
        headers["x-slack-retry-reason"] = retry_reason
    return body, headers


CHALLENGE = "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"


def url_verification(challenge: str = CHALLENGE) -> dict[str, Any]:
    return {"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge, "type": "url_verification"}


def event_callback(event: dict[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """The envelope of one event, as Slack wraps it."""
    return {
        "token": "Jhj5dZrVaK7ZwHHjRyZWjbDl",
        "team_id": TEAM_ID,
        "context_team_id": TEAM_ID,
        "context_enterprise_id": None,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": "4-eyJldCI6Im1lc3NhZ2UiLCJ0aWQiOiJUME1FU0gifQ",
    }


def new_ts() -> str:
    return f"{int(time.time())}.{next(_seq):06d}"


def _post(kind: str, text: str, channel: str, user: str, ts: str | None) -> dict[str, Any]:
    ts = ts or new_ts()
    return {
        "client_msg_id": str(uuid.uuid4()),
        "type": kind,
        "text": text,
        "user": user,
        "ts": ts,
        "blocks": [
            {
                "type": "rich_text",
                "block_id": uuid.uuid4().hex[:5],
                "elements": [
                    {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
                ],
            }
        ],
        "team": TEAM_ID,
        "channel": channel,
        "event_ts": ts,
    }


def message(
    text: str,
    *,
    channel: str = "C0GENERAL",
    channel_type: str = "channel",
    user: str = "U0ALICE",
    ts: str | None = None,
    thread_ts: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A `message` event (`message.channels`, `message.im`, ...): `channel_type` says where."""
    event = _post("message", text, channel, user, ts)
    event["channel_type"] = channel_type
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
        event["parent_user_id"] = BOT_USER_ID
    event.update(extra)
    return event


def app_mention(
    text: str,
    *,
    channel: str = "C0GENERAL",
    user: str = "U0ALICE",
    ts: str | None = None,
    thread_ts: str | None = None,
) -> dict[str, Any]:
    """An `app_mention` event: like a message, without `channel_type`."""
    event = _post("app_mention", text, channel, user, ts)
    if thread_ts is not None:
        event["thread_ts"] = thread_ts
    return event


def bot_message(text: str, *, channel: str = "C0GENERAL", bot_id: str = "B0OTHER") -> dict:
    """A message another app posted: `subtype: bot_message` and a `bot_id`."""
    ts = new_ts()
    return {
        "type": "message",
        "subtype": "bot_message",
        "text": text,
        "ts": ts,
        "username": "other-app",
        "bot_id": bot_id,
        "channel": channel,
        "event_ts": ts,
        "channel_type": "channel",
    }
