"""What a chat platform is to the mesh: a `Channel` turns the platform's event requests into
`Inbound` messages (or an immediate answer, such as a URL check) and posts an agent's reply back.
Everything else — de-duplication, routing to an agent, the durable task, delivering the reply,
retries — is the platform-independent pipeline (pipeline.py, replies.py), so another platform is
one module implementing this interface (feishu.py, slack.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from agentmesh.schemas.envelope import Message


@dataclass(frozen=True, slots=True)
class Answer:
    """Answer the platform's request with this, now, and hand nothing to an agent (a URL
    check's challenge; an event the mesh does not take, with `{}`)."""

    body: dict[str, Any] = field(default_factory=dict)
    status: int = 200


@dataclass(frozen=True, slots=True)
class Inbound:
    """One chat message for an agent, as the platform delivered it."""

    event_id: str  # the platform's delivery id: a retried delivery has the same one
    chat_id: str  # where the reply goes (Feishu chat_id, Slack channel)
    message_id: str  # the message the reply answers (Feishu message_id, Slack ts)
    text: str  # mentions resolved to names
    chat_type: Literal["p2p", "group"]
    mentioned: bool  # the app's bot is among the mentions
    thread_id: str | None = None  # a thread within the chat: its own conversation
    sender_id: str | None = None
    sender_name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # platform fields worth keeping

    @property
    def conversation_key(self) -> str:
        """The chat, or the thread within it: one conversation (and runtime session) each."""
        return self.chat_id if self.thread_id is None else f"{self.chat_id}:{self.thread_id}"


@dataclass(frozen=True, slots=True)
class ReplyTarget:
    """Where a reply goes: stored with the task (metadata `channel`) so any replica posts it."""

    kind: str
    name: str
    chat_id: str
    message_id: str
    thread_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "chat_id": self.chat_id,
            "message_id": self.message_id,
            "thread_id": self.thread_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplyTarget:
        return cls(
            kind=str(data["kind"]),
            name=str(data["name"]),
            chat_id=str(data["chat_id"]),
            message_id=str(data["message_id"]),
            thread_id=None if data.get("thread_id") is None else str(data["thread_id"]),
        )


class ReplyFailed(Exception):
    """The platform did not take a reply. `retriable`: try again later (a 5xx, a timeout, a
    rate limit, an expired token), not before `retry_after` seconds if the platform said;
    otherwise the reply can never be posted (bad chat, no permission) and is recorded on the
    task at once."""

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after


class Channel(Protocol):
    """One configured app of one platform."""

    kind: ClassVar[str]  # the platform: "feishu" (also Lark), "slack"
    name: str  # the app's name in the mesh file: `/channels/<kind>/<name>/events`

    async def receive(self, body: bytes, headers: Mapping[str, str]) -> Answer | Inbound:
        """Check and read one event request: the raw body (it is what was signed) and its
        headers (lower-case names).

        Raises:
            Unauthorized: a bad token or signature (answered 401; it never reaches an agent).
            InvalidMessage: a body that is not an event of the platform (400).
        """
        ...

    async def reply(self, target: ReplyTarget, message: Message) -> str:
        """Post `message` (text; rich text or images where the platform has them) as the reply
        to `target`; the posted message's id.

        Raises:
            ReplyFailed: the platform did not take it.
        """
        ...

    async def check(self) -> str:
        """Check the credentials against the platform (`agentmesh channels test`): what it
        said, in a line (the bot's name). Raises ReplyFailed when they do not work."""
        ...

    async def aclose(self) -> None:
        """Close the HTTP client."""
        ...
