"""`POST /webhooks/{name}`: signed webhook deliveries into the mesh (see docs/PROTOCOL.md §8).

The HMAC signature is the caller's credential, so these calls need no API key. A signature
passes once: it is tied in Redis to the delivery id it came with, so a captured request replayed
with another `X-Mesh-Delivery` is refused (v2 signatures also cover the id itself).
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

from agentmesh.agents.client import calling_agent, encode_request
from agentmesh.gateway.errors import error_body, responses
from agentmesh.gateway.state import GatewayState, get_state
from agentmesh.gateway.webhook_store import Claim, Webhook, WebhookStore, validate_delivery_id
from agentmesh.schemas.envelope import DataPart, FilePart, Message, Part, TextPart, new_id
from agentmesh.schemas.errors import (
    AgentNotFound,
    ErrorCode,
    InvalidId,
    InvalidMessage,
    Unauthorized,
    Unavailable,
)

logger = logging.getLogger(__name__)

router = APIRouter()

TIMESTAMP = "X-Mesh-Timestamp"
DELIVERY = "X-Mesh-Delivery"
SIGNATURE = "X-Mesh-Signature"
RETRY_AFTER = 10  # seconds, for answers that ask the sender to try again
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
    status: Literal["delivered", "duplicate"]
    delivery_id: str
    message_id: str | None = Field(None, description="The message the agent got (delivered).")


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
        200: {"model": Receipt, "description": "A retry of a delivery that succeeded."},
        **responses(400, 401, 404, 409, 413, 503, 504),
    },
    tags=["webhooks"],
)
async def receive(name: str, request: Request, state: GatewayState = Depends(get_state)) -> Any:
    """Verify a signed delivery, de-duplicate it, and hand it to the webhook's agent."""
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

    # Held while delivering; kept until the longest deliver call could end.
    ttl = state.settings.request_timeout + RETRY_AFTER
    claim, token = await store.claim(hook, delivery_id, ttl=ttl)
    if claim is Claim.DONE:  # a retry of a delivery that succeeded: success, so it stops
        return JSONResponse({"status": "duplicate", "delivery_id": delivery_id}, 200)
    if claim is Claim.PENDING:
        return _retry_later(
            ErrorCode.UNAVAILABLE,
            f"delivery {delivery_id!r} is being delivered by another request; retry later",
            {"webhook": name, "delivery_id": delivery_id},
        )
    try:
        message_id = await _deliver(state, hook, request, delivery_id, int(timestamp), body)
    except AgentNotFound:
        await store.release(hook, delivery_id, token)
        return _retry_later(
            ErrorCode.AGENT_NOT_FOUND,
            f"agent '{hook.agent_id}' of webhook '{name}' is not online; retry later",
            {"webhook": name, "agent_id": hook.agent_id, "delivery_id": delivery_id},
        )
    except BaseException:
        # Not delivered (timeout, NATS down, too large, cancelled): the retry must not be
        # answered "duplicate", or the delivery would be lost.
        await store.release(hook, delivery_id, token)
        raise
    try:
        await store.complete(hook, delivery_id)
    except Unavailable:
        # Delivered all the same: answering an error would make the sender deliver it twice.
        logger.warning("webhook %s: delivery %r not marked done (Redis)", name, delivery_id)
    return JSONResponse(
        {"status": "delivered", "delivery_id": delivery_id, "message_id": message_id}, 202
    )


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


async def _deliver(
    state: GatewayState,
    hook: Webhook,
    request: Request,
    delivery_id: str,
    timestamp: int,
    body: bytes,
) -> str:
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
        data = _encode(message, hook)
    except (InvalidMessage, ValueError, OverflowError, RecursionError):
        # JSON that msgpack cannot carry (integers beyond 64 bits, lone surrogates, very deep
        # nesting) still reaches the agent, as the text it was sent as.
        message.content = [TextPart(text=body.decode("utf-8", errors="replace"))]
        data = _encode(message, hook)
    with calling_agent(hook.agent_id):
        await state.bus.deliver(state.bus.subjects.agent(hook.agent_id), data)
    return message.message_id


def _encode(message: Message, hook: Webhook) -> bytes:
    return encode_request(
        message, sender=hook.sender_id, target=hook.agent_id, conversation_id=None, metadata=None
    )


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


def _retry_later(code: ErrorCode, message: str, details: dict[str, Any]) -> JSONResponse:
    return JSONResponse(
        error_body(code, message, details), 503, headers={"Retry-After": str(RETRY_AFTER)}
    )
