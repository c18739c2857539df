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
from typing import Any

from broker.servers import LocalServer, NatsServer, RedisServer
from broker.settings import Settings
from workers.llm.config import LLMConfig
from workers.llm.defaults import config_from_env, describe
from workers.llm.worker import LLMWorker

logger = logging.getLogger(__name__)


@dataclass
class LocalMesh:
    nats_port: int = 4222
    redis_port: int = 6379
    data_dir: Path = Path(".agentmesh")
    prefix: str = "mesh"
    host: str = "127.0.0.1"
    gateway_port: int | None = 8001  # None: no gateway

    async def run(
        self, *, ready: asyncio.Event | None = None, echo: bool = True, llm: bool = True
    ) -> None:
        servers: list[LocalServer] = []
        agents = []
        gateway = gateway_task = None
        worker: LLMWorker | None = None
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
            if self.gateway_port is not None:
                gateway, gateway_task = await self._start_gateway(settings)
            if llm:
                # Probing for a local Ollama blocks for up to half a second: off the loop.
                worker = LLMWorker(await asyncio.to_thread(config_from_env))
                await worker.start(settings)
            models = worker.config if worker is not None else None
            print(self.banner(settings, servers, [a.agent_id for a in agents], models), flush=True)
            if ready is not None:
                ready.set()
            await stop.wait()
            print("\nstopping the local mesh ...", flush=True)
        finally:
            if worker is not None:
                with contextlib.suppress(Exception):
                    await worker.stop()
            if gateway is not None and gateway_task is not None:
                gateway.should_exit = True
                with contextlib.suppress(Exception):
                    await gateway_task
            for agent in reversed(agents):
                with contextlib.suppress(Exception):
                    await agent.stop()
            for server in reversed(servers):
                await asyncio.to_thread(server.stop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _start_gateway(self, settings: Settings) -> tuple[Any, asyncio.Task[None]]:
        from broker.servers import ServerError, port_in_use
        from gateway.server import make_server

        assert self.gateway_port is not None
        if port_in_use(self.gateway_port, self.host):
            raise ServerError(
                f"port {self.gateway_port} is already in use: is another mesh running? "
                "Stop it or choose another port with --gateway-port."
            )
        server = make_server(settings, host=self.host, port=self.gateway_port, log_level="warning")
        try:
            task = await server.start()
        except RuntimeError as exc:
            raise ServerError(str(exc)) from None
        return server, task

    def banner(
        self,
        settings: Settings,
        servers: list[LocalServer],
        agents: list[str],
        models: LLMConfig | None = None,
    ) -> str:
        gateway = (
            f"  Gateway http://{self.host}:{self.gateway_port}  (API docs: "
            f"http://{self.host}:{self.gateway_port}/docs)"
            if self.gateway_port is not None
            else "  Gateway -"
        )
        lines = [
            "AgentMesh local mesh is running",
            f"  NATS   {settings.nats_url}  (JetStream on, pid {servers[0].pid})",
            f"  Redis  {settings.redis_url}  (pid {servers[1].pid})",
            gateway,
            f"  prefix {settings.prefix}   data {self.data_dir}",
            f"  agents {', '.join(agents) or '-'}",
            *self._models_lines(models),
            "",
            "In another terminal:",
            "  agentmesh agents                     # who is online",
            '  agentmesh send echo "hello"          # ask the echo agent',
            '  agentmesh send echo "hi" --stream    # stream the reply',
            "  agentmesh agent run mymodule:agent   # attach your own agent",
            *(
                [
                    f"  curl http://{self.host}:{self.gateway_port}/gateway/agents",
                ]
                if self.gateway_port is not None
                else []
            ),
            *self._curl_lines(models),
            "",
            "Ctrl-C stops everything started here.",
        ]
        return "\n".join(lines)

    def _models_lines(self, models: LLMConfig | None) -> list[str]:
        if models is None:
            return ["  models -"]
        first, *rest = describe(models)
        return [f"  models {first}", *(f"         {line}" for line in rest)]

    def _curl_lines(self, models: LLMConfig | None) -> list[str]:
        if models is None or models.model("echo") is None or self.gateway_port is None:
            return []
        return [
            "  # the echo model through the OpenAI-compatible API (any OpenAI SDK works too):",
            f"  curl http://{self.host}:{self.gateway_port}/v1/chat/completions \\",
            "    -H 'content-type: application/json' \\",
            '    -d \'{"model": "echo", "messages": [{"role": "user", "content": "hi"}]}\'',
        ]
