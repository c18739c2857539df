"""`delegate` to a WebSocket agent attached to a gateway: the runtime reaches it by id over the
bus like any agent, and its answer comes back as the tool result."""

from __future__ import annotations

import asyncio
from typing import Any

from agentmesh.agents.runtime import InferenceRequest, InferenceResult
from tests.gateway.conftest import StartGateway, start_gateway  # noqa: F401 - the fixture
from tests.gateway.test_websocket import text, ws_agent
from tests.runtime.conftest import MakeRuntime, StartModel
from tests.runtime.scripted_llm import Reply, last_message


async def test_delegation_reaches_a_websocket_agent_and_reads_its_answer(
    start_model: StartModel,
    make_runtime: MakeRuntime,
    start_gateway: StartGateway,  # noqa: F811
) -> None:
    def brain(body: dict[str, Any]) -> Reply:
        last = last_message(body)
        if last["role"] == "tool":
            return Reply(content=f"the socket said: {last['content']}")
        return Reply(tool_calls=[("delegate", {"agent_id": "ws-helper", "task": "translate hi"})])

    await start_model(brain)
    replica = await start_gateway()
    async with ws_agent(replica, "ws-helper") as sock:
        running = asyncio.ensure_future(
            make_runtime().ainfer(InferenceRequest(model_id="m", tool_ids=["delegate"], text="go"))
        )
        message = await sock.expect("message")
        assert message["content"] == text("translate hi")
        assert message["metadata"]["runtime"]["depth"] == 1  # the lineage rides along
        await sock.send({"type": "result", "message_id": message["message_id"], "result": "salut"})
        async with asyncio.timeout(10):
            result: InferenceResult = await running
    assert result.content == "the socket said: salut"
