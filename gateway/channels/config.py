"""The mesh file's `channels:` section: the chat apps whose messages reach mesh agents.

channels:
  - name: support                      # its events come to /channels/feishu/support/events
    kind: feishu                       # feishu | lark (Feishu's international twin) | slack
    app_id: cli_a1b2c3
    app_secret: ${FEISHU_APP_SECRET}
    verification_token: ${FEISHU_VERIFICATION_TOKEN}
    encrypt_key: ${FEISHU_ENCRYPT_KEY}  # optional: encrypted and signed events
    mode: webhook                      # or long_connection (Feishu's WebSocket event mode)
    agent: helper                      # who answers by default (any mesh agent id)
    chats: {oc_8a9b: sales-agent}      # per chat
  - name: team
    kind: slack
    bot_token: ${SLACK_BOT_TOKEN}
    signing_secret: ${SLACK_SIGNING_SECRET}
    agent_type: assistant              # any agent of that type, instead of one id

In group chats an agent answers only when the app's bot is mentioned; in direct chats always.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentmesh.broker.subjects import ID_PATTERN, ID_RE

Kind = Literal["feishu", "lark", "slack"]
BASE_URLS = {
    "feishu": "https://open.feishu.cn",
    "lark": "https://open.larksuite.com",
    "slack": "https://slack.com/api",
}
_NEEDS = {
    "feishu": ("app_id", "app_secret", "verification_token"),
    "lark": ("app_id", "app_secret", "verification_token"),
    "slack": ("bot_token", "signing_secret"),
}
_SECRET = Field(None, min_length=1, repr=False)


class ChannelConfig(BaseModel):
    """One app of one chat platform."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=ID_PATTERN, description="Its path segment and its name in logs.")
    kind: Kind
    base_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+[^\s?#]*$",
        description="The platform's API (default: Feishu's, Lark's or Slack's public one).",
    )
    mode: Literal["webhook", "long_connection"] = Field(
        "webhook",
        description="webhook: the platform POSTs events to the gateway; long_connection "
        "(Feishu, Lark): one gateway replica holds the platform's WebSocket for them.",
    )
    # Routing.
    agent: str | None = Field(None, pattern=ID_PATTERN, description="The default agent's id.")
    agent_type: str | None = Field(
        None, pattern=ID_PATTERN, description="Or any agent of this type."
    )
    chats: dict[str, str] = Field(
        default_factory=dict, description="Chat id → the agent id that answers in that chat."
    )
    # Feishu / Lark.
    app_id: str | None = Field(None, min_length=1)
    app_secret: str | None = _SECRET
    verification_token: str | None = _SECRET
    encrypt_key: str | None = _SECRET
    bot_open_id: str | None = Field(
        None, description="The bot's open_id (default: asked of the platform once)."
    )
    # Slack.
    bot_token: str | None = _SECRET
    signing_secret: str | None = _SECRET
    bot_user_id: str | None = Field(None, description="Default: auth.test's user_id.")

    @model_validator(mode="after")
    def _complete(self) -> ChannelConfig:
        missing = [f for f in _NEEDS[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.kind} channel needs {', '.join(missing)}")
        if self.agent is not None and self.agent_type is not None:
            raise ValueError("give agent or agent_type, not both")
        if self.agent is None and self.agent_type is None and not self.chats:
            raise ValueError("say who answers: agent, agent_type, or chats")
        if self.mode == "long_connection" and self.kind == "slack":
            raise ValueError("long_connection is Feishu's and Lark's mode; Slack uses webhooks")
        bad = [agent for agent in self.chats.values() if not ID_RE.fullmatch(agent)]
        if bad:
            raise ValueError(f"chats: {bad[0]!r} is not an agent id")
        return self

    @property
    def api_base(self) -> str:
        return (self.base_url or BASE_URLS[self.kind]).rstrip("/")

    @property
    def platform(self) -> str:
        """The module that speaks it: Lark is Feishu's protocol."""
        return "feishu" if self.kind == "lark" else self.kind

    def route(self, chat_id: str) -> tuple[str | None, str | None]:
        """(agent id, agent type) that answers in `chat_id`; (None, None): nobody."""
        if chat_id in self.chats:
            return self.chats[chat_id], None
        return self.agent, self.agent_type


class ChannelsSection(BaseModel):
    """The `channels:` list, names unique per kind."""

    model_config = ConfigDict(extra="forbid")

    channels: list[ChannelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> ChannelsSection:
        seen: set[tuple[str, str]] = set()
        for channel in self.channels:
            key = (channel.kind, channel.name)
            if key in seen:
                raise ValueError(f"two {channel.kind} channels are named {channel.name!r}")
            seen.add(key)
        return self
