"""`python -m tests.bench` (`make bench`): start local servers, run the benchmarks, report.

Prints the results as markdown and rewrites their sections of docs/BENCHMARKS.md: `bus`
(MeshClient.ask against raw nats-py), `gateway` (the HTTP and WebSocket gateway as a
process of its own), `llm` (gateway → bus → LLM worker → a local upstream, against that
upstream called directly), `mcp` (a tool call on the bus and through the gateway, against the
`mcp` client calling the same MCP server directly), `tasks` (`mesh.tasks.submit` through an
executor to an agent, against raw JetStream), `runtime` (a saved agent's tool round on
runtime workers, against a plain Python loop calling the same upstream and MCP server) and
`a2a` (a blocking A2A `SendMessage` through the gateway to the echo agent, against the same
a2a-sdk client calling an a2a-sdk echo server directly).
`--profile` instead profiles the SDK path at
concurrency 64.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import uuid
from pathlib import Path

from agentmesh.broker.servers import NatsServer, RedisServer
from agentmesh.broker.settings import Settings
from tests.bench import (
    a2a,
    a2a_report,
    bus,
    gateway,
    gateway_report,
    llm,
    llm_report,
    mcp,
    mcp_report,
    report,
    runtime,
    runtime_report,
    tasks,
    tasks_report,
)

SECTIONS = ("bus", "gateway", "llm", "mcp", "tasks", "runtime", "a2a")


def _prefix() -> str:
    return f"bench{uuid.uuid4().hex[:8]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument(
        "--profile", action="store_true", help="profile the SDK path at concurrency 64"
    )
    parser.add_argument("--only", choices=SECTIONS, help="run one benchmark (default: all)")
    parser.add_argument(
        "--no-write", action="store_true", help=f"print only; leave {report.DOCS.name} alone"
    )
    args = parser.parse_args(argv)
    chosen = [args.only] if args.only else list(SECTIONS)
    bodies: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        nats_server = NatsServer(data_dir=Path(tmp) / "nats")
        redis_server = RedisServer(data_dir=Path(tmp) / "redis")
        try:
            nats_server.start()
            redis_server.start()
            settings = Settings(
                nats_url=nats_server.url, redis_url=redis_server.url, prefix=_prefix()
            )
            if args.profile:
                print(asyncio.run(bus.profile(settings)))
                return 0
            if "bus" in chosen:
                results = asyncio.run(bus.compare(settings))
                bodies["bus"] = bus.section(results)  # needs nats-server for its version
            pids = {"nats-server": nats_server.pid, "redis-server": redis_server.pid}
            server_pids = {k: v for k, v in pids.items() if v is not None}
            # The sections whose mesh runs as processes: each with its own prefix and logs.
            for name, run_all, section in (
                ("gateway", gateway.run_all, gateway_report.section),
                ("llm", llm.run_all, llm_report.section),
                ("mcp", mcp.run_all, mcp_report.section),
                ("tasks", tasks.run_all, tasks_report.section),
                ("runtime", runtime.run_all, runtime_report.section),
                ("a2a", a2a.run_all, a2a_report.section),
            ):
                if name in chosen:
                    logs = Path(tmp) / f"{name}-logs"
                    logs.mkdir()
                    prefixed = settings.with_(prefix=_prefix())
                    ran = asyncio.run(run_all(prefixed, logs=logs, server_pids=server_pids))
                    bodies[name] = section(ran)
        finally:
            redis_server.stop()
            nats_server.stop()
    for name, body in bodies.items():
        print(body)
        if not args.no_write:
            report.write_section(name, body)
            print(f"wrote the {name} section of {report.DOCS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
