"""`POST /webhooks/{name}`: signed webhook deliveries into the mesh (see docs/PROTOCOL.md §8).

The HMAC signature is the caller's credential, so these calls need no API key. A signature
passes once: it is tied in Redis to the delivery id it came with, so a captured request replayed
with another `X-Mesh-Delivery` is refused (v2 signatures also cover the id itself). An accepted
delivery becomes a durable task whose idempotency key is `hook:<name>:<delivery id>`, so a
retry of the same delivery is the same task: it runs once, and is answered `duplicate`.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import json
import logging
import re
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from agentmesh.gateway.errors import error_body, responses
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.gateway.webhook_store import Webhook, WebhookStore, validate_delivery_id
from agentmesh.schemas.codec import encode
from agentmesh.schemas.envelope import DataPart, FilePart, Message, Part, TextPart, new_id
from agentmesh.schemas.errors import ErrorCode, InvalidId, InvalidMessage, Unauthorized
from agentmesh.schemas.task import TaskSpec

logger = logging.getLogger(__name__)

router = APIRouter()

TIMESTAMP = "X-Mesh-Timestamp"
DELIVERY = "X-Mesh-Delivery"
SIGNATURE = "X-Mesh-Signature"
# Passed on to the agent in metadata["headers"]; never the signature.
FORWARDED_HEADERS = ("user-agent", "x-request-id", "x-forwarded-for")

_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
_SIGNATURE_RE = re.compile(r"(?:v2|sha256)=[0-9a-fA-F]{64}")
_TEXT_TYPES = ("application/x-www-form-urlencoded", "application/xml")


def signature(secret: str, timestamp: str, delivery_id: str, body: bytes) -> str:
    """The `X-Mesh-Signature` value for a delivery (v2): `v2=` + hex HMAC-SHA256 of
    `"<ts>.<delivery id>." + body`."""
    message = f"{timestamp}.{delivery_id}.".encode() + body
    return "v2=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def legacy_signature(secret: str, timestamp: str, body: bytes) -> str:
    """The v1 value, still accepted: `sha256=` + hex HMAC-SHA256 of `"<ts>." + body`.

    It does not cover the delivery id; de-duplication on the signature keeps it from replaying.
    """
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class Receipt(BaseModel):
    status: Literal["delivered", "duplicate"] = Field(
        description='"delivered": stored as a task, which an executor delivers; "duplicate": a '
        "retry of a delivery stored before (the same task)"
    )
    delivery_id: str
    task_id: str = Field(description="The task that delivers the message (/v1/tasks).")
    message_id: str | None = Field(None, description="The message the agent gets (delivered).")


# The route reads its headers and body itself (the raw bytes are what was signed).
_OPENAPI = {
    "parameters": [
        {
            "name": name,
            "in": "header",
            "required": True,
            "description": description,
            "schema": {"type": "string", "pattern": pattern},
        }
        for name, pattern, description in (
            (TIMESTAMP, "^[0-9]{1,12}$", "Unix seconds when the delivery was signed."),
            (DELIVERY, "^[!-~]{1,128}$", "The delivery's id, the same on every retry."),
            (
                SIGNATURE,
                "^(v2|sha256)=[0-9a-fA-F]{64}$",
                "'v2=' + hex HMAC-SHA256 of '<timestamp>.<delivery id>.' + body (PROTOCOL.md §8).",
            ),
        )
    ],
    "requestBody": {
        "description": "Any body: JSON becomes a data part, text a text part, else a file part.",
        "content": {
            "application/json": {"schema": {}},
            "text/plain": {"schema": {"type": "string"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


@router.post(
    "/webhooks/{name}",
    status_code=202,
    response_model=Receipt,
    openapi_extra=_OPENAPI,
    responses={
        200: {"model": Receipt, "description": "A retry of a delivery stored before."},
        **responses(400, 401, 404, 409, 413, 503),
    },
    tags=["webhooks"],
)
async def receive(name: str, request: Request, state: GatewayState = Depends(get_state)) -> Any:
    """Verify a signed delivery and store it as a task for the webhook's agent (once per
    delivery id)."""
    store = WebhookStore(state.durable, state.redis, state.bus.subjects)
    try:
        hook = await store.get(name)
    except InvalidId:
        hook = None
    if hook is None:
        error = error_body(ErrorCode.NOT_FOUND, f"no webhook named {name!r}", {"webhook": name})
        return JSONResponse(error, 404)

    timestamp = _header(request, TIMESTAMP, _TIMESTAMP_RE, "unix seconds, digits only")
    delivery_id = validate_delivery_id(_header(request, DELIVERY))
    sent = _header(request, SIGNATURE, _SIGNATURE_RE, "'v2=' and 64 hex digits").lower()
    body = await request.body()  # the raw bytes: what the sender signed
    if sent.startswith("v2="):
        expected = signature(hook.secret, timestamp, delivery_id, body)
    else:
        expected = legacy_signature(hook.secret, timestamp, body)
    if not hmac.compare_digest(expected, sent):
        raise Unauthorized(
            "webhook signature does not match (v2 signs '<timestamp>.<delivery id>.' + body)",
            details={"webhook": name},
        )
    skew = time.time() - int(timestamp)
    if abs(skew) > hook.tolerance_seconds:
        raise Unauthorized(
            "timestamp outside the tolerance window",
            details={"tolerance_seconds": hook.tolerance_seconds, "skew_seconds": round(skew)},
        )

    # A signature passes with one delivery id only: a copy with another id is a replay.
    if await store.bind_signature(hook, sent.partition("=")[2], delivery_id) is not None:
        error = error_body(
            ErrorCode.REPLAYED,
            "this signed request was already received with another X-Mesh-Delivery: a replay is "
            "refused; sign each new event afresh (v2 signs the delivery id too)",
            {"webhook": name, "delivery_id": delivery_id},
        )
        return JSONResponse(error, 409)

    message = _message(hook, request, delivery_id, int(timestamp), body)
    key = f"hook:{hook.name}:{delivery_id}"  # at most 254 characters; PROTOCOL.md §8
    ref = await state.tasks.submit(
        TaskSpec(agent_id=hook.agent_id, input=message, idempotency_key=key)
    )
    if not ref.created:  # a retry of a delivery stored before: success, so the sender stops
        receipt = {"status": "duplicate", "delivery_id": delivery_id, "task_id": ref.task_id}
        return JSONResponse(receipt, 200)
    receipt = {
        "status": "delivered",
        "delivery_id": delivery_id,
        "task_id": ref.task_id,
        "message_id": message.message_id,
    }
    return JSONResponse(receipt, 202)


def _header(
    request: Request, name: str, pattern: re.Pattern[str] | None = None, form: str = ""
) -> str:
    value = request.headers.get(name)
    if value is None or not value.strip():
        raise InvalidMessage(f"missing {name} header", details={"header": name})
    value = value.strip()
    if pattern is not None and not pattern.fullmatch(value):
        raise InvalidMessage(f"invalid {name} header: expected {form}", details={"header": name})
    return value


def _message(
    hook: Webhook, request: Request, delivery_id: str, timestamp: int, body: bytes
) -> Message:
    content_type = request.headers.get("content-type", "")
    headers = {h: request.headers[h] for h in FORWARDED_HEADERS if h in request.headers}
    message = Message(
        message_id=new_id(),
        from_agent_id=hook.sender_id,
        to_agent_id=hook.agent_id,
        conversation_id=delivery_id,
        content=[_part(content_type, body)],
        metadata={
            "webhook": hook.name,
            "delivery_id": delivery_id,
            "timestamp": timestamp,
            "content_type": content_type,
            "headers": headers,
        },
    )
    try:
        encode(message)
    except (InvalidMessage, ValueError, OverflowError, RecursionError):
        # JSON that msgpack cannot carry (integers beyond 64 bits, lone surrogates, very deep
        # nesting) still reaches the agent, as the text it was sent as.
        message.content = [TextPart(text=body.decode("utf-8", errors="replace"))]
    return message


def _part(content_type: str, body: bytes) -> Part:
    """JSON that parses → data part; text → text part; anything else → inline file part."""
    mime, _, params = content_type.partition(";")
    mime = mime.strip().lower()
    charset = "utf-8"
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip():
            charset = value.strip().strip('"').lower()
    is_json = mime == "application/json" or mime.endswith("+json")
    if is_json:
        try:
            return DataPart(data=json.loads(body))
        except (ValueError, RecursionError):
            pass  # declared JSON but is not: deliver the text as sent
    if is_json or _is_text(mime):
        try:
            codecs.lookup(charset)
            return TextPart(text=body.decode(charset))
        except (LookupError, UnicodeDecodeError):
            pass
    return FilePart(bytes=body, mime_type=mime or "application/octet-stream")


def _is_text(mime: str) -> bool:
    # No content type at all: text if it decodes, as most senders of plain bodies mean.
    return not mime or mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith("+xml")
