"""A stand-in LLM upstream for the benchmark: `python -m tests.bench.upstream --port P
--latency 0.02`.

Answers every `POST .../chat/completions` like OpenAI, after a fixed latency, with the same
`chat.completion` (usage 5 + 3 = 8 tokens). A bare ASGI app on uvicorn, so that its own CPU per
request stays small next to what is measured; streaming is not served.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import uvicorn

REPLY_TEXT = "hello from the bench upstream"
REPLY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY_TEXT},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    },
    separators=(",", ":"),
).encode()
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(REPLY)).encode())]
_NOT_FOUND = b'{"error":{"message":"no such route","type":"invalid_request_error"}}'


def app(latency: float) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # the body is read, as a real server would, and dropped
            message = await receive()
            more = message.get("more_body", False)
        if scope["method"] != "POST" or not scope["path"].endswith("/chat/completions"):
            await send({"type": "http.response.start", "status": 404, "headers": _HEADERS[:1]})
            await send({"type": "http.response.body", "body": _NOT_FOUND})
            return
        await asyncio.sleep(latency)
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": REPLY})

    return asgi


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.upstream", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds per request")
    args = parser.parse_args(argv)
    uvicorn.run(
        app(args.latency),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        backlog=2048,
        timeout_keep_alive=300,  # the bench keeps its connections; idle rounds must not close them
    )


if __name__ == "__main__":
    main()
