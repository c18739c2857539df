"""Valid JSON the mesh cannot carry, over HTTP and the WebSocket: refused as INVALID_MESSAGE.

Lone surrogates, integers beyond 64 bits and deep nesting, on every route that turns JSON into
mesh data, against a real gateway, NATS and Redis.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import httpx
import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.schemas.encodable import MAX_DEPTH, MAX_INT, MIN_INT
from agentmesh.schemas.errors import InvalidMessage
from tests.conftest import StartAgent
from tests.gateway.conftest import Replica
from tests.gateway.test_client import client_for
from tests.gateway.test_websocket import echo_agent, text, ws_agent
from tests.workers.fixtures import StartWorker

SURROGATE = "a\ud800"
BIG = 2**70
DEEP = "__deep__"  # in the raw JSON: 5,000 nested arrays (too deep for any JSON parser's stack)
NESTED = "__nested__"  # in the raw JSON: one level past MAX_DEPTH (parses, then refused)


def raw(body: Any) -> str:
    """`body` as JSON, lone surrogates escaped (`\\ud800`), the nesting markers expanded."""
    out = json.dumps(body)
    out = out.replace(json.dumps(DEEP), "[" * 5000 + "]" * 5000)
    return out.replace(json.dumps(NESTED), "[" * MAX_DEPTH + "]" * MAX_DEPTH)


def put(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with `value` at the dotted `path` (list indexes as digits)."""
    out = copy.deepcopy(body)
    *parents, last = path.split(".")
    node: Any = out
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return out


SEND = {"to_agent_id": "sdk-agent", "content": text("hi"), "wait": True}
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
TOOL = {"server": "time", "tool": "now", "arguments": {}}

# (route, body, what the error message names)
HOSTILE = {
    "send: text": ("/gateway/send", put(SEND, "content.0.text", SURROGATE), "content.0.text"),
    "send: agent id": ("/gateway/send", put(SEND, "to_agent_id", SURROGATE), "to_agent_id"),
    "send: sender id": ("/gateway/send", put(SEND, "from_agent_id", SURROGATE), "from_agent_id"),
    "send: conversation id": (
        "/gateway/send",
        put(SEND, "conversation_id", SURROGATE),
        "conversation_id",
    ),
    "send: metadata value": (
        "/gateway/send",
        put(SEND, "metadata", {"k": SURROGATE}),
        "metadata.k",
    ),
    "send: metadata key": (
        "/gateway/send",
        put(SEND, "metadata", {SURROGATE: 1}),
        "metadata.a\\ud800",
    ),
    "send: data part": (
        "/gateway/send",
        put(SEND, "content", [{"type": "data", "data": {"x": [SURROGATE]}}]),
        "content.0.data.x.0",
    ),
    "send: 2**70": (
        "/gateway/send",
        put(SEND, "content", [{"type": "data", "data": {"n": BIG}}]),
        "content.0.data.n",
    ),
    "send: metadata 2**70": ("/gateway/send", put(SEND, "metadata", {"n": -BIG}), "metadata.n"),
    "send: nested past the limit": (
        "/gateway/send",
        put(SEND, "content", [{"type": "data", "data": NESTED}]),
        f"nested deeper than {MAX_DEPTH}",
    ),
    "send: 5,000 deep": (
        "/gateway/send",
        put(SEND, "content", [{"type": "data", "data": DEEP}]),
        f"nested deeper than {MAX_DEPTH}",
    ),
    "chat: message text": (
        "/v1/chat/completions",
        put(CHAT, "messages.0.content", SURROGATE),
        "messages.0.content",
    ),
    "chat: model": ("/v1/chat/completions", put(CHAT, "model", SURROGATE), "model"),
    "chat: metadata": (
        "/v1/chat/completions",
        put(CHAT, "metadata", {"k": SURROGATE}),
        "metadata.k",
    ),
    "chat: 2**70": ("/v1/chat/completions", put(CHAT, "max_tokens", BIG), "max_tokens"),
    "chat: 5,000 deep": (
        "/v1/chat/completions",
        put(CHAT, "messages.0.content", DEEP),
        f"nested deeper than {MAX_DEPTH}",
    ),
    "messages: message text": (
        "/v1/messages",
        put(MESSAGES, "messages.0.content", SURROGATE),
        "messages.0.content",
    ),
    "messages: system": ("/v1/messages", put(MESSAGES, "system", SURROGATE), "system"),
    "messages: 2**70": ("/v1/messages", put(MESSAGES, "max_tokens", BIG), "max_tokens"),
    "messages: 5,000 deep": (
        "/v1/messages",
        put(MESSAGES, "messages.0.content", DEEP),
        f"nested deeper than {MAX_DEPTH}",
    ),
    "tools: arguments": ("/v1/tools/call", put(TOOL, "arguments", {"q": SURROGATE}), "arguments.q"),
    "tools: tool name": ("/v1/tools/call", put(TOOL, "tool", SURROGATE), "tool"),
    "tools: server": ("/v1/tools/call", put(TOOL, "server", SURROGATE), "server"),
    "tools: 2**70": ("/v1/tools/call", put(TOOL, "arguments", {"n": BIG}), "arguments.n"),
    "tools: 5,000 deep": (
        "/v1/tools/call",
        put(TOOL, "arguments", {"x": DEEP}),
        f"nested deeper than {MAX_DEPTH}",
    ),
}


def invalid_message(path: str, body: dict[str, Any]) -> str:
    """The error's message, after checking the body is INVALID_MESSAGE in the route's format."""
    if path == "/v1/chat/completions":  # OpenAI's format
        assert body["error"]["type"] == "invalid_request_error", body
        assert body["error"]["code"] == "invalid_message", body
    elif path == "/v1/messages":  # Anthropic's format
        assert body["type"] == "error", body
        assert body["error"]["type"] == "invalid_request_error", body
    else:  # the mesh's own
        assert body["error"]["code"] == "INVALID_MESSAGE", body
    return body["error"]["message"]


# The LLM routes read a body whatever its type; the others only JSON-typed bodies.
HTTP_CASES = [(v, "application/json") for v in HOSTILE] + [
    (v, "text/plain")
    for v, (path, _, _) in HOSTILE.items()
    if path.startswith("/v1/") and "tools" not in path
]


@pytest.mark.parametrize(("variant", "content_type"), HTTP_CASES)
async def test_valid_json_the_mesh_cannot_carry_is_a_400_invalid_message_in_the_routes_format(
    gateway: Replica,
    http: httpx.AsyncClient,
    start_agent: StartAgent,
    variant: str,
    content_type: str,
) -> None:
    path, body, names = HOSTILE[variant]
    await start_agent(echo_agent())
    reply = await http.post(path, content=raw(body), headers={"content-type": content_type})
    assert reply.status_code == 400, reply.text
    assert names in invalid_message(path, reply.json())
    # The gateway is unharmed: the same route still answers a well-formed body.
    if path == "/gateway/send":
        ok = await http.post(path, json=SEND)
        assert ok.status_code == 200 and ok.json()["result"]["result"].startswith("re: hi")


WS_SEND = {"type": "send", "message_id": "m-1", **SEND}
# (frame, what the error names); the frame's message id is in the error when it could be read.
WS_HOSTILE = {
    "text": (put(WS_SEND, "content.0.text", SURROGATE), "content.0.text"),
    "agent id": (put(WS_SEND, "to_agent_id", SURROGATE), "to_agent_id"),
    "message id": (put(WS_SEND, "message_id", SURROGATE), "message_id"),
    "metadata key": (put(WS_SEND, "metadata", {SURROGATE: 1}), "metadata.a\\ud800"),
    "data part": (
        put(WS_SEND, "content", [{"type": "data", "data": {"x": [SURROGATE]}}]),
        "content.0.data.x.0",
    ),
    "2**70": (put(WS_SEND, "content", [{"type": "data", "data": BIG}]), "content.0.data"),
    "nested past the limit": (
        put(WS_SEND, "content", [{"type": "data", "data": NESTED}]),
        f"nested deeper than {MAX_DEPTH}",
    ),
    "5,000 deep": (
        put(WS_SEND, "content", [{"type": "data", "data": DEEP}]),
        f"nested deeper than {MAX_DEPTH}",
    ),
    "a result": (
        {"type": "result", "message_id": "m-1", "result": {"x": SURROGATE}},
        "result.x",
    ),
}


@pytest.mark.parametrize("variant", list(WS_HOSTILE))
async def test_a_frame_the_mesh_cannot_carry_gets_an_error_frame_and_the_session_lives(
    gateway: Replica, start_agent: StartAgent, mesh: MeshClient, variant: str
) -> None:
    frame, names = WS_HOSTILE[variant]
    await start_agent(echo_agent())
    async with ws_agent(gateway, "hostile") as sock:
        await sock.send(raw(frame))
        error = await sock.expect("error")
        assert error["code"] == "INVALID_MESSAGE", error
        assert names in error["message"], error
        if variant in ("message id", "5,000 deep"):
            assert "message_id" not in error  # unreadable: not echoed
        else:
            assert error["message_id"] == "m-1"
        await sock.send({**WS_SEND, "message_id": "m-2"})
        result = await sock.expect("result")
        assert result["message_id"] == "m-2" and result["result"] == "re: hi (from hostile)"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_large_bodies_the_mesh_can_carry_pass_the_screen_intact(
    http: httpx.AsyncClient, start_agent: StartAgent, start_worker: StartWorker, content_type: str
) -> None:
    # Walked (many brackets, a surrogate pair, 19 digits in a row) and let through unchanged.
    await start_worker(
        {"models": [{"name": "echo", "deployments": [{"provider": "echo", "model": "echo"}]}]}
    )
    last = "\U0001f600 12345678901234567890123"
    messages = [{"role": "user", "content": f"m{i}"} for i in range(150)]
    chat = {"model": "echo", "messages": [*messages, {"role": "user", "content": last}]}
    reply = await http.post(
        "/v1/chat/completions", content=json.dumps(chat), headers={"content-type": content_type}
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"] == last
    await start_agent(echo_agent())
    rows = [{"n": [MAX_INT, MIN_INT]} for _ in range(150)]
    send = {**SEND, "content": [*text("hi"), {"type": "data", "data": rows}]}
    assert (await http.post("/gateway/send", json=send)).status_code == 200


async def test_the_gateway_client_gets_invalid_message_not_a_false_timeout(
    gateway: Replica, start_agent: StartAgent
) -> None:
    await start_agent(echo_agent())
    async with client_for(gateway, "client-agent") as client:
        await client.connect()
        with pytest.raises(InvalidMessage, match="content.0.text"):
            await client.send("sdk-agent", SURROGATE, timeout=5)
        with pytest.raises(InvalidMessage, match="metadata.n"):
            await client.send("sdk-agent", "hi", metadata={"n": BIG}, timeout=5)
        assert (await client.send("sdk-agent", "hi"))["result"] == "re: hi (from client-agent)"
