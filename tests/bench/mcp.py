"""The MCP benchmark: one tool call (`echo` of tests/mcp/demo_server.py) through the mesh, on
the bus, through the gateway's `/mcp` and through its `POST /v1/tools/call`, side by side with the
official `mcp` client calling the same server directly over stdio, in one run.

Every mesh part is a process of its own, as deployed: the gateway (`agentmesh gateway`), one or
two MCP workers (`agentmesh worker mcp --config mcp.json`), each with its own demo server over
stdio; the direct baseline's demo server is a child of the bench process, started by the `mcp`
client. The section is written by `mcp_report.section`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from mcp.types.version import LATEST_MODERN_VERSION

from agentmesh.agents.client import MeshClient
from agentmesh.broker.settings import Settings
from tests.bench.http1 import Connection, HttpError, post
from tests.bench.llm import ROUNDS, Mesh, rounds
from tests.bench.measure import Call, Result, progress, scaled
from tests.bench.processes import (
    BIN,
    ROOT,
    Child,
    Throughput,
    gateway_ready,
    metered,
    started,
)

SERVER = "demo"
TOOL = "echo"
TEXT = "hello from the bench"  # 20 bytes, as in the other sections
ARGUMENTS = {"text": TEXT}
DEMO = ROOT / "tests" / "mcp" / "demo_server.py"
CALL_PATH = "/v1/tools/call"
CALL_BODY = {"server": SERVER, "tool": TOOL, "arguments": ARGUMENTS}
DIRECT = "mcp client → server (stdio)"
VIA_BUS = "MeshClient.tools.call → worker → server"
VIA_MCP = "mcp client → gateway /mcp → worker → server"
VIA_MCP_RAW = "POST /mcp, minimal client → gateway → worker → server"
VIA_POST = "POST /v1/tools/call → gateway → worker → server"
DIRECT_SERVER = "demo server (direct)"  # its name in the CPU readings
CONCURRENCY = 16  # calls in flight in the throughput runs
THROUGHPUT_REQUESTS = 1000  # per round, path and worker count, before BENCH_SCALE
WORKERS = (1, 2)  # the mesh paths' throughput with one worker, then two
TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class MCPRun:
    latency: list[Result]  # every round of every path, concurrency 1, one worker
    throughput: list[Throughput]  # every round of every path and worker count


def with_workers(path: str, workers: int) -> str:
    return f"{path}, {workers} worker{'s' if workers > 1 else ''}" if workers else path


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a worker's stdio servers)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue  # gone meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # the field after the state
                found.append(int(entry.name))
    return found


class ToolMesh(Mesh):
    """The gateway and the MCP workers of one run (the LLM bench's `Mesh`, with MCP workers)."""

    def __init__(self, settings: Settings, logs: Path, server_pids: dict[str, int]) -> None:
        super().__init__(settings, logs, server_pids)
        self.config = logs / "mcp.json"
        servers = {SERVER: {"command": sys.executable, "args": [str(DEMO)]}}
        self.config.write_text(json.dumps({"mcpServers": servers}))
        self.direct_server: int | None = None  # the direct path's demo server, once known

    def start_worker(self, slots: int | None = None) -> Child:
        n = len(self.workers)
        argv = [str(BIN / "agentmesh"), "worker", "mcp", "--config", str(self.config)]
        child = Child(f"worker {n}", argv, env=self.env, log=self.logs / f"worker-{n}.log")
        self.children.append(child)
        self.workers.append(child)
        return child

    def pids(self) -> dict[str, int]:
        pids = {"bench process (callers)": os.getpid()}
        if self.direct_server is not None:
            pids[DIRECT_SERVER] = self.direct_server
        pids |= super().pids()
        for n, worker in enumerate(self.workers):
            for pid in children_of(worker.pid):
                pids[f"demo server of worker {n}"] = pid
        return pids


async def workers_serving(
    mesh: ToolMesh, client: MeshClient, count: int, *, timeout: float = 30.0
) -> None:
    """Return once `count` workers announce the demo server up (they serve it first)."""

    async def serving() -> bool:
        server = (await client.tools.catalog()).servers.get(SERVER)
        return server is not None and server.state == "up" and server.workers == count

    what = f"{count} workers serving {SERVER}"
    await started(serving, mesh.workers, timeout=timeout, what=what)


def _text(result: object) -> str:
    """The first text block of an MCP `CallToolResult`, which must not be an error."""
    if getattr(result, "is_error", False):
        raise RuntimeError(f"the tool call failed: {result!r}")
    return result.content[0].text  # type: ignore[attr-defined]


@asynccontextmanager
async def mcp_client_path(target: StdioServerParameters | str) -> AsyncIterator[Client]:
    """One session of the official client, over stdio (a child) or Streamable HTTP (a URL)."""
    async with Client(target, read_timeout_seconds=TIMEOUT) as client:
        yield client


def mcp_call(client: Client, tool: str) -> Call:
    async def call() -> str:
        return _text(await client.call_tool(tool, ARGUMENTS))

    return call


def mcp_request(port: int) -> bytes:
    """The JSON-RPC `tools/call` of `demo_echo` the `mcp` client POSTs to `/mcp`, headers and
    `_meta` included (the newest protocol, sessionless), prepared once."""
    meta = {
        "io.modelcontextprotocol/protocolVersion": LATEST_MODERN_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    params = {"name": f"{SERVER}_{TOOL}", "arguments": ARGUMENTS, "_meta": meta}
    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": LATEST_MODERN_VERSION,
        "Mcp-Method": "tools/call",
        "Mcp-Name": params["name"],
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    return post("/mcp", port, body, headers=headers)


@asynccontextmanager
async def http_path(
    port: int, raw: bytes, text: Callable[[dict[str, Any]], str]
) -> AsyncIterator[Call]:
    """A prepared POST from a pool of keep-alive connections of the minimal client, one per
    call in flight; one closed by the server while idle is opened again. `text` finds the
    echoed text in the JSON reply."""
    opened = [await Connection.open(port) for _ in range(CONCURRENCY)]
    idle = list(opened)

    async def call() -> str:
        conn = idle.pop()
        try:
            status, body = await conn.request(raw)
        except HttpError:  # uvicorn closes connections idle for 5 s
            conn = await Connection.open(port)
            opened.append(conn)
            status, body = await conn.request(raw)
        idle.append(conn)
        if status != 200:
            raise RuntimeError(f"the gateway answered {status}: {body[:200]!r}")
        return text(json.loads(body))

    try:
        yield call
    finally:
        for conn in opened:
            conn.close()


async def paths(
    stack: AsyncExitStack, mesh: ToolMesh, client: MeshClient
) -> list[tuple[str, Call]]:
    """The five paths, each checked to echo the text before anything is timed."""
    assert mesh.gateway is not None
    params = StdioServerParameters(command=sys.executable, args=[str(DEMO)])
    direct = await stack.enter_async_context(mcp_client_path(params))
    mesh.direct_server = (await direct.call_tool("pid")).structured_content["result"]
    via_mcp = await stack.enter_async_context(mcp_client_path(f"{mesh.gateway.url}/mcp"))

    async def via_bus() -> str:
        result = await client.tools.call(SERVER, TOOL, ARGUMENTS, timeout=TIMEOUT)
        if result.is_error:
            raise RuntimeError(f"the tool call failed: {result.raw!r}")
        return result.text

    chosen = [
        (DIRECT, mcp_call(direct, TOOL)),
        (VIA_BUS, via_bus),
        (VIA_MCP, mcp_call(via_mcp, f"{SERVER}_{TOOL}")),
    ]
    port = mesh.gateway.port
    for name, raw, text in (
        (VIA_MCP_RAW, mcp_request(port), lambda reply: reply["result"]["content"][0]["text"]),
        (VIA_POST, post(CALL_PATH, port, CALL_BODY), lambda reply: reply["content"][0]["text"]),
    ):
        chosen.append((name, await stack.enter_async_context(http_path(port, raw, text))))
    for name, call in chosen:
        if (echoed := await call()) != TEXT:
            raise RuntimeError(f"{name} answered {echoed!r}, not {TEXT!r}")
    return chosen


async def throughput(mesh: ToolMesh, path: str, call: Call, workers: int) -> Throughput:
    """Warm up, then CONCURRENCY callers in this process, CPU metered over the run (the
    result's path names the worker count)."""
    name, requests = with_workers(path, workers), scaled(THROUGHPUT_REQUESTS)
    return await metered(
        name, call, mesh.pids(), requests=requests, concurrency=CONCURRENCY, warm=CONCURRENCY * 8
    )


async def run_all(settings: Settings, *, logs: Path, server_pids: dict[str, int]) -> MCPRun:
    """Start the gateway and the workers as processes, measure every path, stop them."""
    settings = settings.with_(request_timeout=TIMEOUT)
    mesh = ToolMesh(settings, logs, server_pids)
    loads: list[Throughput] = []
    try:
        mesh.gateway = mesh.start_gateway("gateway")
        mesh.start_worker()
        await gateway_ready(mesh.gateway)
        async with MeshClient.connect(settings) as client, AsyncExitStack() as stack:
            await workers_serving(mesh, client, 1)
            progress(f"gateway pid {mesh.gateway.child.pid}, worker pid {mesh.workers[0].pid}")
            chosen = await paths(stack, mesh, client)
            latency = await rounds(chosen)
            for count in WORKERS:
                while len(mesh.workers) < count:
                    mesh.start_worker()
                await workers_serving(mesh, client, count)
                for _ in range(ROUNDS):  # interleaved, like the latency rounds
                    for name, call in chosen:
                        if name != DIRECT or count == WORKERS[0]:
                            workers = count * (name != DIRECT)
                            loads.append(await throughput(mesh, name, call, workers))
    finally:
        mesh.stop()
    return MCPRun(latency, loads)
