"""The runtime's definitions over HTTP (saved agents, prompt templates, HTTP tools, skills,
secrets) and the shared config's models and MCP servers, against real servers: gateway
replicas, runtime workers, LLM and MCP workers (some following the shared config), a scripted
OpenAI upstream, httpx as the client."""

from __future__ import annotations

import asyncio
import base64
import io
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime import Fences
from agentmesh.broker.settings import Settings
from agentmesh.broker.watch import SharedSource
from agentmesh.following import Following, llm_part, mcp_part, open_source
from agentmesh.gateway.config import GatewaySection
from agentmesh.gateway.errors import error_response
from agentmesh.gateway.state import GatewayConfig
from agentmesh.schemas.codec import pack, unpack
from agentmesh.schemas.errors import InvalidMessage
from agentmesh.schemas.runtime import InferenceRequest, InferenceResult, Message
from agentmesh.workers.llm.worker import LLMWorker
from agentmesh.workers.mcp.worker import MCPWorker
from tests.gateway.conftest import Replica, StartGateway
from tests.mcp.fixtures import DemoHTTP
from tests.runtime import conftest as runtime_fixtures
from tests.runtime.conftest import StartModel, StartRuntime
from tests.runtime.scripted_llm import Reply, ScriptedOpenAI, last_message, tool_names
from tests.waiting import until
from tests.workers.fake_server import FakeServer

# The runtime's fixtures (a scripted model behind an LLM worker; runtime workers), used here.
start_model = runtime_fixtures.start_model
start_runtime = runtime_fixtures.start_runtime

ADMIN_TOKEN = "definitions-test-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}
DEADLINE = 15.0  # seconds a worker has to pick up a change


@pytest.fixture
async def gateway(start_gateway: StartGateway) -> Replica:
    return await start_gateway(config=GatewayConfig(admin_token=ADMIN_TOKEN))


@pytest.fixture
async def http(gateway: Replica) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20, headers=ADMIN) as client:
        yield client


def echo_brain(body: dict[str, Any]) -> Reply:
    first = body["messages"][0]
    system = first["content"] if first["role"] == "system" else ""
    return Reply(content=f"[{system}] {last_message(body)['content']}")


async def send(http: httpx.AsyncClient, agent_id: str, text: str) -> httpx.Response:
    body = {"to_agent_id": agent_id, "content": [{"type": "text", "text": text}], "wait": True}
    return await http.post("/gateway/send", json=body)


async def online_agent(http: httpx.AsyncClient, agent_id: str) -> dict[str, Any] | None:
    r = await http.get("/gateway/agents")
    return next((a for a in r.json()["agents"] if a["agent_id"] == agent_id), None)


# Saved agents ------------------------------------------------------------------------------
async def test_a_posted_agent_is_served_updated_live_and_taken_offline(
    start_model: StartModel, start_runtime: StartRuntime, http: httpx.AsyncClient
) -> None:
    await start_model(echo_brain)
    await start_runtime()
    body = {"agent_id": "helper", "model_id": "m", "system_prompt": "v1", "description": "one"}
    created = await http.post("/v1/agents", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["agent_id"] == "helper" and created.json()["created_at"] > 0

    await until(
        lambda: online_agent(http, "helper"), timeout=DEADLINE, what="the saved agent online"
    )
    r = await send(http, "helper", "hi")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["result"] == "[v1] hi"

    replaced = await http.put(
        "/v1/agents/helper", json={"model_id": "m", "system_prompt": "v2", "description": "two"}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["created_at"] == created.json()["created_at"]

    async def updated() -> bool:
        agent = await online_agent(http, "helper")
        return agent is not None and agent.get("description") == "two"

    # The worker announces the new card once it uses the update.
    await until(updated, timeout=DEADLINE, what="the new card")
    assert (await send(http, "helper", "hi")).json()["result"]["result"] == "[v2] hi"

    assert (await http.delete("/v1/agents/helper")).status_code == 204

    async def offline() -> bool:
        return await online_agent(http, "helper") is None

    await until(offline, timeout=DEADLINE, what="the agent offline")
    gone = await send(http, "helper", "hi")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "AGENT_NOT_FOUND"


async def test_agent_routes_answer_conflicts_missing_ones_and_mismatched_ids(
    http: httpx.AsyncClient, gateway: Replica
) -> None:
    body = {"agent_id": "a1", "model_id": "m", "tool_ids": ["fetch"], "limits": {"timeout": 5}}
    assert (await http.post("/v1/agents", json=body)).status_code == 201
    again = await http.post("/v1/agents", json=body)
    assert again.status_code == 409 and again.json()["error"]["code"] == "CONFLICT"
    listed = (await http.get("/v1/agents")).json()
    assert [a["agent_id"] for a in listed["data"]] == ["a1"]
    assert (await http.get("/v1/agents/a1")).json()["limits"]["timeout"] == 5
    assert (await http.get("/v1/agents/nobody")).status_code == 404
    mismatch = await http.put("/v1/agents/a1", json={"agent_id": "a2", "model_id": "m"})
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == "INVALID_MESSAGE"
    assert (await http.put("/v1/agents/nobody", json={"model_id": "m"})).status_code == 404
    assert (
        await http.post("/v1/agents", json={"agent_id": "a.b", "model_id": "m"})
    ).status_code == 422
    assert (await http.post("/v1/agents", json={"agent_id": "a3"})).status_code == 422  # no model
    assert (await http.delete("/v1/agents/nobody")).status_code == 404
    # Bodies are typed as documented: `false` is not 0.
    strict = await http.post("/v1/agents", json={**body, "limits": {"max_tool_rounds": False}})
    assert strict.status_code == 422
    # Reads are open to agents:read and writes to `define` (anonymous has both with auth off);
    # an agent with bash enabled needs admin.
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        assert (await anonymous.get("/v1/agents/a1")).status_code == 200
        bash = {"agent_id": "a9", "model_id": "m", "enable_bash": True}
        refused = await anonymous.post("/v1/agents", json=bash)
        assert refused.status_code in (401, 403), refused.text
        assert "enable_bash" in refused.text
        assert (
            await anonymous.put("/v1/agents/a1", json=bash | {"agent_id": "a1"})
        ).status_code in (401, 403)
        assert (
            await anonymous.post("/v1/agents", json={"agent_id": "a8", "model_id": "m"})
        ).status_code == 201
        assert (await anonymous.delete("/v1/agents/a8")).status_code == 204
    assert (await http.post("/v1/agents", json=bash)).status_code == 201  # the admin token
    assert (await http.delete("/v1/agents/a1")).status_code == 204


# Prompt templates --------------------------------------------------------------------------
async def infer(mesh: MeshClient, request: InferenceRequest) -> InferenceResult:
    bus = mesh.bus
    body = pack(request.model_dump(mode="json", exclude_none=True))
    frame = await bus.request(bus.subjects.runtime_infer(), body)
    return InferenceResult.model_validate(unpack(frame.data))


async def test_an_inference_names_a_stored_template_by_id_or_name(
    start_model: StartModel,
    start_runtime: StartRuntime,
    http: httpx.AsyncClient,
    mesh: MeshClient,
) -> None:
    upstream = await start_model(echo_brain)
    await start_runtime()
    created = await http.post(
        "/v1/prompt-templates",
        json={"name": "summarize", "content": "Summarize in {{language}}: {{text}}"},
    )
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["id"].startswith("pt") and template["name"] == "summarize"
    duplicate = await http.post("/v1/prompt-templates", json={"name": "summarize", "content": "x"})
    assert duplicate.status_code == 409

    for ref in ("summarize", template["id"]):
        message = Message(
            role="user", prompt_template=ref, arguments={"language": "French", "text": "hi"}
        )
        result = await infer(mesh, InferenceRequest(model_id="m", messages=[message]))
        assert result.content == "[] Summarize in French: hi"
    assert upstream.requests[-1]["messages"][-1]["content"] == "Summarize in French: hi"

    with pytest.raises(InvalidMessage) as refused:
        await infer(
            mesh,
            InferenceRequest(
                model_id="m",
                messages=[
                    Message(role="user", prompt_template="summarize", arguments={"text": "x"})
                ],
            ),
        )
    assert refused.value.details["missing"] == ["language"]
    assert "language" in refused.value.message
    assert error_response(refused.value).status_code == 400  # what HTTP callers get

    # An edit applies to the next inference; a saved agent may render one as its system prompt.
    template_url = f"/v1/prompt-templates/{template['id']}"
    edited = await http.put(template_url, json={"name": "summarize", "content": "Short: {{text}}"})
    assert edited.status_code == 200 and edited.json()["created_at"] == template["created_at"]
    message = Message(role="user", prompt_template="summarize", arguments={"text": "yo"})
    assert (await infer(mesh, InferenceRequest(model_id="m", messages=[message]))).content == (
        "[] Short: yo"
    )
    assert (await http.get(template_url)).json()["content"] == "Short: {{text}}"
    listed = (await http.get("/v1/prompt-templates")).json()["data"]
    assert [t["id"] for t in listed] == [template["id"]]
    assert (await http.delete(template_url)).status_code == 204
    assert (await http.get(template_url)).status_code == 404
    assert (await http.delete(template_url)).status_code == 404
    missing = await http.put(template_url, json={"name": "n", "content": "c"})
    assert missing.status_code == 404


# HTTP tools --------------------------------------------------------------------------------
class ToolServer(FakeServer):
    """An HTTP tool's endpoint: records the arguments POSTed to it, answers with a JSON text."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        super().__init__([Route("/weather", self._call, methods=["POST"])])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/weather"

    async def _call(self, request: Request) -> JSONResponse:
        self.calls.append(await request.json())
        return JSONResponse({"forecast": "sunny"})


@pytest.fixture
async def tool_server() -> AsyncIterator[ToolServer]:
    server = await ToolServer().start()
    yield server
    await server.stop()


def calls_then_answers(tool: str, arguments: dict[str, Any]) -> Callable[..., Reply]:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=f"tool said: {last['content']}")
        return Reply(tool_calls=[(tool, arguments)])

    return brain


async def test_an_http_tool_registered_over_http_is_called_by_the_runtime(
    start_model: StartModel,
    start_runtime: StartRuntime,
    http: httpx.AsyncClient,
    tool_server: ToolServer,
    tmp_path: Path,
) -> None:
    await start_model(calls_then_answers("get_weather", {"city": "Oslo"}))
    # The tool is on 127.0.0.1: this worker is allowed to reach private addresses.
    await start_runtime(fences=Fences(workdir_root=tmp_path / "w", fetch_allow_private=True))
    tool = {
        "tool_id": "weather",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "url": tool_server.url,
    }
    created = await http.post("/v1/tools", json=tool)
    assert created.status_code == 201, created.text
    assert created.json()["tool_type"] == "http"
    assert (await http.post("/v1/tools", json=tool)).status_code == 409
    for taken in ("bash", "skill_x", "batch"):  # a built-in's, a skill's, a route's
        assert (await http.post("/v1/tools", json={**tool, "tool_id": taken})).status_code == 409
    # /v1/tools/<route> is never a tool's path: PUT /v1/tools/skill is no tool update.
    assert (await http.put("/v1/tools/skill", json=tool)).status_code == 405
    assert (await http.delete("/v1/env/detect")).status_code == 405

    catalog = (await http.get("/v1/tools")).json()
    assert {"object", "data", "servers"} <= catalog.keys()  # today's answer, unchanged
    assert [(t["tool_id"], t["url"]) for t in catalog["registered"]] == [
        ("weather", tool_server.url)
    ]

    await http.post(
        "/v1/agents", json={"agent_id": "forecaster", "model_id": "m", "tool_ids": ["weather"]}
    )
    await until(lambda: online_agent(http, "forecaster"), timeout=DEADLINE, what="the agent online")
    r = await send(http, "forecaster", "weather in Oslo?")
    assert r.json()["result"]["result"] == 'tool said: {"forecast":"sunny"}'
    assert tool_server.calls == [{"city": "Oslo"}]

    moved = await http.put("/v1/tools/weather", json={**tool, "url": tool_server.url + "?v=2"})
    assert moved.status_code == 200 and moved.json()["url"].endswith("?v=2")
    mismatch = await http.put("/v1/tools/weather", json={**tool, "tool_id": "other"})
    assert mismatch.status_code == 400
    assert (await http.put("/v1/tools/nothing", json=tool | {"tool_id": None})).status_code == 404

    await http.post("/v1/tools", json={**tool, "tool_id": "second"})
    batch = await http.request(
        "DELETE", "/v1/tools/batch", json={"tool_ids": ["weather", "second", "never"]}
    )
    assert batch.status_code == 200, batch.text
    assert batch.json() == {"deleted": ["weather", "second"], "missing": ["never"]}
    assert (await http.get("/v1/tools")).json()["registered"] == []
    assert (await http.delete("/v1/tools/weather")).status_code == 404


async def test_an_http_tool_on_a_private_address_is_refused_by_default(
    start_model: StartModel,
    start_runtime: StartRuntime,
    http: httpx.AsyncClient,
    tool_server: ToolServer,
) -> None:
    await start_model(calls_then_answers("weather", {"city": "Oslo"}))
    await start_runtime()  # fetch_allow_private off
    await http.post("/v1/tools", json={"tool_id": "weather", "url": tool_server.url})
    await http.post("/v1/agents", json={"agent_id": "f2", "model_id": "m", "tool_ids": ["weather"]})
    await until(lambda: online_agent(http, "f2"), timeout=DEADLINE, what="the agent online")
    answer = (await send(http, "f2", "weather?")).json()["result"]["result"]
    assert answer.startswith("tool said: ") and "private" in answer
    assert tool_server.calls == []
    assert (await http.delete("/v1/tools/weather")).status_code == 204


async def test_a_url_no_http_client_parses_is_refused_and_one_that_parses_is_kept(
    http: httpx.AsyncClient,
) -> None:
    for url in ("http://[", "http://[::zz]/", "https://host:99999/", "http://u@host/"):
        tool = await http.post("/v1/tools", json={"tool_id": "t", "url": url})
        model = await http.put("/v1/models/m", json={"api_base": url})
        for r, field in ((tool, "url"), (model, "api_base")):  # /v1/models: OpenAI's format
            assert r.status_code == 422 and f"{field}: String should match" in r.text, r.text
    assert (await http.get("/v1/tools")).json()["registered"] == []
    url = "http://tools.example:65535/call?q=[1]"
    assert (await http.post("/v1/tools", json={"tool_id": "t", "url": url})).status_code == 201
    assert (await http.get("/v1/tools")).json()["registered"][0]["url"] == url


# Skills ------------------------------------------------------------------------------------
SKILL_MD = """---
name: sales-report
description: Build the weekly sales report.
---
# Sales report

Run scripts/query.sql and make a table of it.
"""


def zipped(files: dict[str, str], folder: str = "") -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(folder + name, text)
    return base64.b64encode(buffer.getvalue()).decode()


async def test_a_skill_registered_over_http_is_fetched_by_a_worker_and_disclosed_on_use(
    start_model: StartModel,
    start_runtime: StartRuntime,
    http: httpx.AsyncClient,
    tmp_path: Path,
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content="done: " + last["content"].splitlines()[0])
        return Reply(tool_calls=[("skill_sales-report", {})])

    upstream = await start_model(brain)
    files = {"SKILL.md": SKILL_MD, "scripts/query.sql": "SELECT 1;"}
    created = await http.post("/v1/tools/skill", json={"files": files})
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["skill_id"] == record["tool_id"] == "skill_sales-report"
    assert record["name"] == "sales-report" and len(record["digest"]) == 64

    cache = tmp_path / "fresh-cache"
    await start_runtime(cache_dir=cache)  # nothing on disk: it must fetch the skill
    await http.post(
        "/v1/agents",
        json={"agent_id": "reporter", "model_id": "m", "skills": ["skill_sales-report"]},
    )
    await until(lambda: online_agent(http, "reporter"), timeout=DEADLINE, what="the agent online")
    r = await send(http, "reporter", "weekly report please")
    assert r.json()["result"]["result"] == "done: # Skill: sales-report"

    first, second = upstream.requests[0], upstream.requests[1]
    assert tool_names(first) == ["skill_sales-report"]
    assert "Build the weekly sales report." in first["tools"][0]["function"]["description"]
    assert "scripts/query.sql" not in str(first)  # the summary only, first
    assert "Run scripts/query.sql" in second["messages"][-1]["content"]
    unpacked = [p.relative_to(cache).parts[1:] for p in cache.rglob("*") if p.is_file()]
    assert sorted(unpacked) == [("SKILL.md",), ("scripts", "query.sql")]

    # The same skill as a zip (its files in one top-level folder): a replacement, 200.
    again = await http.post("/v1/tools/skill", json={"archive": zipped(files, "sales/")})
    assert again.status_code == 200 and again.json()["digest"] == record["digest"]
    listed = (await http.get("/v1/skills")).json()["data"]
    assert [s["skill_id"] for s in listed] == ["skill_sales-report"]
    registered = (await http.get("/v1/tools")).json()["registered"]
    assert [(t["tool_id"], t["tool_type"]) for t in registered] == [("skill_sales-report", "skill")]
    assert (await http.delete("/v1/skills/skill_sales-report")).status_code == 204
    assert (await http.delete("/v1/skills/skill_sales-report")).status_code == 404
    assert (await http.get("/v1/skills")).json()["data"] == []


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"files": {"README.md": "no skill here"}}, "no SKILL.md"),
        ({"files": {"SKILL.md": "# no front matter"}}, "front matter"),
        ({"files": {"SKILL.md": "---\nname: x\n---\n"}}, "front matter"),
        ({"files": {"SKILL.md": SKILL_MD, "../evil.sh": "rm -rf /"}}, "relative path"),
        ({"files": {"SKILL.md": SKILL_MD, "/etc/x": "x"}}, "relative path"),
        ({"archive": "not base64!"}, "not base64"),
        ({"archive": base64.b64encode(b"not a zip").decode()}, "not a zip"),
        ({"archive": zipped({"../up.txt": "x", "SKILL.md": SKILL_MD})}, "bad path"),
        ({"files": {"SKILL.md": SKILL_MD}, "archive": zipped({})}, "either"),
        ({}, "either"),
    ],
)
async def test_a_skill_without_skill_md_or_with_bad_paths_is_refused(
    http: httpx.AsyncClient, body: dict[str, Any], says: str
) -> None:
    r = await http.post("/v1/tools/skill", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "INVALID_MESSAGE" and says in r.json()["error"]["message"]


async def test_a_skill_over_the_size_limit_is_refused(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentmesh.gateway import runtime_tools_api

    monkeypatch.setattr(runtime_tools_api, "MAX_SKILL_BYTES", 100)
    r = await http.post("/v1/tools/skill", json={"files": {"SKILL.md": SKILL_MD}})
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


# MCP servers (the shared config) -----------------------------------------------------------
async def shared_text(settings: Settings, mesh: MeshClient) -> dict[str, Any]:
    source = await SharedSource.open(mesh.bus.nc, settings.prefix)
    text = await source.read()
    return yaml.safe_load(text or "") or {}


async def test_mcp_servers_land_in_the_shared_config_and_a_following_worker_serves_them(
    http: httpx.AsyncClient, settings: Settings, mesh: MeshClient, demo_http: DemoHTTP
) -> None:
    # What an operator applied before (kept as it is by every edit).
    source = await SharedSource.open(mesh.bus.nc, settings.prefix, create=True)
    await source.put("gateway:\n  max_body_bytes: 2000000\nagents: []\n")
    r = await http.post("/v1/tools/mcp", json={"mcpServers": {"demo": {"url": demo_http.url}}})
    assert r.status_code == 200, r.text
    assert r.json() == {"added": ["demo"], "replaced": []}
    doc = await shared_text(settings, mesh)
    assert doc == {
        "gateway": {"max_body_bytes": 2000000},
        "agents": [],
        "mcpServers": {"demo": {"url": demo_http.url}},
    }

    opened = await open_source(None, True, settings)
    assert opened.doc.mcp() is not None
    worker = MCPWorker(opened.doc.mcp())  # type: ignore[arg-type]
    following = Following(worker, opened, [mcp_part(worker)])
    await following.start(settings)
    try:
        await worker.wait_up(timeout=30)

        async def state_of(name: str) -> dict[str, Any] | None:
            listed = (await http.get("/v1/mcp-servers")).json()["data"]
            found = next((s for s in listed if s["name"] == name), None)
            return found if found and found["state"] == "up" else None

        demo = await until(lambda: state_of("demo"), timeout=DEADLINE, what="demo up")
        assert demo["source"] == "shared" and demo["transport"] == "http" and demo["tools"] > 0

        headers = {"Authorization": "Bearer secret-token"}
        second = {"url": demo_http.url, "headers": headers, "timeout": 5}
        r = await http.post("/v1/tools/mcp", json={"mcpServers": {"second": second}})
        assert r.json() == {"added": ["second"], "replaced": []}
        listed = await until(
            lambda: state_of("second"), timeout=DEADLINE, what="second up (applied live)"
        )
        assert listed["headers"] == ["Authorization"] and "secret-token" not in str(listed)

        assert (await http.delete("/v1/mcp-servers/second")).status_code == 204
        assert (await http.delete("/v1/mcp-servers/second")).status_code == 404

        async def stopped() -> bool:
            listed = (await http.get("/v1/mcp-servers")).json()["data"]
            return [s["name"] for s in listed] == ["demo"]

        await until(stopped, timeout=DEADLINE, what="second no longer served")
    finally:
        await following.stop()
    assert list((await shared_text(settings, mesh))["mcpServers"]) == ["demo"]


async def test_stdio_mcp_servers_are_refused_unless_the_gateway_allows_commands(
    start_gateway: StartGateway, http: httpx.AsyncClient, settings: Settings, mesh: MeshClient
) -> None:
    stdio = {"mcpServers": {"time": {"command": "python", "args": ["-m", "mcp_server_time"]}}}
    r = await http.post("/v1/tools/mcp", json=stdio)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["details"]["reason"] == "mcp_commands_off"
    assert "mcpServers" not in await shared_text_or_empty(settings, mesh)

    allowing = await start_gateway(
        config=GatewayConfig(admin_token=ADMIN_TOKEN, allow_mcp_commands=True)
    )
    async with httpx.AsyncClient(base_url=allowing.url, headers=ADMIN) as other:
        r = await other.post("/v1/tools/mcp", json=stdio)
        assert r.status_code == 200, r.text
        listed = (await other.get("/v1/mcp-servers")).json()["data"]
    assert listed[0]["command"] == "python" and listed[0]["state"] == "not_served"
    assert (await shared_text(settings, mesh))["mcpServers"]["time"]["command"] == "python"
    # Values with `${` would read each worker's environment: refused.
    ref = {"mcpServers": {"x": {"url": "http://h/${SECRET}"}}}
    assert (await http.post("/v1/tools/mcp", json=ref)).status_code == 422
    off = {"mcpServers": {"time": {"url": "http://h", "disabled": True}}}
    assert (await http.post("/v1/tools/mcp", json=off)).status_code == 409  # none enabled


async def shared_text_or_empty(settings: Settings, mesh: MeshClient) -> dict[str, Any]:
    try:
        return await shared_text(settings, mesh)
    except LookupError:
        return {}


async def test_concurrent_writes_from_two_gateways_all_land(
    start_gateway: StartGateway, gateway: Replica, settings: Settings, mesh: MeshClient
) -> None:
    other = await start_gateway(config=GatewayConfig(admin_token=ADMIN_TOKEN))
    async with (
        httpx.AsyncClient(base_url=gateway.url, headers=ADMIN, timeout=20) as one,
        httpx.AsyncClient(base_url=other.url, headers=ADMIN, timeout=20) as two,
    ):
        posts = [
            client.post(
                "/v1/tools/mcp", json={"mcpServers": {f"s{i}": {"url": f"http://h{i}/mcp"}}}
            )
            for i, client in enumerate([one, two] * 4)
        ]
        posts += [
            client.post("/v1/models", json={"model_id": f"m{i}", "api_key": "sk"})
            for i, client in enumerate([two, one] * 3)
        ]
        answers = await asyncio.gather(*posts)
    assert [a.status_code for a in answers] == [200] * 8 + [201] * 6
    doc = await shared_text(settings, mesh)
    assert sorted(doc["mcpServers"]) == [f"s{i}" for i in range(8)]
    assert sorted(m["name"] for m in doc["models"]) == [f"m{i}" for i in range(6)]


# Models (the shared config) ----------------------------------------------------------------
async def test_a_model_posted_over_http_is_served_by_a_worker_following_the_shared_config(
    http: httpx.AsyncClient, settings: Settings, mesh: MeshClient
) -> None:
    upstream = await ScriptedOpenAI(lambda body: Reply(content="from upstream")).start()
    try:
        body = {
            "model_id": "qwen3-14b",
            "api_base": upstream.base_url,
            "model_name": "qwen3:14b",
            "api_protocol": "openai",
            "api_key": "sk-secret",
        }
        r = await http.post("/v1/models", json=body)
        assert r.status_code == 201, r.text
        assert r.json() == {
            "model_id": "qwen3-14b",
            "api_protocol": "openai",
            "api_base": upstream.base_url,
            "model_name": "qwen3:14b",
            "api_key_set": True,
        }
        doc = await shared_text(settings, mesh)
        assert doc["models"] == [
            {
                "name": "qwen3-14b",
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "qwen3:14b",
                        "base_url": upstream.base_url,
                        "api_key": "sk-secret",
                    }
                ],
            }
        ]
        again = await http.post("/v1/models", json=body)
        assert again.status_code == 409 and again.json()["error"]["type"]  # OpenAI's format

        opened = await open_source(None, True, settings)
        worker = LLMWorker(opened.doc.llm())  # type: ignore[arg-type]
        following = Following(worker, opened, [llm_part(worker)])
        await following.start(settings)
        try:

            async def listed(alias: str) -> bool:
                models = (await http.get("/v1/models")).json()
                assert models["object"] == "list"  # GET /v1/models: the OpenAI list, as before
                return alias in [m["id"] for m in models["data"]]

            await until(lambda: listed("qwen3-14b"), timeout=DEADLINE, what="the alias served")
            chat = await http.post(
                "/v1/chat/completions",
                json={"model": "qwen3-14b", "messages": [{"role": "user", "content": "hi"}]},
            )
            assert chat.json()["choices"][0]["message"]["content"] == "from upstream"
            assert upstream.requests[-1]["model"] == "qwen3:14b"

            r = await http.post("/v1/models", json={**body, "model_id": "second"})
            assert r.status_code == 201
            await until(
                lambda: listed("second"), timeout=DEADLINE, what="a second alias, applied live"
            )

            put = await http.put("/v1/models/second", json={**body, "model_id": None})
            assert put.status_code == 200 and "api_key" not in put.json()
            mismatch = await http.put("/v1/models/second", json=body)
            assert mismatch.status_code == 400
            assert (
                await http.put("/v1/models/nope", json=body | {"model_id": None})
            ).status_code == 404
            assert (await http.delete("/v1/models/second")).status_code == 204

            async def unlisted() -> bool:
                return not await listed("second")

            await until(unlisted, timeout=DEADLINE, what="the alias withdrawn")
            assert (await http.delete("/v1/models/second")).status_code == 404
        finally:
            await following.stop()
    finally:
        await upstream.stop()
    assert "sk-secret" not in (await http.get("/v1/models")).text
    ref = await http.post("/v1/models", json={"model_id": "x", "api_key": "${OPENAI_API_KEY}"})
    assert ref.status_code == 422


# Secrets -----------------------------------------------------------------------------------
async def test_env_secrets_are_stored_and_never_answered(
    http: httpx.AsyncClient, gateway: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = await http.post("/v1/env", json={"key": "SEARCH_API_KEY", "value": "top-secret-value"})
    assert r.status_code == 200 and r.json() == {"key": "SEARCH_API_KEY", "set": True}
    listed = await http.get("/v1/env")
    assert listed.json() == {"env": {"SEARCH_API_KEY": {"set": True}}}
    assert "top-secret" not in listed.text
    assert (await http.post("/v1/env", json={"key": "BAD-NAME", "value": "x"})).status_code == 422
    assert (await http.delete("/v1/env/SEARCH_API_KEY")).status_code == 204
    assert (await http.delete("/v1/env/SEARCH_API_KEY")).status_code == 404

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    detected = (await http.post("/v1/env/detect")).json()
    assert "ANTHROPIC_API_KEY" in detected["detected"]
    assert "OPENAI_API_KEY" not in detected["detected"] and "OPENAI_API_KEY" in detected["checked"]
    assert "sk-ant-test" not in str(detected)
    async with httpx.AsyncClient(base_url=gateway.url) as anonymous:
        assert (await anonymous.get("/v1/env")).status_code == 401  # admin only


def test_allow_mcp_commands_comes_from_the_environment_or_the_mesh_file() -> None:
    assert GatewayConfig.from_env({}).allow_mcp_commands is False
    base = GatewayConfig.from_env({"AGENTMESH_GATEWAY_ALLOW_MCP_COMMANDS": "on"})
    assert base.allow_mcp_commands is True
    assert GatewaySection().to_config(base).allow_mcp_commands is True  # not set: kept
    assert GatewaySection(allow_mcp_commands=False).to_config(base).allow_mcp_commands is False
