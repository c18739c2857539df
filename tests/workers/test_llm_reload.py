"""`LLMWorker.apply`: the models of a running worker change live, without dropping a call."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.schemas.errors import ModelNotFound
from agentmesh.workers.llm.config import LLMConfig
from tests.workers.fake_upstreams import FakeOpenAI
from tests.workers.fixtures import StartWorker

HELLO = [{"role": "user", "content": "hello reload"}]
ECHO = {"provider": "echo", "model": "echo"}


def models(**deployments: dict[str, Any]) -> dict[str, Any]:
    return {"models": [{"name": name, "deployments": [d]} for name, d in deployments.items()]}


def openai(upstream: FakeOpenAI) -> dict[str, Any]:
    return {"provider": "openai", "model": "gpt-x", "base_url": upstream.base_url, "api_key": "k"}


def text(reply: dict[str, Any]) -> str:
    return reply["choices"][0]["message"]["content"]


async def test_a_model_added_by_apply_is_served_at_once(
    start_worker: StartWorker, mesh: MeshClient
) -> None:
    worker = await start_worker(models(a=ECHO))
    with pytest.raises(ModelNotFound):
        await mesh.llm("b.1").chat(HELLO)

    await worker.apply(LLMConfig.parse(models(a=ECHO, **{"b.1": ECHO})))

    assert text(await mesh.llm("b.1").chat(HELLO)) == "hello reload"
    assert text(await mesh.llm("a").chat(HELLO)) == "hello reload"
    assert worker.aliases == ["a", "b.1"]


async def test_a_model_removed_by_apply_answers_model_not_found(
    start_worker: StartWorker, mesh: MeshClient
) -> None:
    worker = await start_worker(models(a=ECHO, b=ECHO))

    await worker.apply(LLMConfig.parse(models(a=ECHO)))

    with pytest.raises(ModelNotFound):
        await mesh.llm("b").chat(HELLO)
    assert text(await mesh.llm("a").chat(HELLO)) == "hello reload"


async def test_a_changed_model_sends_new_calls_to_its_new_deployment(
    start_worker: StartWorker, mesh: MeshClient, upstream: FakeOpenAI
) -> None:
    worker = await start_worker(models(m=ECHO))
    assert text(await mesh.llm("m").chat(HELLO)) == "hello reload"

    await worker.apply(LLMConfig.parse(models(m=openai(upstream))))

    assert text(await mesh.llm("m").chat(HELLO)) == "hello from upstream"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("edit", ["changed", "removed"])
async def test_a_stream_in_flight_completes_when_its_model_is_changed_or_removed(
    start_worker: StartWorker, mesh: MeshClient, edit: str
) -> None:
    slow = await FakeOpenAI(reply="one two three four five six", chunk_delay=0.05).start()
    try:
        worker = await start_worker(models(m=openai(slow)))
        stream = await mesh.llm("m").chat(HELLO, stream=True)
        first = await anext(stream)  # the upstream is generating now
        after = models(m=ECHO) if edit == "changed" else models(other=ECHO)
        await worker.apply(LLMConfig.parse(after))
        chunks = [first, *[chunk async for chunk in stream]]
    finally:
        await slow.stop()

    streamed = "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]
    )
    assert streamed == "one two three four five six"
    if edit == "changed":
        assert text(await mesh.llm("m").chat(HELLO)) == "hello reload"  # the new deployment
    else:
        with pytest.raises(ModelNotFound):
            await mesh.llm("m").chat(HELLO)
