"""`agentmesh up`: a real local mesh (nats-server with JetStream, redis-server, demo agents).

Everything started here is stopped here, in reverse order, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

from broker.servers import LocalServer, NatsServer, RedisServer
from broker.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class LocalMesh:
    nats_port: int = 4222
    redis_port: int = 6379
    data_dir: Path = Path(".agentmesh")
    prefix: str = "mesh"
    host: str = "127.0.0.1"

    async def run(self, *, ready: asyncio.Event | None = None, echo: bool = True) -> None:
        servers: list[LocalServer] = []
        agents = []
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            nats = NatsServer(port=self.nats_port, data_dir=self.data_dir / "nats", host=self.host)
            servers.append(await asyncio.to_thread(nats.start))
            redis = RedisServer(
                port=self.redis_port, data_dir=self.data_dir / "redis", host=self.host
            )
            servers.append(await asyncio.to_thread(redis.start))
            settings = Settings.from_env(nats_url=nats.url, redis_url=redis.url, prefix=self.prefix)
            if echo:
                from agents.examples.echo import agent as echo_agent

                await echo_agent.start(settings)
                agents.append(echo_agent)
            print(self.banner(settings, servers, [a.agent_id for a in agents]), flush=True)
            if ready is not None:
                ready.set()
            await stop.wait()
            print("\nstopping the local mesh ...", flush=True)
        finally:
            for agent in reversed(agents):
                with contextlib.suppress(Exception):
                    await agent.stop()
            for server in reversed(servers):
                await asyncio.to_thread(server.stop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    def banner(self, settings: Settings, servers: list[LocalServer], agents: list[str]) -> str:
        lines = [
            "AgentMesh local mesh is running",
            f"  NATS   {settings.nats_url}  (JetStream on, pid {servers[0].pid})",
            f"  Redis  {settings.redis_url}  (pid {servers[1].pid})",
            f"  prefix {settings.prefix}   data {self.data_dir}",
            f"  agents {', '.join(agents) or '-'}",
            "",
            "In another terminal:",
            "  agentmesh agents                     # who is online",
            '  agentmesh send echo "hello"          # ask the echo agent',
            '  agentmesh send echo "hi" --stream    # stream the reply',
            "  agentmesh agent run mymodule:agent   # attach your own agent",
            "",
            "Ctrl-C stops everything started here.",
        ]
        return "\n".join(lines)
