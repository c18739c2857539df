"""The LLM routes' request bodies as the gateway checks them, and as the OpenAPI document says.

Only the fields the gateway reads or translates are typed; every other field passes through to
the worker (`extra="allow"`). A body that does not match is 400 INVALID_MESSAGE, as the OpenAI
and Anthropic APIs answer, in the route's own error format.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from agentmesh.gateway.errors import reasons
from agentmesh.schemas.errors import InvalidMessage


class _Open(BaseModel):
    # Strict: what JSON Schema says (no "5" for 5); open: unknown fields pass through.
    model_config = ConfigDict(extra="allow", strict=True)


def check(model: type[BaseModel], body: dict[str, Any]) -> None:
    """Raises:
    InvalidMessage: `body` does not match `model` (the message names the fields).
    """
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise InvalidMessage(reasons(exc.errors())) from None


def _integral(value: object) -> object:
    # JSON Schema's integers include 5.0; strict int would refuse it.
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]


# -- OpenAI: POST /v1/chat/completions ---------------------------------------------------------


class ChatMessage(_Open):
    role: str


class ChatRequest(_Open):
    """An OpenAI chat-completions request: the worker reads every other field."""

    model: str = Field(min_length=1, description="A model alias served by the mesh (/v1/models).")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = None


# -- Anthropic: POST /v1/messages ---------------------------------------------------------------


class Base64Source(_Open):
    type: Literal["base64"]
    media_type: str
    data: str


class UrlSource(_Open):
    type: Literal["url"]
    url: str


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class ImageBlock(_Open):
    type: Literal["image"]
    source: Annotated[Base64Source | UrlSource, Field(discriminator="type")]


class DocumentBlock(_Open):
    type: Literal["document"]
    source: Base64Source
    title: str | None = None


ResultBlock = Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[ResultBlock] | None = None


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ThinkingBlock(_Open):
    type: Literal["thinking"]
    thinking: str


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"]
    data: str


UserBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolResultBlock, Field(discriminator="type")
]
AssistantBlock = Annotated[
    TextBlock | ToolUseBlock | ThinkingBlock | RedactedThinkingBlock, Field(discriminator="type")
]


class UserMessage(_Open):
    role: Literal["user"]
    content: str | list[UserBlock]


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: str | list[AssistantBlock]


class Tool(_Open):
    name: str = Field(min_length=1)
    type: str | None = None
    description: str | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(_Open):
    type: Literal["auto", "any", "none", "tool"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Metadata(_Open):
    user_id: str | None = None


class MessagesRequest(_Open):
    """An Anthropic Messages request: what the gateway translates is typed (see
    `schemas.llm.anthropic_requests`); other fields pass through."""

    model: str = Field(min_length=1, description="A model alias served by the mesh (/v1/models).")
    max_tokens: Integer = Field(ge=1)
    messages: list[Annotated[UserMessage | AssistantMessage, Field(discriminator="role")]] = Field(
        min_length=1
    )
    system: str | list[TextBlock] | None = None
    stop_sequences: list[str] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    metadata: Metadata | None = None
    stream: bool | None = None
