"""JSON request bodies, screened once at the HTTP edge before any route reads them.

Valid JSON the mesh cannot carry (a lone surrogate, an integer beyond 64 bits, nesting deeper than
`MAX_DEPTH`; see schemas/encodable.py) is refused with 400 `INVALID_MESSAGE` in the route's own
error format, before it reaches a subject, a Redis key or the codec. A body that passes is
handed on unchanged; only a suspect one is parsed here (FastAPI's routes parse it again; the LLM
routes' `read_json` takes the parsed value).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentmesh.gateway.errors import error_response
from agentmesh.schemas import encodable
from agentmesh.schemas.errors import InvalidMessage

# Scope key: this request's JSON body passed the screen; its value is the parsed body, or
# `encodable.UNPARSED` if the screen did not need to parse it.
_SCREENED = "agentmesh.json_screened"
# Routes that answer bad bodies in their own protocol: a webhook delivers the signed bytes it
# cannot carry as text; /mcp answers JSON-RPC errors.
_OWN_BODIES = ("/webhooks/", "/mcp")


class JsonBodies:
    """ASGI middleware: screen JSON bodies (`application/json`, `*+json`) with
    `encodable.screen`; any other body, and those of `_OWN_BODIES`, is left to its route (the
    LLM routes read theirs with `read_json`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_OWN_BODIES) or not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left (or BodyLimit refused the body and answered)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            parsed = encodable.screen(body)  # parses the body only if it must be walked
        except InvalidMessage as exc:
            await error_response(exc, scope["path"])(scope, receive, send)
            return
        except ValueError:
            pass  # not JSON (or not UTF-8): the route says so in its own words
        else:
            scope[_SCREENED] = parsed
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def read_json(request: Request) -> Any:
    """The request's body as JSON, screened (once: the middleware may have done it).

    Raises:
        ValueError: not JSON.
        InvalidMessage: a value the mesh cannot carry, naming the field.
    """
    parsed = request.scope.get(_SCREENED, None)
    if parsed is not None and parsed is not encodable.UNPARSED:
        return parsed  # parsed once, by the screen
    body = await request.body()
    return encodable.parse(body) if parsed is not None else encodable.loads(body)


def _is_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            mime = value.split(b";", 1)[0].strip().lower()
            return mime == b"application/json" or mime.endswith(b"+json")
    return False
