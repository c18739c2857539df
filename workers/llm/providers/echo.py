"""The built-in `echo` model: answers with the last user message, so the mesh can be tried with
no key and no upstream. Clearly not a language model: its replies say so in `system_fingerprint`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from agentmesh.workers.llm.config import Deployment
from agentmesh.workers.llm.providers.base import Body, completion_id


def _last_user_text(request: Body) -> str:
    for message in reversed(request.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(
                    p.get("text", "")
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
    return ""


def _usage(request: Body, text: str) -> dict[str, int]:
    prompt = sum(
        len(str(m.get("content", "")).split())
        for m in request.get("messages") or []
        if isinstance(m, dict)
    )
    completion = len(text.split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


class EchoProvider:
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    def _base(self, request: Body, kind: str) -> dict[str, Any]:
        return {
            "id": completion_id(),
            "object": kind,
            "created": int(time.time()),
            "model": request.get("model", self.deployment.model),
            "system_fingerprint": "agentmesh-echo",
        }

    async def complete(self, request: Body) -> Body:
        text = _last_user_text(request)
        return {
            **self._base(request, "chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": _usage(request, text),
        }

    async def stream(self, request: Body) -> AsyncIterator[Body]:
        text = _last_user_text(request)
        base = self._base(request, "chat.completion.chunk")
        yield {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            yield {
                **base,
                "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
            }
        yield {
            **base,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": _usage(request, text),
        }
