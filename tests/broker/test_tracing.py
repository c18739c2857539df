"""W3C trace context crosses the bus in NATS headers: the agent's span joins the caller's trace."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentmesh.agents.agent import Agent
from agentmesh.agents.client import MeshClient
from agentmesh.agents.context import Context
from agentmesh.broker.settings import Settings
from agentmesh.schemas.envelope import Message

_exporter = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_exporter))
    # The global provider can be set once per process; later sets are ignored with a warning.
    trace.set_tracer_provider(provider)


async def test_an_agents_handler_runs_in_the_callers_trace(settings: Settings) -> None:
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("another test set a different global tracer provider")
    agent = Agent("traced")
    seen: list[int] = []

    @agent.handler
    async def handle(msg: Message, ctx: Context) -> str:
        seen.append(trace.get_current_span().get_span_context().trace_id)
        return "ok"

    await agent.start(settings)
    try:
        async with MeshClient.connect(settings) as mesh:
            with trace.get_tracer("test").start_as_current_span("user-request") as root:
                await mesh.ask("traced", "hi")
    finally:
        await agent.stop()
    trace_id = root.get_span_context().trace_id
    assert seen == [trace_id]
    names = {s.name for s in _exporter.get_finished_spans() if s.context.trace_id == trace_id}
    assert {
        "user-request",
        f"call {settings.prefix}.agent.traced",
        f"serve {settings.prefix}.agent.traced",
    } <= names
