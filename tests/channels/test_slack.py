"""The Slack channel against a fake Slack (a real HTTP server) and real Redis, no gateway:
signed Events API requests in, chat.postMessage out, and the requests signed here checked with
the official slack_sdk verifier."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from slack_sdk.signature import SignatureVerifier

from agentmesh.broker.servers import free_port
from agentmesh.gateway.channels.base import Answer, Inbound, ReplyFailed, ReplyTarget
from agentmesh.gateway.channels.config import ChannelConfig
from agentmesh.gateway.channels.slack import SlackChannel
from agentmesh.schemas.envelope import DataPart, FilePart, ImagePart, Message, TextPart
from agentmesh.schemas.errors import ErrorCode, InvalidMessage, Unauthorized
from tests.channels.fake_slack import (
    BOT_NAME,
    BOT_USER_ID,
    SIGNING_SECRET,
    TEAM,
    TOKEN,
    FakeSlack,
    app_mention,
    bot_message,
    event_callback,
    message,
    new_ts,
    sign,
    signed,
    url_verification,
)

USERS = {
    "U0ALICE": {"name": "alice", "real_name": "Alice Liddell", "profile": {"display_name": "ali"}},
    "U0BOB": {"name": "bob", "real_name": "Bob Builder", "profile": {"display_name": ""}},
}


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(users=USERS, outside={"C0OUTSIDE"}).start()
    yield fake
    await fake.stop()


def config(slack: FakeSlack, **kw: Any) -> ChannelConfig:
    fields: dict[str, Any] = {
        "name": "team",
        "kind": "slack",
        "bot_token": TOKEN,
        "signing_secret": SIGNING_SECRET,
        "base_url": slack.base_url,
        "agent": "helper",
        **kw,
    }
    return ChannelConfig(**fields)


@pytest.fixture
async def channel(
    slack: FakeSlack, redis: aioredis.Redis, prefix: str
) -> AsyncIterator[SlackChannel]:
    made = SlackChannel(config(slack), redis, prefix)
    yield made
    await made.aclose()


async def inbound(channel: SlackChannel, payload: dict[str, Any], **kw: Any) -> Inbound:
    got = await channel.receive(*signed(payload, **kw))
    assert isinstance(got, Inbound), got
    return got


async def ignored(channel: SlackChannel, payload: dict[str, Any]) -> bool:
    return await channel.receive(*signed(payload)) == Answer({})


# Signatures -----------------------------------------------------------------------------------
def test_requests_built_here_are_signed_as_slack_sdk_verifies() -> None:
    verifier = SignatureVerifier(SIGNING_SECRET)
    body, headers = signed(event_callback(message("héllo https://example.com/a")))
    assert b"https:\\/\\/example.com\\/a" in body  # Slack's escaped slashes: raw bytes are signed
    assert verifier.is_valid_request(body, headers)
    ts = headers["x-slack-request-timestamp"]
    assert sign(body, ts) == verifier.generate_signature(timestamp=ts, body=body)
    assert not verifier.is_valid_request(body + b" ", headers)
    assert not SignatureVerifier("another-secret").is_valid_request(body, headers)


async def test_url_verification_is_answered_with_its_challenge(channel: SlackChannel) -> None:
    answer = await channel.receive(*signed(url_verification("chal-123")))
    assert answer == Answer({"challenge": "chal-123"})


@pytest.mark.parametrize(
    "tamper",
    ["body", "secret", "no signature", "no timestamp", "not digits", "no v0"],
)
async def test_a_request_not_signed_by_slack_is_refused(channel: SlackChannel, tamper: str) -> None:
    body, headers = signed(
        url_verification(), "wrong-secret" if tamper == "secret" else SIGNING_SECRET
    )
    if tamper == "body":
        body = body.replace(b"url_verification", b"url_verificatioN")
    elif tamper == "no signature":
        del headers["x-slack-signature"]
    elif tamper == "no timestamp":
        del headers["x-slack-request-timestamp"]
    elif tamper == "not digits":
        headers["x-slack-request-timestamp"] += ".5"
    elif tamper == "no v0":
        headers["x-slack-signature"] = headers["x-slack-signature"].removeprefix("v0=")
    with pytest.raises(Unauthorized) as refused:
        await channel.receive(body, headers)
    assert refused.value.code is ErrorCode.UNAUTHORIZED
    if tamper != "not digits":  # slack_sdk raises ValueError on it: the channel checks first
        assert not SignatureVerifier(SIGNING_SECRET).is_valid_request(body, headers)


@pytest.mark.parametrize("skew", [-301, 301])
async def test_a_request_more_than_five_minutes_off_is_refused(
    channel: SlackChannel, skew: int
) -> None:
    body, headers = signed(url_verification(), timestamp=int(time.time()) + skew)
    assert not SignatureVerifier(SIGNING_SECRET).is_valid_request(body, headers)
    with pytest.raises(Unauthorized, match="5 minutes"):
        await channel.receive(body, headers)
    # Four minutes is within Slack's rule.
    body, headers = signed(url_verification("ok"), timestamp=int(time.time()) - 240)
    assert await channel.receive(body, headers) == Answer({"challenge": "ok"})


async def test_a_body_that_is_not_a_slack_event_is_invalid(channel: SlackChannel) -> None:
    for body in (b"not json", b"[1, 2]", b'{"type": "event_callback", "event": {}}'):
        ts = str(int(time.time()))
        with pytest.raises(InvalidMessage):
            await channel.receive(
                body, {"x-slack-request-timestamp": ts, "x-slack-signature": sign(body, ts)}
            )


# Events in ------------------------------------------------------------------------------------
async def test_a_direct_message_is_a_p2p_inbound_with_names_resolved(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    event = message(
        "hi <@U0BOB>, see <#C0GENERAL|general> &amp; <https://example.com|the site> &lt;3",
        channel="D0DIRECT",
        channel_type="im",
    )
    payload = event_callback(event)
    got = await inbound(channel, payload)
    assert got.event_id == payload["event_id"]
    assert (got.chat_id, got.message_id, got.chat_type) == ("D0DIRECT", event["ts"], "p2p")
    assert got.thread_id is None  # a DM is answered inline: the DM is one conversation
    assert got.conversation_key == "D0DIRECT"
    assert not got.mentioned
    assert got.text == "hi @Bob Builder, see #general & the site (https://example.com) <3"
    assert (got.sender_id, got.sender_name) == ("U0ALICE", "ali")
    assert got.metadata["team_id"] == "T0MESH" and got.metadata["channel_type"] == "im"
    assert "retry_num" not in got.metadata
    # The bot's id came from auth.test, with the bot token.
    assert [c.headers["authorization"] for c in slack.called("auth.test")] == [f"Bearer {TOKEN}"]


async def test_a_dm_in_a_thread_is_the_thread_s_conversation(channel: SlackChannel) -> None:
    root = new_ts()
    got = await inbound(
        channel,
        event_callback(message("more", channel="D0DIRECT", channel_type="im", thread_ts=root)),
    )
    assert got.thread_id == root and got.conversation_key == f"D0DIRECT:{root}"


async def test_an_app_mention_in_a_channel_is_one_inbound_in_a_new_thread(
    channel: SlackChannel,
) -> None:
    text = f"<@{BOT_USER_ID}> what time is it?"
    mention = app_mention(text)
    got = await inbound(channel, event_callback(mention))
    assert got.chat_type == "group" and got.mentioned
    assert got.text == f"@{BOT_NAME} what time is it?"
    # A top-level post: its answer starts a thread, which is the conversation from now on.
    assert got.thread_id == mention["ts"]
    assert got.conversation_key == f"C0GENERAL:{mention['ts']}"
    # The same post as a message event (message.channels) is not a second piece of work.
    twin = message(text, ts=mention["ts"])
    assert await ignored(channel, event_callback(twin))


async def test_an_app_mention_in_a_thread_keeps_the_thread(channel: SlackChannel) -> None:
    root = new_ts()
    got = await inbound(
        channel, event_callback(app_mention(f"<@{BOT_USER_ID}> and now?", thread_ts=root))
    )
    assert got.thread_id == root and got.message_id != root
    assert got.conversation_key == f"C0GENERAL:{root}"


async def test_a_channel_message_without_a_mention_is_handed_on_unmentioned(
    channel: SlackChannel,
) -> None:
    got = await inbound(channel, event_callback(message("just chatting")))
    assert got.chat_type == "group" and not got.mentioned  # the pipeline leaves it


async def test_a_group_dm_is_a_group(channel: SlackChannel) -> None:
    got = await inbound(
        channel, event_callback(app_mention(f"<@{BOT_USER_ID}> hi", channel="G0MPIM"))
    )
    assert got.chat_type == "group" and got.mentioned


async def test_an_app_mention_in_a_dm_is_left_to_its_message_event(channel: SlackChannel) -> None:
    assert await ignored(channel, event_callback(app_mention("<@U0BOTMESH> hi", channel="D0X")))
    got = await inbound(
        channel,
        event_callback(message(f"<@{BOT_USER_ID}> hi", channel="D0X", channel_type="im")),
    )
    assert got.chat_type == "p2p" and got.mentioned


async def test_bots_edits_and_other_events_are_not_work(channel: SlackChannel) -> None:
    assert await ignored(channel, event_callback(bot_message("beep")))
    # The bot's own post, as Slack echoes it to message.channels: a bot_id and its user.
    assert await ignored(channel, event_callback(message("my answer", bot_id="B0BOTMESH")))
    assert await ignored(channel, event_callback(message("my answer", user=BOT_USER_ID)))
    edit = message("edited", subtype="message_changed")
    assert await ignored(channel, event_callback(edit))
    join = message("<@U0BOB> has joined the channel", subtype="channel_join")
    assert await ignored(channel, event_callback(join))
    reaction = {"type": "reaction_added", "user": "U0ALICE", "reaction": "thumbsup"}
    assert await ignored(channel, event_callback(reaction))
    assert await ignored(channel, {"type": "app_rate_limited", "token": "x", "team_id": "T0"})


async def test_a_retry_carries_the_first_delivery_s_event_id(channel: SlackChannel) -> None:
    payload = event_callback(app_mention(f"<@{BOT_USER_ID}> once"), event_id="Ev0RETRIED")
    first = await inbound(channel, payload)
    again = await inbound(channel, payload, retry_num=1)
    assert first.event_id == again.event_id == "Ev0RETRIED"
    assert again.metadata["retry_num"] == "1"
    assert again.metadata["retry_reason"] == "http_timeout"


async def test_names_and_the_bot_id_are_asked_once_for_all_replicas(
    slack: FakeSlack, redis: aioredis.Redis, prefix: str
) -> None:
    text = "<@U0BOB> <@U0NOBODY> <@U0BOB|bobby>"
    replicas = [SlackChannel(config(slack), redis, prefix) for _ in range(2)]
    try:
        for replica in replicas:
            got = await inbound(replica, event_callback(message(text)))
            # An unknown user is shown by id (remembered for a while too).
            assert got.text == "@Bob Builder @U0NOBODY @Bob Builder"
    finally:
        for replica in replicas:
            await replica.aclose()
    assert len(slack.called("auth.test")) == 1
    asked = sorted(c.args["user"] for c in slack.called("users.info"))
    assert asked == ["U0ALICE", "U0BOB", "U0NOBODY"]
    assert await redis.get(f"{prefix}:channels:slack:team:bot_user") == BOT_USER_ID.encode()


async def test_a_configured_bot_user_id_needs_no_auth_test(
    slack: FakeSlack, redis: aioredis.Redis, prefix: str
) -> None:
    made = SlackChannel(config(slack, bot_user_id="U0OTHERBOT"), redis, prefix)
    try:
        got = await inbound(made, event_callback(message("<@U0OTHERBOT> hi", channel_type="im")))
        assert got.mentioned
    finally:
        await made.aclose()
    assert slack.called("auth.test") == []


async def test_a_failing_name_lookup_shows_the_id_and_is_asked_again(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    await channel.check()  # the bot's id known, so the next failure hits users.info
    slack.fail_next(2)
    got = await inbound(channel, event_callback(message("hi <@U0BOB>")))
    assert got.text == "hi @U0BOB" and got.sender_name is None
    got = await inbound(channel, event_callback(message("hi <@U0BOB>")))
    assert got.text == "hi @Bob Builder" and got.sender_name == "ali"


# Replies out ----------------------------------------------------------------------------------
def target(chat_id: str = "C0GENERAL", thread_id: str | None = "1700000000.000100") -> ReplyTarget:
    return ReplyTarget(
        kind="slack",
        name="team",
        chat_id=chat_id,
        message_id="1700000000.000100",
        thread_id=thread_id,
    )


async def test_a_reply_is_posted_in_the_thread_with_the_bot_token(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    ts = await channel.reply(target(), Message(content=[TextPart(text="it is 12:00 & a < b")]))
    (call,) = slack.called("chat.postMessage")
    assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert call.headers["content-type"] == "application/json; charset=utf-8"
    assert call.args == {
        "channel": "C0GENERAL",
        "text": "it is 12:00 &amp; a &lt; b",  # Slack's control characters escaped
        "thread_ts": "1700000000.000100",
    }
    assert ts and ts.count(".") == 1


async def test_a_reply_in_a_dm_is_posted_inline(channel: SlackChannel, slack: FakeSlack) -> None:
    await channel.reply(target("D0DIRECT", None), Message(content=[TextPart(text="hello")]))
    assert slack.posted == [{"channel": "D0DIRECT", "text": "hello"}]


async def test_a_reply_with_images_posts_image_blocks(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    reply = Message(
        content=[
            TextPart(text="here is the chart"),
            ImagePart(uri="https://img.example/chart.png", name="chart"),
            FilePart(uri="https://img.example/photo.jpg", mime_type="image/jpeg"),
            FilePart(uri="https://files.example/report.pdf", name="report.pdf"),
            DataPart(data={"rows": 3}),
        ]
    )
    await channel.reply(target(), reply)
    (posted,) = slack.posted
    assert posted["text"].startswith("here is the chart")
    assert "<https://files.example/report.pdf|report.pdf>" in posted["text"]
    assert '"rows": 3' in posted["text"]
    assert [b["type"] for b in posted["blocks"]] == ["section", "image", "image"]
    assert posted["blocks"][1] == {
        "type": "image",
        "image_url": "https://img.example/chart.png",
        "alt_text": "chart",
    }
    assert posted["blocks"][2]["alt_text"] == "image"


async def test_a_long_reply_with_an_image_is_cut_into_sections(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    text = "\n".join(f"line {i} " + "&" * 10 for i in range(200))  # 11,000+ escaped characters
    reply = Message(content=[TextPart(text=text), ImagePart(uri="https://img.example/a.png")])
    await channel.reply(target(), reply)  # the fake refuses a section over 3,000 characters
    sections = [b["text"]["text"] for b in slack.posted[0]["blocks"] if b["type"] == "section"]
    assert len(sections) > 3
    assert "\n".join(sections).replace("&amp;", "&") == text


async def test_a_reply_longer_than_slack_takes_is_cut_between_escapes(
    channel: SlackChannel, slack: FakeSlack
) -> None:
    await channel.reply(target(), Message(content=[TextPart(text="x" + "&" * 10_000)]))
    posted = slack.posted[0]["text"]
    assert len(posted) < 40_000 and posted.endswith("&amp;…")


async def test_a_reply_with_nothing_to_show_is_not_retried(channel: SlackChannel) -> None:
    with pytest.raises(ReplyFailed) as failed:
        await channel.reply(target(), Message(content=[]))
    assert not failed.value.retriable


@pytest.mark.parametrize("how", ["5xx", "ratelimited"])
async def test_a_5xx_or_a_rate_limit_is_retriable_and_the_retry_lands(
    channel: SlackChannel, slack: FakeSlack, how: str
) -> None:
    slack.fail_next(1, how=how, retry_after=7)  # type: ignore[arg-type]
    with pytest.raises(ReplyFailed) as failed:
        await channel.reply(target(), Message(content=[TextPart(text="hi")]))
    assert failed.value.retriable
    assert (
        "ratelimited (HTTP 429, Retry-After 7 s)" if how == "ratelimited" else "HTTP 503"
    ) in str(failed.value)
    await channel.reply(target(), Message(content=[TextPart(text="hi")]))
    assert len(slack.posted) == 1


async def test_a_timeout_is_retriable(slack: FakeSlack, redis: aioredis.Redis, prefix: str) -> None:
    async with httpx.AsyncClient(timeout=0.3) as http:
        made = SlackChannel(config(slack), redis, prefix, http=http)
        slack.fail_next(1, how="hang")
        with pytest.raises(ReplyFailed) as failed:
            await made.reply(target(), Message(content=[TextPart(text="hi")]))
        assert failed.value.retriable and "no answer" in str(failed.value)
        await made.aclose()  # a client passed in stays open: it is the caller's
        assert not http.is_closed


async def test_an_unreachable_slack_is_retriable(redis: aioredis.Redis, prefix: str) -> None:
    gone = ChannelConfig(
        name="team",
        kind="slack",
        bot_token=TOKEN,
        signing_secret=SIGNING_SECRET,
        base_url=f"http://127.0.0.1:{free_port()}/api",
        agent="helper",
    )
    made = SlackChannel(gone, redis, prefix)
    try:
        with pytest.raises(ReplyFailed) as failed:
            await made.reply(target(), Message(content=[TextPart(text="hi")]))
        assert failed.value.retriable
    finally:
        await made.aclose()


@pytest.mark.parametrize(
    ("chat_id", "token", "error"),
    [
        ("C0OUTSIDE", TOKEN, "not_in_channel"),
        ("C0GENERAL", "xoxb-revoked", "invalid_auth"),
    ],
)
async def test_slack_errors_that_never_succeed_are_not_retriable(
    slack: FakeSlack, redis: aioredis.Redis, prefix: str, chat_id: str, token: str, error: str
) -> None:
    made = SlackChannel(config(slack, bot_token=token), redis, prefix)
    try:
        with pytest.raises(ReplyFailed) as failed:
            await made.reply(target(chat_id), Message(content=[TextPart(text="hi")]))
    finally:
        await made.aclose()
    assert not failed.value.retriable
    assert str(failed.value) == f"slack chat.postMessage: {error}"


async def test_an_unknown_channel_is_not_retriable(redis: aioredis.Redis, prefix: str) -> None:
    fake = await FakeSlack(channels={"C0GENERAL"}).start()
    made = SlackChannel(config(fake), redis, prefix)
    try:
        with pytest.raises(ReplyFailed, match="channel_not_found") as failed:
            await made.reply(target("C0GONE"), Message(content=[TextPart(text="hi")]))
        assert not failed.value.retriable
    finally:
        await made.aclose()
        await fake.stop()


# check() --------------------------------------------------------------------------------------
async def test_check_names_the_bot_and_its_team(channel: SlackChannel, slack: FakeSlack) -> None:
    assert await channel.check() == f"bot {BOT_NAME} on {TEAM}"
    # It also taught the channel its bot's id: no auth.test for the next event.
    await inbound(channel, event_callback(message("hi")))
    assert len(slack.called("auth.test")) == 1


async def test_check_with_a_bad_token_fails(
    slack: FakeSlack, redis: aioredis.Redis, prefix: str
) -> None:
    made = SlackChannel(config(slack, bot_token="xoxb-wrong"), redis, prefix)
    try:
        with pytest.raises(ReplyFailed, match="invalid_auth") as failed:
            await made.check()
        assert not failed.value.retriable
    finally:
        await made.aclose()
