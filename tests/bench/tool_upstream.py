"""A stand-in LLM upstream that plans one tool round: `python -m tests.bench.tool_upstream
--port P --latency 0.02`.

`POST .../chat/completions` after a fixed latency: when tools are offered and the conversation
has fewer tool results than the first message's `rounds=N` asks (default 1), a call of the first
tool with `{"text": ...}`; otherwise the answer `done: <the last tool result>`. JSON, or SSE
when `stream` is set (the runtime always streams).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from typing import Any

import uvicorn

TEXT = "hello from the bench"
_SSE = [(b"content-type", b"text/event-stream")]


def reply(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(the assistant message, finish reason) for a request."""
    messages = body["messages"]
    last = messages[-1]
    tools = body.get("tools") or []
    first = next((m for m in messages if m.get("role") == "user"), {})
    wanted = re.search(r"rounds=(\d+)", str(first.get("content") or ""))
    done = sum(1 for m in messages if m.get("role") == "tool")
    if tools and done < (int(wanted.group(1)) if wanted else 1):
        name = tools[0]["function"]["name"]
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps({"text": TEXT})},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
    return {"role": "assistant", "content": f"done: {last.get('content')}"}, "stop"


def _chunks(message: dict[str, Any], finish: str) -> bytes:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0, "model": "b"}
    delta: dict[str, Any] = {"role": "assistant"}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": 0, **message["tool_calls"][0]}]
    else:
        delta["content"] = message["content"]
    events = [
        {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
        {
            **base,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        },
    ]
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + b"data: [DONE]\n\n"


def app(latency: float) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        more = True
        while more:
            message = await receive()
            raw += message.get("body", b"")
            more = message.get("more_body", False)
        body = json.loads(raw)
        await asyncio.sleep(latency)  # the model's fixed latency, the point of this server
        message, finish = reply(body)
        if body.get("stream"):
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            await send({"type": "http.response.body", "body": _chunks(message, finish)})
            return
        data = json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": 0,
                "model": "b",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
        ).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return asgi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.tool_upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.02)
    args = parser.parse_args(argv)
    uvicorn.run(
        app(args.latency),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=2048,
        timeout_keep_alive=300,
    )


if __name__ == "__main__":
    main()
