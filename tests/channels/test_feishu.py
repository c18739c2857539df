"""The Feishu/Lark channel against the fake open platform (no gateway): events in (checked,
decrypted, read), replies out (token cached in Redis, refreshed, failures classified), and the
long connection through lark-oapi's own WebSocket client."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agentmesh.broker.servers import free_port
from agentmesh.gateway.channels.base import Answer, Inbound, ReplyFailed, ReplyTarget
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.gateway.channels.feishu import FeishuChannel, FeishuError, decrypt
from agentmesh.gateway.channels.feishu_ws import FeishuLongConnection
from agentmesh.schemas.envelope import DataPart, ImagePart, Message, TextPart
from agentmesh.schemas.errors import InvalidMessage, Unauthorized, Unavailable
from tests.channels.fake_feishu import (
    APP_SECRET,
    BOT_NAME,
    BOT_OPEN_ID,
    ENCRYPT_KEY,
    VERIFICATION_TOKEN,
    FakeFeishu,
    encrypt,
    lowered,
    mention,
    message_event,
    url_verification,
    webhook_request,
)

# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

MakeChannel = Callable[..., FeishuChannel]


@pytest.fixture
async def fake() -> AsyncIterator[FakeFeishu]:
    server = await FakeFeishu().start()
    yield server
    await server.stop()


def config_for(fake: FakeFeishu, **kw: Any) -> ChannelConfig:
    fields: dict[str, Any] = {
        "name": "support",
        "kind": "feishu",
        "base_url": fake.base_url,
        "app_id": fake.app_id,
        "app_secret": APP_SECRET,
        "verification_token": VERIFICATION_TOKEN,
        "agent": "helper",
    }
    fields.update(kw)
    return ChannelConfig(**fields)


@pytest.fixture
async def make_channel(
    fake: FakeFeishu, redis: aioredis.Redis, prefix: str
) -> AsyncIterator[MakeChannel]:
    """`make_channel(encrypt_key=..., ...)`: a channel on the fake (config fields as given)."""
    made: list[FeishuChannel] = []

    def make(**kw: Any) -> FeishuChannel:
        channel = FeishuChannel(config_for(fake, **kw), redis, prefix)
        made.append(channel)
        return channel

    yield make
    for channel in made:
        await channel.aclose()


async def receive(channel: FeishuChannel, event: dict[str, Any], **kw: Any) -> Answer | Inbound:
    body, headers = webhook_request(event, **kw)
    return await channel.receive(body, lowered(headers))


def target(message_id: str = "om_user0001", thread_id: str | None = None) -> ReplyTarget:
    return ReplyTarget("feishu", "support", "oc_chat0001", message_id, thread_id)


# Feishu's algorithm, as lark-oapi has it ---------------------------------------------------------
async def test_events_built_here_are_what_lark_oapi_decrypts_and_verifies() -> None:
    # async: the SDK takes the running loop as its module-level one on import, instead of
    # making one it never closes.
    from lark_oapi.core.model import RawRequest
    from lark_oapi.core.utils.decryptor import AESCipher
    from lark_oapi.event.dispatcher_handler import EventDispatcherHandler

    event = message_event("hi")
    body, headers = webhook_request(event, encrypt_key=ENCRYPT_KEY)
    sealed = json.loads(body)["encrypt"]
    assert json.loads(AESCipher(ENCRYPT_KEY).decrypt_str(sealed)) == event
    assert decrypt(sealed, ENCRYPT_KEY) == AESCipher(ENCRYPT_KEY).decrypt(base64.b64decode(sealed))

    seen: list[Any] = []
    handler = (
        EventDispatcherHandler.builder(ENCRYPT_KEY, VERIFICATION_TOKEN)
        .register_p2_customized_event("im.message.receive_v1", seen.append)
        .build()
    )

    def do(body: bytes, headers: dict[str, str]) -> Any:
        request = RawRequest()
        request.uri, request.body, request.headers = "/events", body, headers
        return handler.do(request)

    assert do(body, headers).status_code == 200
    assert seen[0].event == event["event"]
    tampered = dict(headers, **{"X-Lark-Signature": "0" * 64})
    refused = do(body, tampered)
    assert refused.status_code == 500 and b"signature verification failed" in refused.content
    check_body, check_headers = webhook_request(url_verification("c1"), encrypt_key=ENCRYPT_KEY)
    assert json.loads(do(check_body, check_headers).content) == {"challenge": "c1"}


# In --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encrypt_key", [None, ENCRYPT_KEY])
async def test_a_url_check_is_answered_with_its_challenge(
    make_channel: MakeChannel, encrypt_key: str | None
) -> None:
    channel = make_channel(encrypt_key=encrypt_key)
    answer = await receive(channel, url_verification("ch-123"), encrypt_key=encrypt_key)
    assert answer == Answer({"challenge": "ch-123"})


@pytest.mark.parametrize("encrypt_key", [None, ENCRYPT_KEY])
async def test_a_bad_verification_token_is_unauthorized(
    make_channel: MakeChannel, encrypt_key: str | None
) -> None:
    channel = make_channel(encrypt_key=encrypt_key)
    with pytest.raises(Unauthorized, match="verification token"):
        await receive(channel, url_verification(token="forged"), encrypt_key=encrypt_key)
    with pytest.raises(Unauthorized, match="verification token"):
        await receive(channel, message_event(token="forged"), encrypt_key=encrypt_key)
    event = message_event()
    del event["header"]["token"]
    with pytest.raises(Unauthorized, match="verification token"):
        await receive(channel, event, encrypt_key=encrypt_key)


async def test_a_bad_signature_is_unauthorized(make_channel: MakeChannel) -> None:
    channel = make_channel(encrypt_key=ENCRYPT_KEY)
    body, headers = webhook_request(message_event(), encrypt_key=ENCRYPT_KEY)
    for name, value in [
        ("X-Lark-Signature", "0" * 64),
        ("X-Lark-Request-Nonce", "another-nonce"),
        ("X-Lark-Request-Timestamp", str(int(time.time()) + 1)),
    ]:
        with pytest.raises(Unauthorized, match="X-Lark-Signature"):
            await channel.receive(body, lowered(dict(headers, **{name: value})))
    unsigned = {k: v for k, v in headers.items() if not k.startswith("X-Lark")}
    with pytest.raises(Unauthorized, match="X-Lark-Signature"):
        await channel.receive(body, lowered(unsigned))
    # A plain (unencrypted) body is signed too when the app has an Encrypt Key.
    with pytest.raises(Unauthorized, match="X-Lark-Signature"):
        await channel.receive(json.dumps(message_event()).encode(), {})


async def test_a_signed_request_older_than_a_day_is_refused(make_channel: MakeChannel) -> None:
    channel = make_channel(encrypt_key=ENCRYPT_KEY)
    hours_ago = str(int(time.time()) - 8 * 3600)  # Feishu's last retry comes about 7 h later
    assert isinstance(
        await receive(channel, message_event(), encrypt_key=ENCRYPT_KEY, timestamp=hours_ago),
        Inbound,
    )
    days_ago = str(int(time.time()) - 25 * 3600)
    with pytest.raises(Unauthorized, match="timestamp"):
        await receive(channel, message_event(), encrypt_key=ENCRYPT_KEY, timestamp=days_ago)


async def test_an_event_encrypted_with_another_key_or_none_configured_is_unauthorized(
    make_channel: MakeChannel,
) -> None:
    with pytest.raises(Unauthorized, match="decrypt"):
        await receive(
            make_channel(encrypt_key="another-key"), message_event(), encrypt_key=ENCRYPT_KEY
        )
    with pytest.raises(Unauthorized, match="no encrypt_key"):
        await receive(make_channel(), message_event(), encrypt_key=ENCRYPT_KEY)


async def test_a_body_that_is_not_an_event_is_invalid(make_channel: MakeChannel) -> None:
    channel = make_channel()
    with pytest.raises(InvalidMessage):
        await channel.receive(b"not json", {})
    with pytest.raises(InvalidMessage):
        await channel.receive(b"[1, 2]", {})
    event = message_event()
    del event["event"]["message"]["chat_id"]
    with pytest.raises(InvalidMessage, match="chat_id"):
        await receive(channel, event)


async def test_an_encrypted_p2p_message_is_read(make_channel: MakeChannel) -> None:
    channel = make_channel(encrypt_key=ENCRYPT_KEY, bot_open_id=BOT_OPEN_ID)
    event = message_event("what's the weather?", message_id="om_m1", event_id="ev1")
    inbound = await receive(channel, event, encrypt_key=ENCRYPT_KEY)
    assert inbound == Inbound(
        event_id="ev1",
        chat_id="oc_chat0001",
        message_id="om_m1",
        text="what's the weather?",
        chat_type="p2p",
        mentioned=False,
        thread_id=None,
        sender_id="ou_user0001",
        metadata={
            "message_type": "text",
            "create_time": event["event"]["message"]["create_time"],
            "tenant_key": "736588c9260f175d",
        },
    )
    assert inbound.conversation_key == "oc_chat0001"


async def test_a_group_message_has_its_mentions_resolved_and_the_bots_detected(
    make_channel: MakeChannel, fake: FakeFeishu
) -> None:
    channel = make_channel()  # no bot_open_id: asked of the platform once
    mentions = [mention(1, BOT_NAME, BOT_OPEN_ID), mention(10, "Tom", "ou_tom")]
    event = message_event("@_user_1 ask @_user_10 about it", chat_type="group", mentions=mentions)
    inbound = await receive(channel, event)
    assert isinstance(inbound, Inbound)
    assert (inbound.chat_type, inbound.mentioned) == ("group", True)
    assert inbound.text == f"@{BOT_NAME} ask @Tom about it"
    others = message_event("@_user_1 hi", chat_type="group", mentions=[mention(1, "Tom", "ou_tom")])
    inbound = await receive(channel, others)
    assert isinstance(inbound, Inbound) and not inbound.mentioned and inbound.text == "@Tom hi"
    assert fake.bot_requests == 1
    # Another replica's channel finds the bot in Redis.
    again = await receive(make_channel(), event)
    assert isinstance(again, Inbound) and again.mentioned and fake.bot_requests == 1


async def test_a_thread_is_its_own_conversation_and_a_quoted_reply_is_not(
    make_channel: MakeChannel,
) -> None:
    channel = make_channel()
    threaded = await receive(channel, message_event(thread_id="omt_1", root_id="om_root"))
    assert isinstance(threaded, Inbound)
    assert threaded.thread_id == "omt_1" and threaded.conversation_key == "oc_chat0001:omt_1"
    quoted = await receive(channel, message_event(root_id="om_root"))
    assert isinstance(quoted, Inbound) and quoted.thread_id is None
    assert quoted.metadata["root_id"] == "om_root"


async def test_rich_text_and_other_kinds_of_message_become_text(make_channel: MakeChannel) -> None:
    channel = make_channel(bot_open_id=BOT_OPEN_ID)
    post = {
        "title": "Plan",
        "content": [
            [
                {"tag": "at", "user_id": "@_user_1", "user_name": "Tom"},
                {"tag": "text", "text": " look"},
            ],
            [
                {"tag": "a", "href": "https://x.test", "text": "this"},
                {"tag": "img", "image_key": "i"},
            ],
        ],
    }
    cases = [
        ("post", post, "Plan\n@Tom look\nthis[image]"),
        ("image", {"image_key": "img_1"}, "[image]"),
        ("file", {"file_key": "file_1", "file_name": "a.pdf"}, "[file: a.pdf]"),
        ("sticker", {"file_key": "s"}, "[sticker]"),
        ("vote", {}, "[vote message]"),
    ]
    for kind, content, text in cases:
        got = await receive(channel, message_event(message_type=kind, content=content))
        assert isinstance(got, Inbound) and got.text == text, kind
    image = await receive(channel, message_event(message_type="image", content={"image_key": "k"}))
    assert isinstance(image, Inbound) and image.metadata["image_key"] == "k"


async def test_events_other_than_messages_are_answered_empty(make_channel: MakeChannel) -> None:
    event = message_event()
    event["header"]["event_type"] = "im.chat.member.bot.added_v1"
    assert await receive(make_channel(), event) == Answer({})
    v1 = {"uuid": "u1", "token": VERIFICATION_TOKEN, "ts": "1", "type": "event_callback"}
    v1["event"] = {"type": "app_open"}
    assert await receive(make_channel(), v1) == Answer({})


# Out -------------------------------------------------------------------------------------------
async def test_a_text_reply_is_posted_with_a_token_shared_through_redis(
    make_channel: MakeChannel, fake: FakeFeishu, redis: aioredis.Redis, prefix: str
) -> None:
    first, second = make_channel(), make_channel()  # two replicas
    posted = await first.reply(
        target("om_a"), Message(content=[TextPart(text="hi "), TextPart(text="there")])
    )
    await second.reply(target("om_b", thread_id="omt_1"), Message(content=[TextPart(text="again")]))
    assert [(p.to, p.msg_type, p.content, p.reply_in_thread) for p in fake.replies] == [
        ("om_a", "text", {"text": "hi there"}, False),
        ("om_b", "text", {"text": "again"}, True),
    ]
    assert posted == fake.replies[0].message_id
    assert fake.token_requests == 1
    cached = json.loads(await redis.get(f"{prefix}:channels:feishu:support:tenant_token"))
    assert cached["expires_at"] == pytest.approx(time.time() + 7200, abs=30)


async def test_concurrent_replies_of_one_replica_ask_for_one_token(
    make_channel: MakeChannel, fake: FakeFeishu
) -> None:
    channel = make_channel()
    answers = [Message(content=[TextPart(text=str(n))]) for n in range(5)]
    await asyncio.gather(*(channel.reply(target(), answer) for answer in answers))
    assert fake.token_requests == 1 and len(fake.replies) == 5


async def test_a_lark_app_keeps_its_token_under_its_own_kind(
    make_channel: MakeChannel, fake: FakeFeishu, redis: aioredis.Redis, prefix: str
) -> None:
    await make_channel(kind="lark").reply(target(), Message(content=[TextPart(text="hi")]))
    assert await redis.exists(f"{prefix}:channels:lark:support:tenant_token")
    assert fake.replies[0].content == {"text": "hi"}


async def test_without_redis_replies_still_go_out(fake: FakeFeishu, prefix: str) -> None:
    nowhere = aioredis.Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    channel = FeishuChannel(config_for(fake), nowhere, prefix)
    try:
        for text in ("a", "b"):
            await channel.reply(target(), Message(content=[TextPart(text=text)]))
    finally:
        await channel.aclose()
        await nowhere.aclose()
    assert [p.content["text"] for p in fake.replies] == ["a", "b"] and fake.token_requests == 2


async def test_a_token_with_under_30_minutes_left_is_replaced(
    make_channel: MakeChannel, fake: FakeFeishu
) -> None:
    channel = make_channel()
    fake.token_ttl = 1700
    await channel.reply(target(), Message(content=[TextPart(text="1")]))
    fake.token_ttl = 7200
    await channel.reply(target(), Message(content=[TextPart(text="2")]))
    await channel.reply(target(), Message(content=[TextPart(text="3")]))
    assert fake.token_requests == 2 and len(fake.replies) == 3


async def test_an_expired_token_is_refreshed_and_the_reply_posted(
    make_channel: MakeChannel, fake: FakeFeishu
) -> None:
    channel = make_channel()
    await channel.reply(target(), Message(content=[TextPart(text="before")]))
    fake.expire_tokens()
    await channel.reply(target(), Message(content=[TextPart(text="after")]))
    assert fake.token_requests == 2
    assert [p.content["text"] for p in fake.replies] == ["before", "after"]
    assert fake.calls[-3:] == [("reply", 400), ("token", 200), ("reply", 200)]
    # A token refused twice in a row is a retriable failure.
    fake.expire_tokens()
    fake.fail_next(api="reply", status=400, code=99991663, msg="Invalid access token")
    fake.fail_next(api="reply", status=400, code=99991663, msg="Invalid access token")
    with pytest.raises(ReplyFailed) as failed:
        await channel.reply(target(), Message(content=[TextPart(text="lost")]))
    assert failed.value.retriable


async def test_a_failing_reply_api_is_retriable_then_recovers(
    make_channel: MakeChannel, fake: FakeFeishu
) -> None:
    channel = make_channel()
    answer = Message(content=[TextPart(text="eventually")])
    fake.fail_next(2, status=503)
    for _ in range(2):
        with pytest.raises(ReplyFailed) as failed:
            await channel.reply(target(), answer)
        assert failed.value.retriable and "HTTP 503" in str(failed.value)
    fake.fail_next(status=400, code=99991400, msg="request trigger frequency limit")
    with pytest.raises(FeishuError) as limited:
        await channel.reply(target(), answer)
    assert limited.value.retriable and limited.value.code == 99991400
    await channel.reply(target(), answer)
    # Posted again (the answer to a lost response), the same reply is dropped by its uuid.
    await channel.reply(target(), answer)
    assert [p.content["text"] for p in fake.replies] == ["eventually"] and fake.duplicates == 1


async def test_a_reply_the_platform_refuses_is_not_retriable_and_names_its_code(
    make_channel: MakeChannel, fake: FakeFeishu
) -> None:
    fake.fail_next(status=400, code=230002, msg="Bot/User can NOT be out of the chat.")
    with pytest.raises(FeishuError) as refused:
        await make_channel().reply(target(), Message(content=[TextPart(text="x")]))
    assert not refused.value.retriable
    assert (refused.value.code, refused.value.msg) == (
        230002,
        "Bot/User can NOT be out of the chat.",
    )
    assert "230002" in str(refused.value)
    with pytest.raises(FeishuError, match="empty") as empty:
        await make_channel().reply(target(), Message())
    assert not empty.value.retriable


async def test_an_unreachable_platform_is_retriable(
    redis: aioredis.Redis, prefix: str, fake: FakeFeishu
) -> None:
    config = config_for(fake, base_url=f"http://127.0.0.1:{free_port()}")
    channel = FeishuChannel(config, redis, prefix)
    try:
        with pytest.raises(ReplyFailed) as failed:
            await channel.reply(target(), Message(content=[TextPart(text="x")]))
        assert failed.value.retriable
    finally:
        await channel.aclose()


async def test_an_image_reply_is_uploaded_then_sent_after_its_text(
    make_channel: MakeChannel, fake: FakeFeishu
) -> None:
    answer = Message(
        content=[
            TextPart(text="the chart:"),
            ImagePart(bytes=PNG, mime_type="image/png", name="c.png"),
        ]
    )
    posted = await make_channel().reply(target(), answer)
    text, image = fake.replies
    assert (text.msg_type, text.content, posted) == (
        "text",
        {"text": "the chart:"},
        text.message_id,
    )
    assert image.msg_type == "image" and fake.images[image.content["image_key"]] == PNG


async def test_a_post_data_part_is_sent_as_rich_text(
    make_channel: MakeChannel, fake: FakeFeishu
) -> None:
    post = {
        "title": "Done",
        "content": [
            [
                {"tag": "text", "text": "all "},
                {"tag": "a", "text": "here", "href": "https://x.test"},
            ]
        ],
    }
    await make_channel().reply(target(), Message(content=[DataPart(data={"post": post})]))
    assert [(p.msg_type, p.content) for p in fake.replies] == [("post", {"zh_cn": post})]


async def test_check_names_the_bot_or_says_why_not(make_channel: MakeChannel) -> None:
    assert await make_channel().check() == f"bot {BOT_NAME} ({BOT_OPEN_ID})"
    with pytest.raises(FeishuError, match="10014") as failed:
        await make_channel(app_secret="wrong").check()
    assert not failed.value.retriable


# The long connection ---------------------------------------------------------------------------
def feishu_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("feishu-ws-")]


async def test_the_long_connection_hands_events_to_the_callback_and_stops_cleanly(
    fake: FakeFeishu, make_channel: MakeChannel
) -> None:
    channel = make_channel(bot_open_id=BOT_OPEN_ID)
    read: list[Answer | Inbound] = []

    async def on_event(event: dict[str, Any]) -> None:
        read.append(await channel.read_event(event))

    connection = FeishuLongConnection(config_for(fake), on_event)
    await connection.start()
    try:
        assert connection.connected and fake.ws_connections == 1
        event = message_event(
            "@_user_1 hi", chat_type="group", mentions=[mention(1, BOT_NAME, BOT_OPEN_ID)]
        )
        ack = await fake.push_event(event)
        assert ack["code"] == 200
        (inbound,) = read
        assert isinstance(inbound, Inbound)
        assert (inbound.event_id, inbound.text, inbound.mentioned) == (
            event["header"]["event_id"],
            f"@{BOT_NAME} hi",
            True,
        )
        # The platform drops the connection: the SDK connects again by itself.
        await fake.drop_connections()
        await fake.until_ws(2, open_now=1)
        assert (await fake.push_event(message_event("again")))["code"] == 200
        assert len(read) == 2
    finally:
        await connection.stop()
    assert not feishu_threads() and not connection.connected
    await fake.until_ws(2, open_now=0)


async def test_an_event_the_callback_fails_is_answered_500(
    fake: FakeFeishu,
) -> None:
    async def on_event(event: dict[str, Any]) -> None:
        raise RuntimeError("the pipeline is down")

    async with FeishuLongConnection(config_for(fake), on_event):
        ack = await fake.push_event(message_event())
    assert ack["code"] == 500 and not feishu_threads()


async def test_a_long_connection_with_bad_credentials_does_not_start(fake: FakeFeishu) -> None:
    async def on_event(event: dict[str, Any]) -> None:
        raise AssertionError("no event expected")

    connection = FeishuLongConnection(config_for(fake, app_secret="wrong"), on_event)
    with pytest.raises(Unauthorized, match="10014"):
        await connection.start(timeout=20)
    assert not feishu_threads() and fake.ws_connections == 0


def test_encrypt_here_and_decrypt_there_round_trip() -> None:
    assert decrypt(encrypt(b'{"a": 1}'), ENCRYPT_KEY) == b'{"a": 1}'


async def test_a_long_connection_that_cannot_connect_is_unavailable_and_leaves_nothing(
    fake: FakeFeishu,
) -> None:
    async def on_event(event: dict[str, Any]) -> None:
        raise AssertionError("no event expected")

    nowhere = config_for(fake, base_url=f"http://127.0.0.1:{free_port()}")
    connection = FeishuLongConnection(nowhere, on_event)
    with pytest.raises(Unavailable, match="not connected within 1 s"):
        await connection.start(timeout=1)  # the SDK retries (after a random pause) meanwhile
    assert not feishu_threads()
