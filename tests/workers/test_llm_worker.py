"""LLM workers on the bus: aliases with dots, providers, streaming, failover, shared cooldown."""

from __future__ import annotations

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.schemas.errors import InvalidMessage, ModelNotFound, RateLimited, Unavailable
from tests.workers.fake_upstreams import FakeOpenAI
from tests.workers.fixtures import StartWorker

HELLO = [{"role": "user", "content": "hello mesh"}]


def openai_model(name: str, *upstreams: FakeOpenAI) -> dict:
    return {
        "name": name,
        "deployments": [
            {
                "provider": "openai",
                "base_url": u.base_url,
                "model": f"up-{i}",
                "api_key": "sk-test",
                "priority": i,
            }
            for i, u in enumerate(upstreams)
        ],
    }


async def test_the_echo_model_answers_with_no_key_and_streams(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    await start_worker(
        {"models": [{"name": "echo", "deployments": [{"provider": "echo", "model": "echo"}]}]}
    )
    reply = await mesh.llm("echo").chat(HELLO)
    assert reply["choices"][0]["message"]["content"] == "hello mesh"
    assert reply["usage"]["completion_tokens"] == 2
    chunks = [c async for c in await mesh.llm("echo").chat(HELLO, stream=True)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "hello mesh"
    assert chunks[-1]["usage"]["total_tokens"] > 0


async def test_an_alias_with_dots_reaches_an_openai_compatible_upstream(
    mesh: MeshClient, start_worker: StartWorker, upstream: FakeOpenAI
) -> None:
    await start_worker({"models": [openai_model("gpt-4.1-mini", upstream)]})
    reply = await mesh.llm("gpt-4.1-mini").chat(HELLO, temperature=0.2, user="u-1")
    assert reply["choices"][0]["message"]["content"] == "hello from upstream"
    sent = upstream.requests[0]
    assert sent["body"]["model"] == "up-0"  # the deployment's model, not the alias
    assert sent["body"]["temperature"] == 0.2 and sent["body"]["user"] == "u-1"  # passed through
    assert sent["headers"]["authorization"] == "Bearer sk-test"
    assert reply["agentmesh"]["deployment"] == "openai:up-0"


async def test_streaming_through_an_openai_compatible_upstream_ends_with_usage(
    mesh: MeshClient, start_worker: StartWorker, upstream: FakeOpenAI
) -> None:
    await start_worker({"models": [openai_model("m", upstream)]})
    chunks = [c async for c in await mesh.llm("m").chat(HELLO, stream=True)]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "hello from upstream"
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


async def test_streamed_calls_reuse_the_upstream_connection(
    mesh: MeshClient, start_worker: StartWorker, upstream: FakeOpenAI
) -> None:
    await start_worker({"models": [openai_model("m", upstream)]})
    for _ in range(3):
        assert [c async for c in await mesh.llm("m").chat(HELLO, stream=True)]
    # One keep-alive connection: each stream was read to its end, not closed after [DONE].
    assert len(set(upstream.peers)) == 1, upstream.peers


async def test_failover_follows_priority_and_the_cooldown_is_shared_by_all_workers(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    primary, backup = (
        await FakeOpenAI(reply="primary").start(),
        await FakeOpenAI(reply="backup").start(),
    )
    try:
        config = {"models": [openai_model("m", primary, backup)]}
        await start_worker(config)
        await start_worker(config)  # a second worker, sharing the queue group
        primary.fail(503, retry_after=30)
        reply = await mesh.llm("m").chat(HELLO)
        assert reply["choices"][0]["message"]["content"] == "backup"
        attempts = reply["agentmesh"]["attempts"]
        assert attempts[0]["deployment"] == "openai:up-0" and attempts[0]["status"] == 503
        # Every later call, on either worker, skips the cooling primary without calling it.
        for _ in range(6):
            again = await mesh.llm("m").chat(HELLO)
            assert again["choices"][0]["message"]["content"] == "backup"
            assert again["agentmesh"]["attempts"][0]["skipped"] == "cooling down"
        assert len(primary.requests) == 1
    finally:
        await primary.stop()
        await backup.stop()


async def test_when_every_deployment_fails_the_caller_gets_a_clear_error(
    mesh: MeshClient, start_worker: StartWorker, upstream: FakeOpenAI
) -> None:
    await start_worker({"models": [openai_model("flaky", upstream)]})
    upstream.fail(500)
    with pytest.raises(Unavailable) as err:
        await mesh.llm("flaky").chat(HELLO)
    assert err.value.details["attempts"][0]["status"] == 500
    with pytest.raises(RateLimited):  # the one deployment is now cooling down
        await mesh.llm("flaky").chat(HELLO)


async def test_a_rejected_request_is_not_retried_and_reads_as_invalid(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    first, second = await FakeOpenAI().start(), await FakeOpenAI().start()
    try:
        await start_worker({"models": [openai_model("m", first, second)]})
        first.fail(400)
        with pytest.raises(InvalidMessage):
            await mesh.llm("m").chat(HELLO)
        assert second.requests == []
    finally:
        await first.stop()
        await second.stop()


async def test_bad_requests_and_unknown_models_get_errors_and_the_worker_keeps_serving(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    await start_worker(
        {"models": [{"name": "echo", "deployments": [{"provider": "echo", "model": "echo"}]}]}
    )
    with pytest.raises(ModelNotFound):
        await mesh.llm("no-such-model").chat(HELLO)
    subject = mesh.bus.subjects.llm("echo")
    for garbage in (b"\xc1", b"\x90", b"\x81\xa8messages\x90"):  # bad msgpack, a list, no messages
        with pytest.raises(InvalidMessage):
            await mesh.bus.request(subject, garbage)
    assert (await mesh.llm("echo").chat(HELLO))["choices"][0]["message"]["content"] == "hello mesh"
