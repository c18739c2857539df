"""The runtime over HTTP (`/v1/infer*`, `/v1/sessions*`) against real servers: gateway replicas,
runtime workers and an LLM worker in front of a scripted OpenAI upstream, httpx as the client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.gateway import sessions_api
from agentmesh.gateway.server import make_server
from agentmesh.gateway.sessions_api import TITLE_PROMPT, clean_title
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.runtime import InferenceResult, StreamEvent
from tests.gateway.conftest import Replica, StartGateway
from tests.mcp.fixtures import TIME, StartMCPWorker
from tests.runtime import conftest as runtime_fixtures
from tests.runtime.conftest import StartModel, StartRuntime
from tests.runtime.scripted_llm import Body, Reply, last_message

# The runtime's fixtures (a scripted model behind an LLM worker; runtime workers), used here.
start_model = runtime_fixtures.start_model
start_runtime = runtime_fixtures.start_runtime

ADMIN_TOKEN = "runtime-api-test-admin-token"


def delegating(body: Body) -> Reply:
    """A parent that delegates once and answers with the sub-agent's result; a sub-agent (its
    system prompt says it was delegated to) that answers; a title when asked for one."""
    first = body["messages"][0]
    system = first["content"] if first["role"] == "system" else ""
    last = last_message(body)
    if system == TITLE_PROMPT:
        return Reply(content=f'"Title: {last["content"][:20]}."')
    if "delegated" in system:
        return Reply(content="sub-answer")
    if last["role"] == "tool":
        return Reply(content=f"parent: {last['content']}", thinking="the sub-agent answered")
    return Reply(thinking="let me delegate", tool_calls=[("delegate", {"task": "help"})])


async def sse_data(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON of every `data:` line of an event stream, to its end."""
    assert response.status_code == 200, await response.aread()
    assert response.headers["content-type"].startswith("text/event-stream")
    return [json.loads(line[6:]) async for line in response.aiter_lines() if line[:6] == "data: "]


async def stream_infer(http: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with asyncio.timeout(30), http.stream("POST", "/v1/infer/stream", json=body) as r:
        return await sse_data(r)


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == code, error
    return error


class Feed:
    """A client of `GET /v1/sessions/events`, subscribed once `open` returns."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self._lines: AsyncIterator[str] | None = None
        self._cm: Any = None

    async def open(self) -> Feed:
        self._cm = self.http.stream("GET", "/v1/sessions/events", timeout=30)
        response = await self._cm.__aenter__()
        assert response.status_code == 200
        self._lines = response.aiter_lines()
        first = [await anext(self._lines) for _ in range(3)]
        assert first == ["event: ready", 'data: {"ready":true}', ""]  # subscribed
        return self

    async def close(self) -> None:
        await self._cm.__aexit__(None, None, None)

    async def until(self, session_id: str, status: str) -> list[dict[str, Any]]:
        """The session's events up to the first one with `status`."""
        assert self._lines is not None
        seen = []
        async with asyncio.timeout(20):
            async for line in self._lines:
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                if event["session_id"] == session_id:
                    seen.append(event)
                    if event["status"] == status:
                        return seen
        raise AssertionError(f"the feed ended before {session_id} was {status}: {seen}")


# Inference ----------------------------------------------------------------------------------
async def test_the_stream_assembles_to_exactly_what_infer_answers(
    start_model: StartModel, start_runtime: StartRuntime, http: httpx.AsyncClient
) -> None:
    # Two upstreams of the same script, so each run's tool call ids start at call_1.
    await start_model(delegating, alias="m1")
    await start_model(delegating, alias="m2")
    await start_runtime()
    request = {"tool_ids": ["delegate"], "text": "go", "stream": True}
    r = await http.post("/v1/infer", json={**request, "model_id": "m1"})
    assert r.status_code == 200, r.text
    answered = InferenceResult.model_validate(r.json())
    events = await stream_infer(http, {**request, "model_id": "m2"})
    assert [events[0]["type"], events[-1]["type"]] == ["start", "done"]
    parsed = [StreamEvent.model_validate(e) for e in events]
    assert any(e.path == ["call_1"] for e in parsed)  # the sub-agent's own events, relayed
    assert InferenceResult.assemble(parsed) == answered
    assert answered.content == "parent: sub-answer"
    assert answered.rounds == 2 and answered.finish_reason == "stop"
    assert [m.role for m in answered.messages] == ["user", "assistant", "tool", "assistant"]
    assert answered.messages[1].thinking == "let me delegate"
    assert answered.usage.total_tokens == 30  # the parent's two model calls
    assert set(r.json()) == {"messages", "usage", "finish_reason", "rounds"}  # stateless


async def test_without_a_runtime_worker_both_routes_answer_503(http: httpx.AsyncClient) -> None:
    body = {"model_id": "m", "text": "hi"}
    for path in ("/v1/infer", "/v1/infer/stream"):
        error = assert_error(await http.post(path, json=body), 503, "UNAVAILABLE")
        assert "no runtime worker is running" in error["message"]


async def test_a_request_that_fails_before_any_event_is_a_plain_http_error(
    start_model: StartModel, start_runtime: StartRuntime, http: httpx.AsyncClient
) -> None:
    await start_model(delegating)
    await start_runtime()
    for path in ("/v1/infer", "/v1/infer/stream"):
        assert_error(await http.post(path, json={"text": "hi"}), 400, "INVALID_MESSAGE")
        r = await http.post(path, json={"model_id": "m", "text": "hi", "session_id": "a.b"})
        assert_error(r, 400, "INVALID_ID")
        r = await http.post(path, json={"model_id": "m", "text": "hi", "session_id": "nope"})
        assert_error(r, 404, "NOT_FOUND")
        r = await http.post(path, json={"model_id": "m", "text": "hi", "tool_ids": ["no_such"]})
        assert_error(r, 404, "TOOL_NOT_FOUND")
        assert_error(await http.post(path, json={"max_tool_rounds": -1}), 422, "INVALID_MESSAGE")
    # The model is called after the first event: /v1/infer still answers a plain error.
    r = await http.post("/v1/infer", json={"model_id": "elsewhere", "text": "hi"})
    assert_error(r, 404, "MODEL_NOT_FOUND")


async def test_a_failure_after_the_first_event_is_the_streams_last_event(
    start_runtime: StartRuntime, http: httpx.AsyncClient
) -> None:
    await start_runtime()
    # No LLM worker serves "gone": the inference starts, then its first model call fails.
    events = await stream_infer(http, {"model_id": "gone", "text": "hi"})
    assert [e["type"] for e in events] == ["start", "error"]
    assert events[-1]["error"]["code"] == "MODEL_NOT_FOUND"
    assert set(events[-1]) == {"type", "error"}


async def test_callers_cannot_set_the_runtimes_own_delegation_fields(
    start_model: StartModel, start_runtime: StartRuntime, http: httpx.AsyncClient
) -> None:
    await start_model(lambda body: Reply(content="ok"))
    await start_runtime()
    first = await http.post("/v1/infer", json={"model_id": "m", "text": "a", "session_id": "new"})
    parent = first.json()["session_id"]
    r = await http.post(
        "/v1/infer",
        json={
            "model_id": "m",
            "text": "b",
            "session_id": "new",
            "parent_session_id": parent,
            "delegation": {"depth": 99, "path": ["forged"]},
        },
    )
    assert r.status_code == 200, r.text
    child = (await http.get(f"/v1/sessions/{r.json()['session_id']}")).json()
    assert "parent_id" not in child  # a top-level session, listed as one
    listed = (await http.get("/v1/sessions")).json()["sessions"]
    assert {s["session_id"] for s in listed} == {parent, child["session_id"]}
    assert (await http.get("/v1/sessions", params={"parent_id": parent})).json()["sessions"] == []


# Sessions -------------------------------------------------------------------------------------
async def test_a_session_is_followed_listed_read_continued_titled_and_deleted(
    start_model: StartModel, start_runtime: StartRuntime, http: httpx.AsyncClient
) -> None:
    upstream = await start_model(delegating)
    await start_runtime()
    feed = await Feed(http).open()
    try:
        r = await http.post(
            "/v1/infer",
            json={"model_id": "m", "tool_ids": ["delegate"], "text": "hello", "session_id": "new"},
        )
        assert r.status_code == 200, r.text
        session_id = r.json()["session_id"]
        seen = await feed.until(session_id, "success")
        assert seen[0]["status"] == "streaming" and seen[-1]["unread"] is True
    finally:
        await feed.close()

    listed = (await http.get("/v1/sessions")).json()["sessions"]
    assert [s["session_id"] for s in listed] == [session_id]  # top-level only
    assert listed[0]["status"] == "success" and listed[0]["model_id"] == "m"
    children = (await http.get("/v1/sessions", params={"parent_id": session_id})).json()
    assert [s["parent_id"] for s in children["sessions"]] == [session_id]  # the sub-agent's

    detail = (await http.get(f"/v1/sessions/{session_id}")).json()
    assert detail["unread"] is True and detail["turns"] == 1
    assert [m["role"] for m in detail["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert detail["messages"][-1]["content"] == "parent: sub-answer"

    read = await http.post(f"/v1/sessions/{session_id}/read")
    assert read.status_code == 200 and read.json()["unread"] is False

    again = await http.post(
        "/v1/infer", json={"model_id": "m", "text": "once more", "session_id": session_id}
    )
    assert again.status_code == 200, again.text
    assert [m["content"] for m in upstream.requests[-1]["messages"]][:1] == ["hello"]
    assert (await http.get(f"/v1/sessions/{session_id}")).json()["turns"] == 2

    titled = await http.post(f"/v1/sessions/{session_id}/generate-title")
    assert titled.status_code == 200, titled.text
    assert titled.json() == {"session_id": session_id, "title": "hello"}
    assert upstream.requests[-1]["messages"][1]["content"] == "hello"
    assert (await http.get(f"/v1/sessions/{session_id}")).json()["title"] == "hello"

    deleted = await http.delete(f"/v1/sessions/{session_id}")
    assert deleted.json() == {"session_id": session_id, "deleted": True}
    assert_error(await http.get(f"/v1/sessions/{session_id}"), 404, "NOT_FOUND")
    assert (await http.get("/v1/sessions")).json()["sessions"] == []
    assert (await http.get("/v1/sessions", params={"parent_id": session_id})).json() == {
        "sessions": []
    }


async def test_unknown_and_invalid_session_ids(http: httpx.AsyncClient) -> None:
    for method, suffix in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/read"),
        ("POST", "/revoke"),
        ("POST", "/generate-title"),
    ):
        r = await http.request(method, f"/v1/sessions/nope{suffix}")
        assert_error(r, 404, "NOT_FOUND")
        r = await http.request(method, f"/v1/sessions/-bad{suffix}")
        assert_error(r, 400, "INVALID_ID")
    assert_error(await http.get("/v1/sessions", params={"parent_id": "a b"}), 400, "INVALID_ID")
    r = await http.delete("/v1/sessions/events")  # the feed's path, not a session "events"
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert_error(await http.post("/v1/infer/abort", json={"session_id": "nope"}), 404, "NOT_FOUND")
    r = await http.post("/v1/infer/abort", json={"session_id": "a.b"})
    assert_error(r, 400, "INVALID_ID")


async def test_a_title_needs_a_user_message_and_a_model(
    start_model: StartModel, start_runtime: StartRuntime, http: httpx.AsyncClient
) -> None:
    await start_model(delegating)
    await start_runtime()
    # A session whose only turn failed has no message to title.
    events = await stream_infer(http, {"model_id": "gone", "text": "hi", "session_id": "new"})
    session_id = events[0]["session_id"]
    r = await http.post(f"/v1/sessions/{session_id}/generate-title")
    assert_error(r, 409, "CONFLICT")
    assert (await http.get(f"/v1/sessions/{session_id}")).json()["status"] == "error"
    r = await http.post("/v1/infer", json={"model_id": "m", "text": "pick me", "session_id": "new"})
    session_id = r.json()["session_id"]
    r = await http.post(f"/v1/sessions/{session_id}/generate-title", json={"model_id": "gone"})
    assert_error(r, 404, "MODEL_NOT_FOUND")
    r = await http.post(f"/v1/sessions/{session_id}/generate-title", json={"model_id": "m"})
    assert r.json()["title"] == "pick me"


def test_a_models_answer_is_cleaned_into_a_title() -> None:
    assert clean_title('<think>hmm</think>\n\n"Title: Rust vs. Go."\nmore') == "Rust vs. Go"
    assert clean_title("**Planning a trip**") == "Planning a trip"
    assert clean_title("  ") == ""
    assert len(clean_title("word " * 100)) == 80


# Aborts and revokes ---------------------------------------------------------------------------
async def test_an_abort_on_one_replica_ends_the_stream_relayed_by_another(
    start_model: StartModel, start_runtime: StartRuntime, start_gateway: StartGateway
) -> None:
    upstream = await start_model(lambda body: Reply(content="slow", delay=30))
    await start_runtime(), await start_runtime()
    one, two = await start_gateway(), await start_gateway()
    async with (
        httpx.AsyncClient(base_url=one.url, timeout=30) as on_one,
        httpx.AsyncClient(base_url=two.url, timeout=30) as on_two,
    ):
        feed = await Feed(on_two).open()
        body = {"model_id": "m", "text": "think long", "session_id": "new"}
        async with asyncio.timeout(20), on_one.stream("POST", "/v1/infer/stream", json=body) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            start = json.loads((await anext(lines)).removeprefix("data: "))
            session_id = start["session_id"]
            assert start["type"] == "start" and session_id
            await upstream.started.wait()  # the model call is under way
            aborted = await on_two.post("/v1/infer/abort", json={"session_id": session_id})
            assert aborted.json() == {"session_id": session_id, "aborted": True}
            rest = [json.loads(line[6:]) async for line in lines if line[:6] == "data: "]
        assert [e["type"] for e in rest] == ["error"]
        assert rest[0]["error"]["code"] == "CANCELLED"
        # An aborted inference leaves its session idle (the runtime's record of a cancel).
        try:
            seen = await feed.until(session_id, "idle")
        finally:
            await feed.close()
        assert seen[-1]["unread"] is True
        assert (await on_one.get(f"/v1/sessions/{session_id}")).json()["status"] == "idle"


async def test_a_revoked_session_stops_and_can_never_be_continued(
    start_model: StartModel, start_runtime: StartRuntime, http: httpx.AsyncClient
) -> None:
    upstream = await start_model(lambda body: Reply(content="slow", delay=30))
    await start_runtime()
    body = {"model_id": "m", "text": "think long", "session_id": "new"}
    async with asyncio.timeout(20), http.stream("POST", "/v1/infer/stream", json=body) as r:
        lines = r.aiter_lines()
        session_id = json.loads((await anext(lines)).removeprefix("data: "))["session_id"]
        await upstream.started.wait()
        revoked = await http.post(f"/v1/sessions/{session_id}/revoke")
        assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
        rest = [json.loads(line[6:]) async for line in lines if line[:6] == "data: "]
    assert rest[-1]["error"]["code"] == "CANCELLED"
    # The aborted inference's own last status change did not undo the revoke.
    assert (await http.get(f"/v1/sessions/{session_id}")).json()["status"] == "revoked"
    r = await http.post("/v1/infer", json={**body, "session_id": session_id})
    assert "revoked" in assert_error(r, 400, "INVALID_MESSAGE")["message"]
    assert [s["status"] for s in (await http.get("/v1/sessions")).json()["sessions"]] == ["revoked"]


# The feed -------------------------------------------------------------------------------------
async def test_the_feed_pings_while_quiet_and_ends_when_the_replica_drains(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sessions_api, "PING", 0.05)  # the replica runs in this process
    port = free_port()
    server = make_server(settings, port=port, config=GatewayConfig(), log_level="warning")
    await server.start()
    stopping: asyncio.Task[None] | None = None
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            feed = await Feed(http).open()
            assert feed._lines is not None
            lines = feed._lines
            async with asyncio.timeout(10):
                pings = 0
                while pings < 2:  # two more, with nothing else to say
                    line = await anext(lines)
                    assert line in (": ping", "")
                    pings += line == ": ping"
            stopping = asyncio.create_task(server.stop())
            async with asyncio.timeout(10):
                rest = [line async for line in lines]  # ends: the replica drains
            assert all(line in (": ping", "") for line in rest)
            await feed.close()
            async with asyncio.timeout(15):
                await stopping
    finally:
        if stopping is None:
            await server.stop()


# Scopes and token budgets ---------------------------------------------------------------------
async def test_scopes_and_the_keys_token_budget_apply(
    start_model: StartModel,
    start_runtime: StartRuntime,
    start_gateway: StartGateway,
    start_mcp_worker: StartMCPWorker,
) -> None:
    await start_mcp_worker({"time": TIME})
    await start_model(lambda body: Reply(content="ok"))
    await start_runtime()
    replica: Replica = await start_gateway(config=GatewayConfig(auth=True, admin_token=ADMIN_TOKEN))
    admin = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=replica.url, timeout=30) as http:

        async def key(**spec: Any) -> dict[str, Any]:
            r = await http.post("/gateway/keys", json={"name": "k", **spec}, headers=admin)
            assert r.status_code == 201, r.text
            return r.json()

        reader = (await key(scopes=["agents:read"]))["key"]
        sender = await key(scopes=["send"], token_limit="100000/60s")
        body = {"model_id": "m", "text": "hi", "session_id": "new"}
        r = await http.post("/v1/infer", json=body, headers={"x-api-key": reader})
        assert_error(r, 403, "UNAUTHORIZED")
        assert_error(await http.get("/v1/sessions"), 401, "UNAUTHORIZED")
        r = await http.post("/v1/infer", json=body, headers={"x-api-key": sender["key"]})
        assert r.status_code == 200, r.text
        session_id = r.json()["session_id"]
        r = await http.get("/v1/sessions", headers={"x-api-key": sender["key"]})
        assert_error(r, 403, "UNAUTHORIZED")
        listed = (await http.get("/v1/sessions", headers={"x-api-key": reader})).json()
        assert [s["session_id"] for s in listed["sessions"]] == [session_id]
        r = await http.post(f"/v1/sessions/{session_id}/read", headers={"x-api-key": reader})
        assert_error(r, 403, "UNAUTHORIZED")
        # The inference is counted against the key, with the tokens it reported.
        usage = await http.get("/gateway/usage", params={"key_id": sender["key_id"]}, headers=admin)
        rows = usage.json()["usage"]
        assert [(u["model"], u["requests"], u["total_tokens"]) for u in rows] == [("m", 1, 15)]
        # A key limited to some MCP tools names only those in an inference.
        limited = (await key(scopes=["send"], tools=["demo/*"]))["key"]
        other = body | {"tool_ids": ["time_get_current_time"], "session_id": None}
        r = await http.post("/v1/infer", json=other, headers={"x-api-key": limited})
        assert_error(r, 403, "UNAUTHORIZED")
        assert "time/get_current_time" in r.json()["error"]["message"]
        tiny = await key(scopes=["send"], token_limit="10/60s")
        r = await http.post("/v1/infer", json=body, headers={"x-api-key": tiny["key"]})
        assert_error(r, 429, "RATE_LIMIT")
