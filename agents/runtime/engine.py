"""The inference loop: model call → tool calls (concurrently) → model call ..., as a stream of
`StreamEvent`s. Models are LLM workers and MCP tools are MCP workers, reached over the bus;
nothing here talks to a provider or starts an MCP server.

A tool that fails, times out or is unknown becomes a tool result the model reads (`is_error`),
never an exception of the inference. After `max_tool_rounds` rounds of tool calls the model is
called once more without tools, so it answers with what it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from agentmesh.agents.runtime.lineage import Lineage
from agentmesh.agents.runtime.messages import ModelTurn, to_openai
from agentmesh.agents.runtime.toolset import ActiveTool, CallContext, Toolset
from agentmesh.schemas.errors import MeshError, MeshTimeout
from agentmesh.schemas.runtime import (
    EventType,
    InferenceRequest,
    Message,
    StreamEvent,
    ToolCall,
)

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Plan:
    """One inference, resolved: what the model sees first and what it may call."""

    request: InferenceRequest
    alias: str  # the mesh model alias
    system_prompt: str | None
    history: list[Message]  # a session's earlier turns (not part of the result)
    messages: list[Message]  # the request's messages, rendered
    toolset: Toolset
    max_tool_rounds: int
    session_id: str | None = None
    lineage: Lineage = field(default_factory=Lineage)
    params: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens
    # Set when the inference ends: history + messages + what it added (what a session keeps).
    result_conversation: list[Message] | None = None


async def run(plan: Plan, llm: Any) -> AsyncIterator[StreamEvent]:
    """The events of the inference `plan` describes; `llm` is the mesh LLM of its alias."""
    path = plan.lineage.path
    yield StreamEvent(
        type=EventType.START, path=path, messages=plan.messages, session_id=plan.session_id
    )
    conversation = list(plan.history) + list(plan.messages)
    finish = "stop"
    for round_ in range(plan.max_tool_rounds + 1):
        # After max_tool_rounds rounds of tool calls the model answers without tools.
        schemas = plan.toolset.schemas() if round_ < plan.max_tool_rounds else []
        withheld = not schemas and round_ > 0
        turn = ModelTurn(round_, path, accept_tools=bool(schemas))
        body: dict[str, Any] = dict(plan.params)
        if schemas:
            body["tools"] = schemas
        messages = to_openai(plan.system_prompt, conversation)
        async for chunk in await llm.chat(messages, stream=True, **body):
            for event in turn.feed(chunk):
                yield event
        for event in turn.finish():
            yield event
        assistant = turn.message()
        conversation.append(assistant)
        if not assistant.tool_calls:
            finish = "max_tool_rounds" if withheld else (turn.finish_reason or "stop")
            break
        async for event in _run_tools(plan, round_, assistant.tool_calls):
            yield event
            if event.type is EventType.TOOL_RESULT and event.path == path:
                conversation.append(
                    Message(
                        role="tool",
                        content=event.result,
                        tool_call_id=event.tool_call_id,
                        name=event.tool_name,
                    )
                )
        _order_results(conversation, assistant)  # call order, whatever order they finished in
    yield StreamEvent(type=EventType.DONE, round=round_, path=path, finish_reason=finish)
    plan.result_conversation = conversation


def _order_results(conversation: list[Message], assistant: Message) -> None:
    n = len(assistant.tool_calls)
    results = conversation[-n:]
    order = {call.id: i for i, call in enumerate(assistant.tool_calls)}
    results.sort(key=lambda m: order.get(m.tool_call_id or "", n))
    conversation[-n:] = results


async def _run_tools(plan: Plan, round_: int, calls: list[ToolCall]) -> AsyncIterator[StreamEvent]:
    """Run every call at once; yield what they emit (sub-agent streams, skill disclosures)
    and each result as it finishes."""
    queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
    path = plan.lineage.path

    async def one(index: int, call: ToolCall) -> None:
        tool = plan.toolset.get(call.name)
        try:
            if tool is None:
                raise _Unknown(call.name)
            result = await _call(tool, call, plan, round_, queue.put_nowait)
            is_error = False
        except asyncio.CancelledError:
            raise
        except MeshError as exc:
            result, is_error = f"Error ({exc.code}): {exc.message}", True
        except _Unknown:
            known = ", ".join(plan.toolset.names()) or "none"
            result, is_error = f"Error: there is no tool {call.name!r} (tools: {known})", True
        except Exception as exc:  # noqa: BLE001 - a tool's own failure is the model's to read
            logger.info("tool %s failed: %r", call.name, exc)
            result, is_error = f"Error: {type(exc).__name__}: {exc}", True
        queue.put_nowait(
            StreamEvent(
                type=EventType.TOOL_RESULT,
                round=round_,
                path=path,
                tool_call_id=call.id,
                tool_name=call.name,
                result=result,
                is_error=is_error,
                index=index,
            )
        )

    tasks = [asyncio.ensure_future(one(i, call)) for i, call in enumerate(calls)]
    for task in tasks:
        task.add_done_callback(lambda _t: queue.put_nowait(None))
    try:
        pending = len(tasks)
        while pending:
            event = await queue.get()
            if event is None:
                pending -= 1
                continue
            yield event
        while not queue.empty():  # results put just before their task's done marker
            event = queue.get_nowait()
            if event is not None:
                yield event
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


class _Unknown(Exception):
    pass


async def _call(tool: ActiveTool, call: ToolCall, plan: Plan, round_: int, emit: Any) -> str:
    arguments = call.arguments
    if isinstance(arguments, str):
        raise _BadArguments(arguments)
    ctx = CallContext(
        call_id=call.id,
        round=round_,
        lineage=plan.lineage,
        emit=emit,
        session_id=plan.session_id,
        toolset=plan.toolset,
        alias=plan.alias,
    )
    try:
        async with asyncio.timeout(tool.config.timeout):
            return await tool.run(arguments, ctx)
    except TimeoutError as exc:
        if isinstance(exc, MeshError):
            raise  # the tool's own timeout, which says more
        raise MeshTimeout(
            f"the tool {call.name!r} took longer than {tool.config.timeout:g} s"
        ) from None


class _BadArguments(MeshError):
    def __init__(self, text: str) -> None:
        super().__init__(f"the arguments are not a JSON object: {text[:200]!r}")
