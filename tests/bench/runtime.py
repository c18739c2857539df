"""The runtime benchmark: one tool round (model call → MCP tool call → model call) by a saved
agent on runtime workers, side by side with a plain Python loop making the same two model calls
to the same upstream (streamed, as the runtime does) and the same tool call to the same MCP
server directly, in one run.

Every mesh part is a process of its own: the upstream (`python -m tests.bench.tool_upstream`),
an LLM worker, an MCP worker with the demo server, one or two runtime workers. The callers
are in the bench process. The section is written by `runtime_report.section`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from mcp import Client, StdioServerParameters

from agentmesh.agents.client import MeshClient
from agentmesh.broker.definitions import Definitions
from agentmesh.broker.durable import DurableState
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.schemas.runtime import AgentDefinition, AgentLimits
from tests.bench.measure import Call, Result, measure, progress, run, scaled
from tests.bench.processes import BIN, ROOT, Child, CpuMeter, settings_env, started
from tests.bench.tool_upstream import TEXT

ALIAS = "bench-tools"
AGENT = "bench-agent"
TOOL_ID = "demo_echo"  # the demo server's `echo`, by its mesh name
DEMO = ROOT / "tests" / "mcp" / "demo_server.py"
UPSTREAM_LATENCY = 0.020  # seconds per model call, fixed
ANSWER = f"done: {TEXT}"
PLAIN = "plain loop: httpx → upstream, mcp client → server (stdio)"
MESH = "saved agent: MeshClient.ask → runtime worker → LLM and MCP workers"
TOOL_ROUNDS = (1, 3)  # tool rounds per inference in the latency runs (N + 1 model calls)
LATENCY_REQUESTS = 200  # per round and path, before BENCH_SCALE; each takes >= 40 ms
WARMUP = 20
ROUNDS = 2
SLOTS = 2  # inferences at once per runtime worker in the scaling runs (the agent's limit)
CONCURRENCY = 16
THROUGHPUT_REQUESTS = 300
WORKERS = (1, 2)
TARGET_ADDED_MS = 3.0
TARGET_SCALING = 1.8
TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Throughput:
    workers: int
    result: Result
    cpu: dict[str, float]


@dataclass(frozen=True, slots=True)
class RuntimeRun:
    latency: list[Result]  # every round of both paths, concurrency 1
    throughput: list[Throughput]


class RuntimeMesh:
    def __init__(self, settings: Settings, logs: Path, server_pids: Mapping[str, int]) -> None:
        self.env = settings_env(settings)
        self.logs = logs
        self.server_pids = dict(server_pids)
        self.upstream_port = free_port()
        self.children: list[Child] = []
        self.runtimes: list[Child] = []

    def _start(self, name: str, argv: list[str], env: Mapping[str, str]) -> Child:
        child = Child(name, argv, env=env, log=self.logs / f"{name.replace(' ', '-')}.log")
        self.children.append(child)
        return child

    def start(self) -> None:
        argv = [sys.executable, "-m", "tests.bench.tool_upstream", "--port"]
        argv += [str(self.upstream_port), "--latency", str(UPSTREAM_LATENCY)]
        self._start("upstream", argv, os.environ)
        models = self.logs / "models.yaml"
        base = f"http://127.0.0.1:{self.upstream_port}/v1"
        deployment = {"provider": "openai", "base_url": base, "model": "b", "api_key": "sk"}
        models.write_text(json.dumps({"models": [{"name": ALIAS, "deployments": [deployment]}]}))
        agentmesh = str(BIN / "agentmesh")
        self._start("llm worker", [agentmesh, "worker", "llm", "--config", str(models)], self.env)
        servers = self.logs / "mcp.json"
        demo = {"command": sys.executable, "args": [str(DEMO)]}
        servers.write_text(json.dumps({"mcpServers": {"demo": demo}}))
        self._start("mcp worker", [agentmesh, "worker", "mcp", "--config", str(servers)], self.env)

    def start_runtime(self) -> Child:
        n = len(self.runtimes)
        argv = [str(BIN / "agentmesh"), "worker", "runtime"]
        child = self._start(f"runtime worker {n}", argv, self.env)
        self.runtimes.append(child)
        return child

    def pids(self) -> dict[str, int]:
        return (
            {"bench process (callers)": os.getpid()}
            | {c.name: c.pid for c in self.children}
            | self.server_pids
        )

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


async def _ready(mesh: RuntimeMesh, client: MeshClient, runtimes: int) -> None:
    """The model and the tool are served, and `runtimes` instances serve the agent."""

    async def ready() -> bool:
        presence = await client.agent(AGENT)
        tools = {t.federated_name for t in await client.tools.list()}
        models = await (await client.registry()).names("models")
        instances = len(presence.instances) if presence else 0
        return TOOL_ID in tools and ALIAS in models and instances == runtimes

    await started(ready, mesh.children, timeout=60, what="the runtime mesh up")


async def _stream_chat(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat completion, assembled: content and tool calls."""
    content, calls = "", {}
    async with http.stream("POST", url, json={**body, "stream": True}) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:]).get("choices") or []:
                delta = choice.get("delta") or {}
                content += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    calls.setdefault(call.get("index", 0), call)
    return {"content": content, "tool_calls": list(calls.values())}


def plain_loop(
    http: httpx.AsyncClient, url: str, mcp: Client, tool: dict[str, Any]
) -> Callable[[int], Call]:
    """What a user would write without the mesh: the same two model calls and the tool call."""
    schema = {
        "type": "function",
        "function": {
            "name": TOOL_ID,
            "description": tool.get("description") or "",
            "parameters": tool.get("inputSchema") or {"type": "object"},
        },
    }

    def call(rounds: int) -> Call:
        async def infer() -> str:
            messages: list[dict[str, Any]] = [{"role": "user", "content": f"go rounds={rounds}"}]
            while True:
                body = {"model": "b", "messages": messages, "tools": [schema]}
                turn = await _stream_chat(http, url, body)
                if not turn["tool_calls"]:
                    return turn["content"]
                tool_call = turn["tool_calls"][0]
                arguments = json.loads(tool_call["function"]["arguments"])
                result = await mcp.call_tool("echo", arguments)
                messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})
                text = result.content[0].text  # type: ignore[union-attr]
                messages.append({"role": "tool", "tool_call_id": tool_call["id"], "content": text})

        return infer

    return call


def mesh_call(client: MeshClient, rounds: int = 1) -> Call:
    async def call() -> str:
        return (await client.ask(AGENT, f"go rounds={rounds}", timeout=TIMEOUT)).text

    return call


def named(path: str, rounds: int) -> str:
    return f"{path}, {rounds} tool round{'s' if rounds > 1 else ''}"


async def _check(name: str, call: Call) -> None:
    if (answer := await call()) != ANSWER:
        raise RuntimeError(f"{name} answered {answer!r}, not {ANSWER!r}")


async def _throughput(mesh: RuntimeMesh, call: Call, workers: int) -> Throughput:
    await run(call, requests=CONCURRENCY * 2, concurrency=CONCURRENCY)
    meter = CpuMeter(mesh.pids())
    name = f"{MESH}, {workers} worker{'s' if workers > 1 else ''}"
    result = await measure(
        name, call, requests=scaled(THROUGHPUT_REQUESTS), concurrency=CONCURRENCY
    )
    cpu = meter.percent()
    busy = ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items() if v >= 5)
    progress(f"c={CONCURRENCY} {name}: {result.rps:,.1f}/s, p50 {result.p50_ms:.1f} ms; {busy}")
    return Throughput(workers, result, cpu)


async def run_all(settings: Settings, *, logs: Path, server_pids: dict[str, int]) -> RuntimeRun:
    settings = settings.with_(request_timeout=TIMEOUT)
    mesh = RuntimeMesh(settings, logs, server_pids)
    latency: list[Result] = []
    loads: list[Throughput] = []
    try:
        mesh.start()
        mesh.start_runtime()
        async with MeshClient.connect(settings) as client:
            definitions = Definitions(DurableState(client.bus.nc), client.bus.subjects)
            limits = AgentLimits(max_concurrency=SLOTS)
            await definitions.put_agent(
                AgentDefinition(agent_id=AGENT, model_id=ALIAS, tool_ids=[TOOL_ID], limits=limits)
            )
            await _ready(mesh, client, 1)
            tool = next(t.tool for t in await client.tools.list() if t.federated_name == TOOL_ID)
            params = StdioServerParameters(command=sys.executable, args=[str(DEMO)])
            url = f"http://127.0.0.1:{mesh.upstream_port}/v1/chat/completions"
            async with httpx.AsyncClient(timeout=TIMEOUT) as http, Client(params) as direct:
                plain = plain_loop(http, url, direct, tool)
                paths = [
                    (named(path, n), call)
                    for n in TOOL_ROUNDS
                    for path, call in ((PLAIN, plain(n)), (MESH, mesh_call(client, n)))
                ]
                for name, call in paths:
                    await _check(name, call)
                    await run(call, requests=scaled(WARMUP, minimum=5), concurrency=1)
                for n in range(ROUNDS):
                    for name, call in paths:
                        result = await measure(
                            name, call, requests=scaled(LATENCY_REQUESTS), concurrency=1
                        )
                        latency.append(result)
                        progress(
                            f"round {n + 1} {name}: p50 {result.p50_ms:.2f} ms, "
                            f"p99 {result.p99_ms:.2f} ms"
                        )
                for workers in WORKERS:
                    while len(mesh.runtimes) < workers:
                        mesh.start_runtime()
                    await _ready(mesh, client, workers)
                    for _ in range(ROUNDS):
                        loads.append(await _throughput(mesh, mesh_call(client), workers))
    finally:
        mesh.stop()
    return RuntimeRun(latency, loads)
