"""The A2A benchmark's direct baseline: an echo agent built on the official `a2a-sdk` server
classes alone, `python -m tests.bench.a2a_echo --port P`.

The SDK's `DefaultRequestHandler` over an `InMemoryTaskStore`, running `EchoExecutor` in this
process: each message becomes a Task (submitted, then its text as the artifact, then completed),
as the mesh path answers. The SDK's routes (card, JSON-RPC, HTTP+JSON) on a Starlette app, served
by uvicorn with the gateway's protocol settings (httptools, asyncio, keep-alive 30 s, no access
log), so the two paths differ in what stands behind the SDK's dispatchers.
"""

from __future__ import annotations

import argparse

import uvicorn
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
    Part,
    TaskState,
)
from a2a.utils.constants import PROTOCOL_VERSION_1_0, TransportProtocol
from starlette.applications import Starlette

AGENT_NAME = "Direct Echo"


class EchoExecutor(AgentExecutor):
    """A task per message whose artifact is the message's text."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task_id, context_id = context.task_id or "", context.context_id or ""
        history = [context.message] if context.message is not None else []
        await event_queue.enqueue_event(
            new_task(task_id, context_id, TaskState.TASK_STATE_SUBMITTED, history=history)
        )
        updater = TaskUpdater(event_queue, task_id, context_id)
        await updater.add_artifact([Part(text=context.get_user_input())], name="result")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        await TaskUpdater(event_queue, context.task_id or "", context.context_id or "").cancel()


def card(url: str) -> AgentCard:
    interfaces = [
        AgentInterface(url=url, protocol_binding=binding, protocol_version=PROTOCOL_VERSION_1_0)
        for binding in (TransportProtocol.JSONRPC.value, TransportProtocol.HTTP_JSON.value)
    ]
    return AgentCard(
        name=AGENT_NAME,
        description="Replies with the message it receives.",
        version="1.0.0",
        supported_interfaces=interfaces,
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="echo", description="echo", tags=["echo"])],
    )


def app(url: str) -> Starlette:
    agent_card = card(url)
    handler = DefaultRequestHandler(
        agent_executor=EchoExecutor(), task_store=InMemoryTaskStore(), agent_card=agent_card
    )
    routes = [
        *create_agent_card_routes(agent_card),
        *create_jsonrpc_routes(handler, rpc_url="/"),
        *create_rest_routes(handler),
    ]
    return Starlette(routes=routes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.a2a_echo", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    uvicorn.run(
        app(f"http://127.0.0.1:{args.port}"),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        lifespan="on",
        http="httptools",  # the gateway's protocol (its subclass adds a header deadline)
        loop="asyncio",
        timeout_keep_alive=30,
        server_header=False,
        access_log=False,
    )


if __name__ == "__main__":
    main()
