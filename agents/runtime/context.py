"""Keeping a long session within the model's budget: a rolling summary.

When a session's history is estimated (4 characters a token) above 60 % of the model's context
window, its older turns are summarized by the same model and replaced, in what the model sees,
by that summary; the stored turns stay whole. The summary and how many messages it covers are
kept on the session, so the next turn starts from it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agentmesh.schemas.errors import MeshError
from agentmesh.schemas.runtime import Message

if TYPE_CHECKING:
    from agentmesh.agents.runtime.registry import ModelConfig
    from agentmesh.broker.sessions import SessionStore

logger = logging.getLogger(__name__)

BUDGET_SHARE = 0.6
KEEP_RECENT = 6  # messages never summarized (the end of the conversation)
SUMMARY_PREFIX = "[Summary of the earlier conversation]\n"
_INSTRUCTION = (
    "Summarize the conversation below for your own later use: keep every fact, decision, "
    "open question and result a continuation needs. Answer with the summary only."
)


def estimate_tokens(messages: list[Message]) -> int:
    chars = sum(len(m.content or "") + len(str(m.tool_calls or "")) for m in messages)
    return chars // 4 + 4 * len(messages)


async def fit_history(
    sessions: SessionStore,
    session_id: str,
    history: list[Message],
    model: ModelConfig,
    llm: Any,
) -> list[Message]:
    """The history the model sees for this turn (the summary first when there is one)."""
    info = await sessions.get(session_id)
    summarized = info.summarized if info and info.summary else 0
    visible = _with_summary(info.summary if summarized else None, history[summarized:])
    budget = int(model.context_window * BUDGET_SHARE)
    if estimate_tokens(visible) <= budget:
        return visible
    cut = _cut(history, summarized)
    if cut <= summarized:
        return visible
    try:
        summary = await _summarize(
            llm, _with_summary(info.summary if info else None, history[summarized:cut])
        )
    except MeshError as exc:  # the turn goes on with the whole history
        logger.warning("session %s: no summary (%s)", session_id, exc)
        return visible
    await sessions.summarize(session_id, summary=summary, summarized=cut)
    return _with_summary(summary, history[cut:])


def _with_summary(summary: str | None, messages: list[Message]) -> list[Message]:
    if not summary:
        return list(messages)
    return [Message(role="user", content=SUMMARY_PREFIX + summary), *messages]


def _cut(history: list[Message], start: int) -> int:
    """Where the summarized part ends: the last user message before the recent ones, so a
    tool call is never separated from its result."""
    for index in range(len(history) - KEEP_RECENT, start, -1):
        if history[index].role == "user":
            return index
    return start


async def _summarize(llm: Any, messages: list[Message]) -> str:
    transcript = "\n".join(f"{m.role}: {m.content or ''}" for m in messages if m.content)
    reply = await llm.chat(
        [{"role": "system", "content": _INSTRUCTION}, {"role": "user", "content": transcript}]
    )
    choices = reply.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""
