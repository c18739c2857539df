"""The agent runtime's wire contract, field names as in the Agent Service seed: the chat
`Message` of an inference (not the mesh envelope), `InferenceRequest`, the `StreamEvent`s a
streaming inference yields, `InferenceResult`, and the definitions stored in the mesh (saved
agents, prompt templates, tool and skill configs, sessions).

A streaming inference is a sequence of events; `InferenceResult.assemble(events)` rebuilds the
non-streaming answer from them exactly (the runtime's own `infer` is that assembly).
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentmesh.schemas.envelope import new_id
from agentmesh.schemas.errors import ErrorInfo

DEFAULT_MAX_TOOL_ROUNDS = 10
MAX_TOOL_ROUNDS_LIMIT = 100
# Ids of stored definitions (agents, templates, skills, sessions): subject- and key-safe tokens.
DEFINITION_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class ToolCall(BaseModel):
    """A call the model asked for: `arguments` parsed from its JSON (a dict), or the raw text
    when the model's JSON did not parse (the tool then answers with the parse error)."""

    id: str
    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class Message(BaseModel):
    """One chat message of an inference (the seed's `Message`).

    A user message may name a `prompt_template` and give its `arguments`; the runtime renders
    it into `content`. `images` are base64 strings or `data:` URLs for vision models; `audio`
    items are `data:audio/<format>;base64,...` URLs (or base64 WAV) for audio models.
    """

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    thinking: str | None = None
    # The provider's signed reasoning blocks (Anthropic's), sent back with the message so a
    # thinking model can go on after a tool call; opaque to the runtime.
    thinking_blocks: list[dict[str, Any]] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    tool_call_id: str | None = None  # role "tool": the call this answers
    name: str | None = None  # role "tool": the tool's name
    images: list[str] = Field(default_factory=list)
    audio: list[str] = Field(default_factory=list)
    prompt_template: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def add(self, other: dict[str, Any] | Usage | None) -> None:
        if other is None:
            return
        data = other.model_dump() if isinstance(other, Usage) else other
        for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = data.get(name)
            if isinstance(value, int):
                setattr(self, name, getattr(self, name) + value)


class InferenceRequest(BaseModel):
    """What `/v1/infer` and `Runtime.infer` take (the seed's request, field for field).

    `text` is a shortcut for one user message. `session_id`: "new" starts a session, an id
    continues one, None is stateless. `agent_id` runs a saved agent's definition (its model,
    tools, prompt and limits) under this request's messages.
    """

    model_config = ConfigDict(extra="ignore")

    model_id: str | None = None
    tool_ids: list[str] = Field(default_factory=list)
    messages: list[Message] = Field(default_factory=list)
    text: str | None = None
    stream: bool = False
    max_tool_rounds: int = Field(DEFAULT_MAX_TOOL_ROUNDS, ge=0, le=MAX_TOOL_ROUNDS_LIMIT)
    session_id: str | None = None
    system_prompt: str | None = None
    agent_id: str | None = None
    temperature: float | None = None
    max_tokens: int | None = Field(None, ge=1)
    reasoning_effort: Literal["low", "medium", "high"] | None = Field(
        None, description="Turn a thinking model's reasoning on (the LLM workers translate it)."
    )
    timeout: float | None = Field(None, gt=0, description="Seconds for the whole inference.")
    # Set by the runtime when it delegates to a sub-agent (not by HTTP callers).
    delegation: dict[str, Any] | None = None
    parent_session_id: str | None = None

    def conversation(self) -> list[Message]:
        """The request's messages, with `text` as a last user message."""
        out = list(self.messages)
        if self.text:
            out.append(Message(role="user", content=self.text))
        return out


class EventType(StrEnum):
    CONTENT = "content"  # `content`: a token delta of the answer
    THINKING = "thinking"  # `thinking`: a delta of the model's reasoning (or `thinking_blocks`)
    TOOL_CALL_START = "tool_call_start"  # `tool_call_id`, `tool_name`
    TOOL_CALL_DELTA = "tool_call_delta"  # `tool_call_id`, `arguments` (a JSON fragment)
    TOOL_CALL = "tool_call"  # `tool_call`: the whole call, once the model's turn ended
    TOOL_RESULT = "tool_result"  # `tool_call_id`, `tool_name`, `result`, `is_error`, `index`
    SKILL = "skill"  # `tool_name`: a skill's SKILL.md was disclosed
    USAGE = "usage"  # `usage`: tokens of one model call
    START = "start"  # the first event: `messages` (the request's, rendered), `session_id`
    DONE = "done"  # `finish_reason`: the inference ended
    ERROR = "error"  # `error`: the inference failed (the last event)


class StreamEvent(BaseModel):
    """One event of a streaming inference. `content` and `thinking` are the seed's fields.

    `path` is empty for the inference itself; a sub-agent's events carry the delegate calls
    that lead to it (`["call_1"]`, `["call_1", "call_7"]` for nested delegation). `round`
    counts model calls from 0.
    """

    model_config = ConfigDict(extra="ignore")

    type: EventType
    round: int = 0
    path: list[str] = Field(default_factory=list)
    content: str | None = None
    thinking: str | None = None
    thinking_blocks: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    arguments: str | None = None
    tool_call: ToolCall | None = None
    result: str | None = None
    is_error: bool | None = None
    index: int | None = None
    usage: Usage | None = None
    messages: list[Message] | None = None
    session_id: str | None = None
    finish_reason: str | None = None
    error: ErrorInfo | None = None


class InferenceResult(BaseModel):
    """The non-streaming answer: the request's messages (templates rendered) plus every message
    the inference added (assistant turns and tool results); `messages[-1].content` is the
    answer. A session's earlier turns and the system prompt are not repeated here."""

    messages: list[Message] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    session_id: str | None = None
    finish_reason: str | None = None
    rounds: int = 0

    @property
    def content(self) -> str:
        """The final answer's text."""
        return (self.messages[-1].content or "") if self.messages else ""

    @classmethod
    def assemble(cls, events: list[StreamEvent]) -> InferenceResult:
        """The result the events describe (what `/v1/infer` answers for the same inference)."""
        out = cls()
        assistant: Message | None = None
        results: list[tuple[int, Message]] = []
        rounds = -1

        def flush() -> None:
            nonlocal assistant
            if assistant is not None:
                out.messages.append(assistant)
                assistant = None
            out.messages.extend(m for _, m in sorted(results, key=lambda r: r[0]))
            results.clear()

        for event in events:
            if event.path:
                continue  # a sub-agent's own stream: its answer is the delegate's tool result
            if event.type is EventType.START:
                out.messages = list(event.messages or [])
                out.session_id = event.session_id
                continue
            if event.type is EventType.USAGE:
                out.usage.add(event.usage)
                continue
            if event.type is EventType.DONE:
                out.finish_reason = event.finish_reason
                continue
            if event.round != rounds and event.type in _ASSISTANT_EVENTS:
                flush()
                rounds = event.round
                assistant = Message(role="assistant")
            if assistant is None and event.type in _ASSISTANT_EVENTS:
                assistant = Message(role="assistant")
            if event.type is EventType.CONTENT and assistant is not None:
                assistant.content = (assistant.content or "") + (event.content or "")
            elif event.type is EventType.THINKING and assistant is not None:
                if event.thinking:
                    assistant.thinking = (assistant.thinking or "") + event.thinking
                assistant.thinking_blocks.extend(event.thinking_blocks or [])
            elif event.type is EventType.TOOL_CALL and assistant is not None and event.tool_call:
                assistant.tool_calls.append(event.tool_call)
            elif event.type is EventType.TOOL_RESULT:
                results.append(
                    (
                        event.index or 0,
                        Message(
                            role="tool",
                            content=event.result,
                            tool_call_id=event.tool_call_id,
                            name=event.tool_name,
                        ),
                    )
                )
        flush()
        out.rounds = rounds + 1
        return out


_ASSISTANT_EVENTS = frozenset(
    {EventType.CONTENT, EventType.THINKING, EventType.TOOL_CALL, EventType.TOOL_CALL_START}
)


class ToolType(StrEnum):
    FUNCTION = "function"  # an in-process callable (`@function_tool` or `ToolConfig` + fn)
    MCP = "mcp"  # a tool of an MCP server served by the mesh's MCP workers
    SKILL = "skill"  # a skill directory (progressive disclosure)
    BUILTIN = "builtin"  # delegate, bash, fetch
    HTTP = "http"  # a tool registered over HTTP: a POST of the arguments to `url`


class ToolConfig(BaseModel):
    """A tool the model may call (the seed's `ToolConfig`). `parameters` is a JSON Schema."""

    model_config = ConfigDict(extra="ignore")

    tool_id: str
    tool_type: ToolType = ToolType.FUNCTION
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    server: str | None = None  # mcp: the MCP server's name
    mcp_tool: str | None = None  # mcp: the tool's own name on its server (default: `name`)
    url: str | None = None  # http: where the arguments are POSTed
    timeout: float = Field(60.0, gt=0, le=3600)

    @field_validator("name")
    @classmethod
    def _model_facing(cls, value: str) -> str:
        # What OpenAI, Anthropic and Ollama all accept as a function name.
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
            raise ValueError("a tool name is 1-64 letters, digits, '_' or '-'")
        return value

    def schema_for_model(self) -> dict[str, Any]:
        """The chat-completions `tools[]` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters or {"type": "object", "properties": {}},
            },
        }


class AgentLimits(BaseModel):
    max_tool_rounds: int = Field(DEFAULT_MAX_TOOL_ROUNDS, ge=0, le=MAX_TOOL_ROUNDS_LIMIT)
    # At most an hour: the gateway waits no longer for an inference (runtime_api.MAX_WAIT).
    timeout: float = Field(600.0, gt=0, le=3600, description="Seconds one inference may take.")
    max_concurrency: int | None = Field(None, ge=1, description="Inferences at once per worker.")
    max_delegation_depth: int = Field(3, ge=0, le=10)


class AgentDefinition(BaseModel):
    """A saved agent: served as a mesh agent by every runtime worker."""

    model_config = ConfigDict(extra="ignore")

    agent_id: str = Field(pattern=DEFINITION_ID.pattern)
    name: str | None = None
    description: str | None = None
    model_id: str
    tool_ids: list[str] = Field(default_factory=list)
    skills: list[str] = Field(default_factory=list)  # skill ids stored in the mesh
    system_prompt: str | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    prompt_template: str | None = None  # a template rendered as the system prompt
    arguments: dict[str, Any] = Field(default_factory=dict)  # the template's variables
    capabilities: list[str] = Field(default_factory=list)
    agent_type: str | None = None
    enable_bash: bool = False
    limits: AgentLimits = Field(default_factory=AgentLimits)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class PromptTemplate(BaseModel):
    id: str = Field(default_factory=lambda: new_id("pt"), pattern=DEFINITION_ID.pattern)
    name: str = Field(min_length=1, max_length=128)
    content: str
    description: str | None = None
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)


class SessionStatus(StrEnum):
    IDLE = "idle"
    STREAMING = "streaming"
    SUCCESS = "success"
    ERROR = "error"
    REVOKED = "revoked"


class SessionInfo(BaseModel):
    """A session's index record (its messages are in the session log)."""

    session_id: str
    title: str | None = None
    agent_id: str | None = None
    model_id: str | None = None
    parent_id: str | None = None  # a sub-agent's session: the parent's session
    status: SessionStatus = SessionStatus.IDLE
    unread: bool = False
    turns: int = 0
    summary: str | None = None  # the rolling summary of the turns it replaces
    summarized: int = 0  # how many of the session's messages the summary stands for
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    error: ErrorInfo | None = None
