"""The runtime's tests: a scripted model behind a real LLM worker, on this test's mesh."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.agents.runtime import Fences, Runtime
from tests.runtime.scripted_llm import Brain, ScriptedOpenAI, model_model
from tests.workers.fixtures import StartWorker

StartModel = Callable[..., Awaitable[ScriptedOpenAI]]


@pytest.fixture
async def start_model(start_worker: StartWorker) -> AsyncIterator[StartModel]:
    """`await start_model(brain, alias="m")`: a scripted upstream, served as `alias` by an LLM
    worker of this test's mesh."""
    upstreams: list[ScriptedOpenAI] = []

    async def start(brain: Brain, *, alias: str = "m") -> ScriptedOpenAI:
        upstream = await ScriptedOpenAI(brain).start()
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
