"""Finding and reaching A2A agents through the gateway (issue 13): a configured public URL in
the cards, the directory of online agents, the default agent's root card, keys limited to some
agents (`to_agents`), and an outside `a2a-sdk` agent proxied at `/a2a-proxy/<name>`. Real
gateway replicas, agents, executor, and the official `a2a-sdk` client and server classes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.client.errors import AgentCardResolutionError
from a2a.helpers.proto_helpers import new_task
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    TaskState,
)
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, TransportProtocol
from starlette.applications import Starlette

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.broker.durable import DurableState
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.auth import Scope
from agentmesh.gateway.config import GatewaySection
from agentmesh.gateway.keys import DEFAULT_SCOPES, KeyStore
from agentmesh.gateway.server import AsgiServer
from agentmesh.gateway.state import GatewayConfig
from tests.conftest import StartAgent, StartExecutor, wait_agent
from tests.gateway.conftest import StartGateway
from tests.gateway.test_websocket import ws_agent

JSONRPC, REST = TransportProtocol.JSONRPC.value, TransportProtocol.HTTP_JSON.value
CARD = "/.well-known/agent-card.json"
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
FOREIGN = "http://elsewhere.invalid/rpc"


@pytest.fixture
def keys(durable: DurableState, settings: Settings) -> KeyStore:
    return KeyStore(durable, Subjects(settings.prefix))


@pytest.fixture
async def alpha_beta(start_agent: StartAgent, start_executor: StartExecutor) -> list[Agent]:
    agents = []
    for agent_id in ("alpha", "beta"):
        agents.append(await start_agent(named_echo(agent_id)))
    await start_executor()
    return agents


def named_echo(agent_id: str) -> Agent:
    agent = Agent(agent_id, name=agent_id.title(), description=f"The {agent_id} agent.")
    agent.handler(lambda msg, ctx: f"{agent_id}: {msg.text}")
    return agent


def user(text: str, **kw: object) -> Message:
    return Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)], **kw)


def rpc_send(text: str) -> dict[str, object]:
    message = {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": [{"text": text}]}
    return {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {"message": message}}


V1 = {"A2A-Version": "1.0"}


def urls(card: AgentCard) -> set[str]:
    return {i.url for i in card.supported_interfaces}


# A configured public URL -----------------------------------------------------------------------
def test_the_public_url_and_the_a2a_options_are_checked_where_they_are_read() -> None:
    env = {
        "AGENTMESH_GATEWAY_PUBLIC_URL": "https://mesh.example/base/",
        "AGENTMESH_GATEWAY_A2A_DEFAULT_AGENT": "alpha",
        "AGENTMESH_GATEWAY_A2A_PROXY": "weather=https://weather.example/a2a/, news=http://n:81",
    }
    config = GatewayConfig.from_env(env)
    assert config.public_url == "https://mesh.example/base"
    assert config.a2a_default_agent == "alpha"
    assert config.a2a_proxy == {"weather": "https://weather.example/a2a", "news": "http://n:81"}
    for name, value in (
        ("AGENTMESH_GATEWAY_PUBLIC_URL", "ftp://mesh.example"),
        ("AGENTMESH_GATEWAY_PUBLIC_URL", "mesh.example"),
        ("AGENTMESH_GATEWAY_PUBLIC_URL", "https://mesh.example/?x=1"),
        ("AGENTMESH_GATEWAY_A2A_DEFAULT_AGENT", "a.b"),
        ("AGENTMESH_GATEWAY_A2A_PROXY", "weather"),
        ("AGENTMESH_GATEWAY_A2A_PROXY", "we/ather=https://w.example"),
        ("AGENTMESH_GATEWAY_A2A_PROXY", "w=https://a.example,w=https://b.example"),
    ):
        with pytest.raises(ValueError, match="bad AGENTMESH_GATEWAY_"):
            GatewayConfig.from_env({name: value})
    # The mesh file's gateway section: the same rules, applied over the environment's values.
    section = GatewaySection.model_validate(
        {"public_url": "http://127.0.0.1:9/x/", "a2a_proxy": {"w": "http://w.example/"}}
    )
    applied = section.to_config(GatewayConfig(a2a_default_agent="alpha"))
    assert (applied.public_url, applied.a2a_proxy) == (
        "http://127.0.0.1:9/x",
        {"w": "http://w.example"},
    )
    assert applied.a2a_default_agent == "alpha"  # not in the file: kept
    with pytest.raises(ValueError, match="public URL"):
        GatewaySection.model_validate({"public_url": "javascript:alert(1)"})


async def test_a_configured_public_url_is_in_every_card_whatever_the_headers(
    start_gateway: StartGateway, alpha_beta: list[Agent]
) -> None:
    public = "https://agents.example.com/mesh"
    gateway = await start_gateway(config=GatewayConfig(public_url=public))
    forwarded = {"X-Forwarded-Host": "elsewhere.example", "X-Forwarded-Proto": "http"}
    async with httpx.AsyncClient(timeout=10) as http:
        resolver = A2ACardResolver(http, f"{gateway.url}/a2a/alpha")
        for headers in ({}, forwarded):
            card = await resolver.get_agent_card(http_kwargs={"headers": headers})
            assert urls(card) == {f"{public}/a2a/alpha"}
        listed = (await http.get(f"{gateway.url}/a2a", headers=forwarded)).json()["agents"]
        assert {e["card_url"] for e in listed} == {
            f"{public}/a2a/{a}{CARD}" for a in ("alpha", "beta")
        }


# The directory and the root card ---------------------------------------------------------------
async def test_the_directory_lists_the_cards_of_the_online_agents_only(
    start_gateway: StartGateway, alpha_beta: list[Agent], mesh: MeshClient
) -> None:
    gateway = await start_gateway()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as http:
        listed = (await http.get("/a2a")).json()["agents"]
        assert [e["agent_id"] for e in listed] == ["alpha", "beta"]
        for entry in listed:  # the same document as the agent's own card
            own = (await http.get(f"/a2a/{entry['agent_id']}{CARD}")).json()
            assert entry["card"] == own
            assert entry["card_url"] == f"{gateway.url}/a2a/{entry['agent_id']}{CARD}"
        assert listed[0]["card"]["name"] == "Alpha"
        assert listed[0]["card"]["supportedInterfaces"][0]["url"] == f"{gateway.url}/a2a/alpha"
        await alpha_beta[1].stop()
        await wait_agent(mesh, "beta", 0)
        assert [e["agent_id"] for e in (await http.get("/a2a")).json()["agents"]] == ["alpha"]


async def test_the_root_card_is_the_default_agents_and_the_sdk_client_uses_it(
    start_gateway: StartGateway, alpha_beta: list[Agent]
) -> None:
    plain = await start_gateway()
    with_default = await start_gateway(config=GatewayConfig(a2a_default_agent="alpha"))
    ghost = await start_gateway(config=GatewayConfig(a2a_default_agent="ghost"))
    async with httpx.AsyncClient(timeout=30) as http:
        for replica in (plain, ghost):  # none configured; configured but not online
            r = await http.get(f"{replica.url}{CARD}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
        assert "a2a_default_agent" in (await http.get(f"{plain.url}{CARD}")).text
        card = await A2ACardResolver(http, with_default.url).get_agent_card()
        assert card.name == "Alpha" and urls(card) == {f"{with_default.url}/a2a/alpha"}
        config = ClientConfig(httpx_client=http, streaming=False)
        async with await ClientFactory(config).create_from_url(with_default.url) as client:
            [answer] = [
                r async for r in client.send_message(SendMessageRequest(message=user("hi")))
            ]
        assert answer.task.status.state == TaskState.TASK_STATE_COMPLETED
        assert answer.task.artifacts[0].parts[0].text == "alpha: hi"


# Keys limited to some agents -------------------------------------------------------------------
async def test_a_key_limited_to_a_star_reaches_alpha_and_not_beta(
    start_gateway: StartGateway, alpha_beta: list[Agent], keys: KeyStore
) -> None:
    gateway = await start_gateway(config=GatewayConfig(auth=True, admin_token=ADMIN_TOKEN))
    full, _ = await keys.create("full", scopes=DEFAULT_SCOPES)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        made = await http.post(
            "/gateway/keys", json={"name": "a-only", "to_agents": ["a*"]}, headers=admin
        )
        assert made.status_code == 201 and made.json()["to_agents"] == ["a*"]
        limited = {"X-API-Key": made.json()["key"]}
        listed = (await http.get("/gateway/keys", headers=admin)).json()["keys"]
        assert {k["name"]: k["to_agents"] for k in listed} == {"full": None, "a-only": ["a*"]}
        # A2A: beta looks like a missing agent, everywhere; alpha works.
        assert (await http.get(f"/a2a/alpha{CARD}", headers=limited)).status_code == 200
        r = await http.get(f"/a2a/beta{CARD}", headers=limited)
        assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
        directory = (await http.get("/a2a", headers=limited)).json()["agents"]
        assert [e["agent_id"] for e in directory] == ["alpha"]
        all_agents = (await http.get("/a2a", headers={"X-API-Key": full})).json()["agents"]
        assert [e["agent_id"] for e in all_agents] == ["alpha", "beta"]
        r = await http.post("/a2a/beta", json=rpc_send("x"), headers={**V1, **limited})
        assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
        beta_task = (
            await http.post("/a2a/beta", json=rpc_send("x"), headers={**V1, "X-API-Key": full})
        ).json()["result"]["task"]["id"]
        for method, path in (("GET", f"/tasks/{beta_task}"), ("GET", "/tasks")):
            r = await http.request(method, f"/a2a/beta{path}", headers={**V1, **limited})
            assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
        r = await http.post(f"/a2a/beta/tasks/{beta_task}:cancel", headers={**V1, **limited})
        assert r.status_code == 404
    # The SDK client, with the limited key, on alpha.
    async with httpx.AsyncClient(timeout=30, headers=limited) as as_limited:
        config = ClientConfig(httpx_client=as_limited, streaming=False)
        async with await ClientFactory(config).create_from_url(
            f"{gateway.url}/a2a/alpha"
        ) as client:
            [sent] = [r async for r in client.send_message(SendMessageRequest(message=user("hi")))]
            assert sent.task.artifacts[0].parts[0].text == "alpha: hi"
            again = await client.get_task(GetTaskRequest(id=sent.task.id))
            assert again.status.state == TaskState.TASK_STATE_COMPLETED
        with pytest.raises(AgentCardResolutionError):
            await ClientFactory(config).create_from_url(f"{gateway.url}/a2a/beta")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        # The mesh's own routes: 403.
        for target in ("alpha", "beta"):
            body = {"to_agent_id": target, "content": [{"type": "text", "text": "x"}]}
            r = await http.post("/gateway/send", json={**body, "wait": True}, headers=limited)
            if target == "alpha":
                assert (
                    r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "alpha: x"
                )
            else:
                assert r.status_code == 403 and r.json()["error"]["code"] == "UNAUTHORIZED"
                assert "to_agents" in r.json()["error"]["message"]
        r = await http.post(
            "/v1/tasks", json={"agent_id": "beta", "task_description": "x"}, headers=limited
        )
        assert r.status_code == 403
        r = await http.post(
            "/v1/tasks", json={"agent_type": "any", "task_description": "x"}, headers=limited
        )
        assert r.status_code == 403  # an agent_type could be served by any agent
        r = await http.post(
            "/v1/tasks", json={"agent_id": "alpha", "task_description": "x"}, headers=limited
        )
        assert r.status_code == 201
    # A WebSocket agent's sends, with a connect key limited to a*.
    ws_key, _ = await keys.create(
        "ws", scopes=DEFAULT_SCOPES, agents=["ws-agent"], to_agents=["a*"]
    )
    async with ws_agent(gateway, "ws-agent", api_key=ws_key) as sock:
        content = [{"type": "text", "text": "x"}]
        await sock.send(
            {"type": "send", "to_agent_id": "beta", "content": content, "message_id": "m-1"}
        )
        refused = await sock.expect("error")
        assert (refused["code"], refused["message_id"]) == ("UNAUTHORIZED", "m-1")
        await sock.send(
            {"type": "send", "to_agent_id": "alpha", "content": content, "message_id": "m-2"}
        )
        assert (await sock.expect("result"))["message_id"] == "m-2"


# The proxy to an outside A2A agent -------------------------------------------------------------
class Forecaster(AgentExecutor):
    """An outside agent built on the SDK alone: a task per message, working, two chunks, done."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        history = [context.message] if context.message is not None else []
        await event_queue.enqueue_event(
            new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=history)
        )
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.start_work()
        city = context.get_user_input()
        await updater.add_artifact([Part(text=f"{city}: ")], artifact_id="forecast")
        await updater.add_artifact([Part(text="sunny")], artifact_id="forecast", append=True)
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()


@pytest.fixture
async def outside() -> AsyncIterator[str]:
    """An `a2a-sdk` server (DefaultRequestHandler, InMemoryTaskStore, the SDK's routes) under
    uvicorn on a free port; its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    interfaces = [
        AgentInterface(url=url, protocol_binding=b, protocol_version=v)
        for v in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)
        for b in (JSONRPC, REST)
    ]
    # Not under the agent's URL: the gateway could not forward to it, so the card leaves it out.
    interfaces.append(
        AgentInterface(url=FOREIGN, protocol_binding=JSONRPC, protocol_version=PROTOCOL_VERSION_0_3)
    )
    card = AgentCard(
        name="Weather",
        description="Forecasts.",
        version="2.0.0",
        supported_interfaces=interfaces,
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="forecast", name="forecast", description="d", tags=["weather"])],
    )
    handler = DefaultRequestHandler(
        agent_executor=Forecaster(), task_store=InMemoryTaskStore(), agent_card=card
    )
    app = Starlette(
        routes=[
            *create_agent_card_routes(card),
            *create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=True),
            *create_rest_routes(handler, enable_v0_3_compat=True),
        ]
    )
    server = AsgiServer(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    await server.start()
    try:
        yield url
    finally:
        await server.stop()


@pytest.mark.parametrize("binding", [JSONRPC, REST])
async def test_an_outside_sdk_agent_is_reached_through_the_proxy_with_its_card_rewritten(
    start_gateway: StartGateway, outside: str, binding: str
) -> None:
    gateway = await start_gateway(config=GatewayConfig(a2a_proxy={"weather": outside}))
    base = f"{gateway.url}/a2a-proxy/weather"
    async with httpx.AsyncClient(timeout=30) as http:
        card = await A2ACardResolver(http, base).get_agent_card()
        assert card.name == "Weather" and card.version == "2.0.0"
        assert urls(card) == {base}
        raw = await http.get(base + CARD)
        assert outside not in raw.text and FOREIGN not in raw.text
        doc = raw.json()  # the 0.3 fields too
        assert doc["url"] == base and {i["url"] for i in doc["additionalInterfaces"]} == {base}
        assert len(doc["supportedInterfaces"]) == 4
        forwarded = {"X-Forwarded-Host": "agents.example.com", "X-Forwarded-Proto": "https"}
        card_out = await A2ACardResolver(http, base).get_agent_card(
            http_kwargs={"headers": forwarded}
        )
        assert urls(card_out) == {"https://agents.example.com/a2a-proxy/weather"}
        config = ClientConfig(
            httpx_client=http, streaming=False, supported_protocol_bindings=[binding]
        )
        async with ClientFactory(config).create(card) as client:
            [answer] = [
                r async for r in client.send_message(SendMessageRequest(message=user("Oslo")))
            ]
            task = answer.task
            assert task.status.state == TaskState.TASK_STATE_COMPLETED
            assert "".join(p.text for a in task.artifacts for p in a.parts) == "Oslo: sunny"
            again = await client.get_task(GetTaskRequest(id=task.id))  # the outside agent's store
            assert again.id == task.id and again.status.state == TaskState.TASK_STATE_COMPLETED
        config = ClientConfig(
            httpx_client=http, streaming=True, supported_protocol_bindings=[binding]
        )
        async with ClientFactory(config).create(card) as client:
            got = [r async for r in client.send_message(SendMessageRequest(message=user("Rome")))]
        kinds = [r.WhichOneof("payload") for r in got]
        assert kinds[0] == "task" and kinds.count("artifact_update") == 2
        assert got[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
        pieces = [
            r.artifact_update.artifact.parts[0].text for r in got if r.HasField("artifact_update")
        ]
        assert pieces == ["Rome: ", "sunny"]


async def test_the_proxy_matches_whole_path_segments_and_reports_outside_failures(
    start_gateway: StartGateway, outside: str
) -> None:
    nothing = f"http://127.0.0.1:{free_port()}"  # no server there
    config = GatewayConfig(a2a_proxy={"weather": outside, "down": nothing})
    gateway = await start_gateway(config=config)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        for path in ("/a2a-proxy/weather-v2", "/a2a-proxy/weatherx", "/a2a-proxy/weather-v2/x"):
            r = await http.get(path + CARD)
            assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND", path
            r = await http.post(path, json=rpc_send("x"), headers=V1)
            assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND", path
        assert (await http.get("/a2a-proxy/weather" + CARD)).status_code == 200
        r = await http.get("/a2a-proxy/weather/tasks/../../secret")
        assert r.status_code == 404
        r = await http.get("/a2a-proxy/down" + CARD)
        assert r.status_code == 503 and r.json()["error"]["code"] == "UNAVAILABLE"
        r = await http.post("/a2a-proxy/down", json=rpc_send("x"), headers=V1)
        assert r.status_code == 503 and "down" in r.json()["error"]["message"]
        # The outside agent's own answers pass through: a JSON-RPC error with HTTP 200.
        r = await http.post(
            "/a2a-proxy/weather",
            json={"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "nope"}},
            headers=V1,
        )
        assert r.status_code == 200 and r.json()["error"]["code"] == -32001


async def test_the_proxy_applies_the_gateways_keys_and_scopes(
    start_gateway: StartGateway, outside: str, keys: KeyStore
) -> None:
    gateway = await start_gateway(config=GatewayConfig(auth=True, a2a_proxy={"weather": outside}))
    reader, _ = await keys.create("reader", scopes=frozenset({Scope.AGENTS_READ}))
    sender, _ = await keys.create("sender", scopes=DEFAULT_SCOPES)
    elsewhere, _ = await keys.create("a-only", scopes=DEFAULT_SCOPES, to_agents=["a*"])
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        assert (await http.get("/a2a-proxy/weather" + CARD)).status_code == 401
        doc = (await http.get("/a2a-proxy/weather" + CARD, headers={"X-API-Key": reader})).json()
        assert set(doc["securitySchemes"]) == {"bearer", "apiKey"}  # the gateway's key
        r = await http.post(
            "/a2a-proxy/weather", json=rpc_send("x"), headers={**V1, "X-API-Key": reader}
        )
        assert r.status_code == 403  # reading is not sending
        get = {"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "nope"}}
        r = await http.post("/a2a-proxy/weather", json=get, headers={**V1, "X-API-Key": reader})
        assert r.status_code == 200 and r.json()["error"]["code"] == -32001
        r = await http.post(
            "/a2a-proxy/weather", json=rpc_send("Oslo"), headers={**V1, "X-API-Key": sender}
        )
        assert r.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
        r = await http.get("/a2a-proxy/weather" + CARD, headers={"X-API-Key": elsewhere})
        assert r.status_code == 404 and r.json()["error"]["code"] == "AGENT_NOT_FOUND"
