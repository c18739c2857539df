"""An outside A2A agent for the bridge's tests, built with the official `a2a-sdk` server classes
alone: the SDK's `DefaultRequestHandler` over an `InMemoryTaskStore` running `WeatherExecutor`,
its card, JSON-RPC and HTTP+JSON routes on a Starlette app, served by uvicorn on a free port.

What the agent does depends on the message text:

    plain ...    a Message reply, no task ("plain: ...")
    ask ...      input-required ("Which city?"); the next message of the task completes it
    fail         the task fails ("the forecast service is down")
    reject       the task is rejected
    slow ...     works until `release` is set (or the task is cancelled)
    stream ...   three artifact updates ("one ", "two ", "three"), then completed
    anything     one artifact "sunny in <text>", completed
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import new_task, new_text_message
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
    Message,
    Part,
    TaskState,
)
from a2a.utils.constants import PROTOCOL_VERSION_0_3, PROTOCOL_VERSION_1_0, TransportProtocol
from starlette.applications import Starlette

from agentmesh.broker.servers import free_port
from agentmesh.gateway.server import AsgiServer
from tests.workers.fake_server import FakeServer

PIECES = ["one ", "two ", "three"]


class WeatherExecutor(AgentExecutor):
    def __init__(self) -> None:
        self.seen: list[Message] = []  # every message it received (with their context ids)
        self.continued: list[str] = []  # the tasks a message continued (answers to questions)
        self.started = asyncio.Event()  # a `slow` task is working
        self.release = asyncio.Event()  # lets `slow` tasks finish
        self.cancelled: list[str] = []  # the tasks its cancel() was called for
        self.cancel_seen = asyncio.Event()

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        message = context.message
        assert message is not None
        self.seen.append(message)
        text = context.get_user_input()
        task_id, context_id = context.task_id or "", context.context_id or ""
        if text.startswith("plain"):
            reply = new_text_message(f"plain: {text}", context_id=context_id)
            await event_queue.enqueue_event(reply)
            return
        updater = TaskUpdater(event_queue, task_id, context_id)
        continuing = context.current_task is not None
        if not continuing:
            task = new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=[message])
            await event_queue.enqueue_event(task)
        await updater.start_work()
        if continuing:  # the answer to our question
            self.continued.append(task_id)
            await updater.add_artifact([Part(text=f"booked for {text}")], name="result")
            await updater.complete()
        elif text.startswith("ask"):
            await updater.requires_input(updater.new_agent_message([Part(text="Which city?")]))
        elif text == "fail":
            await updater.failed(updater.new_agent_message([Part(text="the service is down")]))
        elif text == "reject":
            await updater.reject(updater.new_agent_message([Part(text="not my job")]))
        elif text.startswith("slow"):
            self.started.set()
            await self.release.wait()
            await updater.add_artifact([Part(text="finally")], name="result")
            await updater.complete()
        elif text.startswith("stream"):
            for i, piece in enumerate(PIECES):
                await updater.add_artifact(
                    [Part(text=piece)],
                    artifact_id="forecast",
                    name="result",
                    append=i > 0,
                    last_chunk=i == len(PIECES) - 1,
                )
            await updater.complete()
        else:
            await updater.add_artifact([Part(text=f"sunny in {text}")], name="result")
            await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.cancelled.append(context.task_id or "")
        self.cancel_seen.set()
        await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()


def weather_card(url: str, *, version: str = PROTOCOL_VERSION_1_0) -> AgentCard:
    interfaces = [
        AgentInterface(url=url, protocol_binding=binding, protocol_version=version)
        for binding in (TransportProtocol.JSONRPC.value, TransportProtocol.HTTP_JSON.value)
    ]
    return AgentCard(
        name="Weather",
        description="Forecasts the weather.",
        version="2.0.1",
        supported_interfaces=interfaces,
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain", "application/json"],
        skills=[
            AgentSkill(
                id="forecast", name="Forecast", description="Tomorrow's weather.", tags=["weather"]
            )
        ],
    )


class Methods:
    """ASGI middleware: the JSON-RPC method of every POST, in order (`SendMessage`, ...)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            event = await receive()
            body += event.get("body", b"")
            more = event.get("more_body", False)
        with contextlib.suppress(ValueError, AttributeError):
            self.seen.append(json.loads(body).get("method"))
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class WeatherAgent(FakeServer):
    """`await WeatherAgent().start()`; its port is known before it starts (`url`). `methods`:
    the JSON-RPC methods it was called with. `version` "0.3": an agent that speaks A2A 0.3
    (its card says so; the SDK's routes take the 0.3 method names)."""

    def __init__(self, *, version: str = PROTOCOL_VERSION_1_0) -> None:
        self.executor = WeatherExecutor()
        self.port = free_port()
        card = weather_card(self.url, version=version)
        legacy = version == PROTOCOL_VERSION_0_3
        handler = DefaultRequestHandler(
            agent_executor=self.executor, task_store=InMemoryTaskStore(), agent_card=card
        )
        routes = [
            *create_agent_card_routes(card),
            *create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat=legacy),
            *create_rest_routes(handler, enable_v0_3_compat=legacy),
        ]
        self.methods = Methods(Starlette(routes=routes))
        config = uvicorn.Config(
            self.methods,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        self.server = AsgiServer(config)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
