"""The runtime's tests: a scripted model behind a real LLM worker, and runtime workers, on this
test's mesh (the gateway's runtime tests use them too)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime import Fences, Runtime
from agentmesh.agents.runtime.worker import RuntimeWorker
from agentmesh.broker.settings import Settings
from tests.runtime.scripted_llm import Brain, ScriptedOpenAI, ScriptedServer, model_model
from tests.runtime.scripted_providers import ScriptedAnthropic, ScriptedOllama
from tests.workers.fixtures import StartWorker

StartModel = Callable[..., Awaitable[ScriptedServer]]
SCRIPTED: dict[str, type[ScriptedServer]] = {
    "openai": ScriptedOpenAI,
    "anthropic": ScriptedAnthropic,
    "ollama": ScriptedOllama,
}


@pytest.fixture
async def start_model(start_worker: StartWorker) -> AsyncIterator[StartModel]:
    """`await start_model(brain, alias="m", provider="openai")`: a scripted upstream speaking
    `provider`'s API (openai, anthropic or ollama), served as `alias` by an LLM worker of this
    test's mesh through that provider's translation."""
    upstreams: list[ScriptedServer] = []

    async def start(brain: Brain, *, alias: str = "m", provider: str = "openai") -> ScriptedServer:
        upstream = await SCRIPTED[provider](brain).start()
        upstreams.append(upstream)
        await start_worker({"models": [model_model(alias, upstream)]})
        return upstream

    yield start
    for upstream in upstreams:
        await upstream.stop()


@pytest.fixture
def fences(tmp_path: Path) -> Fences:
    return Fences(workdir_root=tmp_path / "work")


MakeRuntime = Callable[..., Runtime]


@pytest.fixture
async def make_runtime(mesh: MeshClient, fences: Fences) -> AsyncIterator[MakeRuntime]:
    """`make_runtime(tool_registry=..., ...)`: a Runtime on this test's mesh."""
    made: list[Runtime] = []

    def make(**kw: Any) -> Runtime:
        kw.setdefault("fences", fences)
        runtime = Runtime(mesh=mesh, **kw)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        await runtime.aclose()


StartRuntime = Callable[..., Awaitable[RuntimeWorker]]


@pytest.fixture
async def start_runtime(settings: Settings, tmp_path: Path) -> AsyncIterator[StartRuntime]:
    """`await start_runtime(**kw)`: a RuntimeWorker on this test's mesh; stopped afterwards."""
    running: list[RuntimeWorker] = []

    async def start(**kw: Any) -> RuntimeWorker:
        kw.setdefault("fences", Fences(workdir_root=tmp_path / "work"))
        kw.setdefault("cache_dir", tmp_path / f"skills-{len(running)}")
        worker = RuntimeWorker(**kw)
        await worker.start(settings)
        running.append(worker)
        return worker

    yield start
    for worker in reversed(running):
        await worker.stop()
