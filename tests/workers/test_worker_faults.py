"""LLM workers failing for real: a worker process killed mid-stream, and workers sharing load.

The killed worker is an `agentmesh worker llm` process, so SIGKILL takes its NATS connection and
its keep-alives with it, as a crash would.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import openai
import pytest
import yaml

from agentmesh.agents.client import MeshClient
from agentmesh.schemas.errors import Unavailable
from tests.gateway.conftest import StartGateway, start_gateway  # noqa: F401 - a fixture
from tests.workers.fake_upstreams import FakeOpenAI
from tests.workers.fixtures import StartWorker
from tests.workers.test_llm_worker import openai_model

ROOT = Path(__file__).resolve().parents[2]
HELLO = [{"role": "user", "content": "hello mesh"}]
START_TIMEOUT = 30.0
# The caller gives up on a silent responder after three missed keep-alives (0.2 s each here);
# the rest is slack. Far below the call's own timeout, so a pass is not a timeout in disguise.
DETECT_TIMEOUT = 5.0
CALL_TIMEOUT = 60.0

SpawnWorker = Callable[[dict], Awaitable[asyncio.subprocess.Process]]


@pytest.fixture
async def spawn_worker(env_for: dict[str, str], tmp_path: Path) -> AsyncIterator[SpawnWorker]:
    """`await spawn_worker(config)`: an `agentmesh worker llm` process serving `config`, once
    it says it is serving."""
    procs: list[asyncio.subprocess.Process] = []

    async def spawn(config: dict) -> asyncio.subprocess.Process:
        path = tmp_path / f"models-{len(procs)}.yaml"
        path.write_text(yaml.safe_dump(config))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agentmesh",
            "worker",
            "llm",
            "--config",
            str(path),
            env=env_for,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        procs.append(proc)
        assert proc.stderr is not None
        seen: list[bytes] = []
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while b"serving" not in (line := await proc.stderr.readline()):
                    seen.append(line)
                    if not line:
                        pytest.fail(f"the worker exited before serving: {b''.join(seen)!r}")
        except TimeoutError:
            pytest.fail(f"the worker did not start in {START_TIMEOUT}s: {b''.join(seen)!r}")
        return proc

    yield spawn
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


@pytest.fixture
async def slow_upstream() -> AsyncIterator[FakeOpenAI]:
    """Streams "hello from upstream" in five chunks, half a second apart."""
    fake = await FakeOpenAI(chunk_delay=0.5).start()
    yield fake
    await fake.stop()


async def test_a_worker_killed_mid_stream_gives_the_caller_a_clear_error_not_a_hang(
    mesh: MeshClient, spawn_worker: SpawnWorker, slow_upstream: FakeOpenAI
) -> None:
    worker = await spawn_worker({"models": [openai_model("slow.model", slow_upstream)]})
    chunks = await mesh.llm("slow.model").chat(HELLO, stream=True, timeout=CALL_TIMEOUT)
    async with asyncio.timeout(DETECT_TIMEOUT):
        first = await anext(chunks)
        assert first["choices"][0]["delta"]["role"] == "assistant"
        worker.send_signal(signal.SIGKILL)
        with pytest.raises(Unavailable) as err:
            async for _ in chunks:
                pass
    assert "stopped responding" in err.value.message
    await worker.wait()


async def test_a_worker_killed_mid_stream_ends_the_sdk_stream_through_the_gateway_with_an_error(
    start_gateway: StartGateway,  # noqa: F811 - the fixture imported above
    spawn_worker: SpawnWorker,
    slow_upstream: FakeOpenAI,
) -> None:
    worker = await spawn_worker({"models": [openai_model("slow.model", slow_upstream)]})
    gateway = await start_gateway()
    async with openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=CALL_TIMEOUT
    ) as sdk:
        stream = await sdk.chat.completions.create(model="slow.model", messages=HELLO, stream=True)
        async with asyncio.timeout(DETECT_TIMEOUT):
            first = await anext(aiter(stream))
            assert first.choices[0].delta.role == "assistant"
            worker.send_signal(signal.SIGKILL)
            with pytest.raises(openai.APIError) as err:
                async for _ in stream:
                    pass
    assert "stopped responding" in err.value.message
    await worker.wait()


async def test_two_workers_serving_one_alias_share_the_calls(
    mesh: MeshClient, start_worker: StartWorker
) -> None:
    first, second = (
        await FakeOpenAI(reply="first").start(),
        await FakeOpenAI(reply="second").start(),
    )
    try:
        # Each worker has its own upstream, so the upstreams count each worker's calls.
        await start_worker({"models": [openai_model("shared", first)]})
        await start_worker({"models": [openai_model("shared", second)]})
        replies = await asyncio.gather(*(mesh.llm("shared").chat(HELLO) for _ in range(40)))
    finally:
        await first.stop()
        await second.stop()
    texts = [r["choices"][0]["message"]["content"] for r in replies]
    assert texts.count("first") == len(first.requests) > 0
    assert texts.count("second") == len(second.requests) > 0
    assert len(first.requests) + len(second.requests) == 40
