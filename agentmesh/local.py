"""`agentmesh up`: a real local mesh (nats-server with JetStream, redis-server, the gateway, the
echo agent, an executor for durable tasks, a runtime worker for saved agents, an LLM worker and
an MCP worker with the reference time server; with `-f mesh.yaml`, an A2A bridge if the file has
an `a2a:` section, none without one).

Everything started here is stopped here, in reverse order, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
import shlex
import signal
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agentmesh.agents.agent import Agent
from agentmesh.agents.runtime.worker import RuntimeWorker
from agentmesh.broker.servers import LocalServer, NatsServer, RedisServer
from agentmesh.broker.settings import Settings
from agentmesh.broker.watch import Follower
from agentmesh.following import (
    MeshFollower,
    Opened,
    a2a_part,
    channels_part,
    gateway_part,
    llm_part,
    mcp_part,
    runtime_part,
)
from agentmesh.gateway.state import GatewayConfig
from agentmesh.workers.a2a import A2ABridge
from agentmesh.workers.config import ConfigError
from agentmesh.workers.executor import Executor
from agentmesh.workers.llm.config import LLMConfig
from agentmesh.workers.llm.defaults import config_from_env, describe
from agentmesh.workers.llm.worker import LLMWorker
from agentmesh.workers.mcp.config import MCPConfig
from agentmesh.workers.mcp.worker import MCPWorker

logger = logging.getLogger(__name__)

# The MCP servers `up` serves: what deploy/mcp.json holds (deploy/ is not part of the package).
# Pinned to UTC so the result does not depend on the machine's time zone setting.
MCP_SERVERS: dict[str, Any] = {
    "mcpServers": {
        "time": {
            "command": "python",  # this interpreter: mcp-server-time comes with the servers extra
            "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
        }
    }
}
MCP_START_TIMEOUT = 30.0
FILE_MCP_WAIT = 15.0  # `up -f`: how long the banner waits for the file's MCP servers


def load_agent(target: str) -> Agent:
    """The `Agent` at `module:attr` (the current directory is importable).

    Raises:
        ConfigError: not module:attr, not importable, or not an Agent.
    """
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected MODULE:ATTR, got {target!r}")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load {target}: {exc}") from None
    if not isinstance(obj, Agent):
        raise ConfigError(f"{target} is a {type(obj).__name__}, not an agentmesh Agent")
    return obj


@dataclass
class LocalMesh:
    nats_port: int = 4222
    redis_port: int = 6379
    data_dir: Path = Path(".agentmesh")
    prefix: str = "mesh"
    host: str = "127.0.0.1"
    gateway_port: int | None = 8001  # None: no gateway
    # A mesh file (`up -f`): its sections say what runs, and its edits apply live.
    file: Opened | None = None

    async def run(
        self,
        *,
        ready: asyncio.Event | None = None,
        echo: bool = True,
        llm: bool = True,
        mcp: bool = True,
    ) -> None:
        servers: list[LocalServer] = []
        agents = []
        gateway = gateway_task = None
        worker: LLMWorker | None = None
        tools: MCPWorker | None = None
        executor: Executor | None = None
        runtime: RuntimeWorker | None = None
        bridge: A2ABridge | None = None  # outside A2A agents: only for a file's `a2a:` section
        follower: Follower | None = None
        doc = self.file.doc if self.file is not None else None
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
            executor = Executor()  # durable tasks: before anything that submits them
            await executor.start(settings)
            section = doc.runtime() if doc is not None else None
            runtime = RuntimeWorker(
                section=section, cache_dir=self.data_dir / "runtime" / "skills"
            )  # saved agents (`POST /v1/agents`) are mesh agents
            await runtime.start(settings)
            for agent in self._agents(echo):
                await agent.start(settings)
                agents.append(agent)
            if doc is not None and (outside := doc.a2a()) is not None:
                bridge = A2ABridge(outside)
                await bridge.start(settings)
            if self.gateway_port is not None:
                gateway, gateway_task = await self._start_gateway(settings)
            if llm and (models := await self._models()) is not None:
                worker = LLMWorker(models)
                await worker.start(settings)
            if mcp and (mcp_config := self._mcp_config()) is not None:
                tools = MCPWorker(mcp_config)
                await tools.start(settings)
                if doc is not None:
                    await self._mcp_settled(tools, FILE_MCP_WAIT)  # kept: it retries, reloads
                elif not await self._mcp_started(tools):
                    await tools.stop()
                    tools = None
            models = worker.config if worker is not None else None
            agent_ids = [a.agent_id for a in agents]
            if bridge is not None:
                agent_ids += [f"{a} (A2A {h.config.url})" for a, h in bridge.hosted.items()]
            print(self.banner(settings, servers, agent_ids, models, tools), flush=True)
            if self.file is not None:
                follower = self._follow(worker, tools, runtime, bridge)
                loop.add_signal_handler(signal.SIGHUP, follower.reload)
            if ready is not None:
                ready.set()
            await stop.wait()
            print("\nstopping the local mesh ...", flush=True)
        finally:
            if follower is not None:
                loop.remove_signal_handler(signal.SIGHUP)
                await follower.stop()
            if tools is not None:
                with contextlib.suppress(Exception):
                    await tools.stop()
            if worker is not None:
                with contextlib.suppress(Exception):
                    await worker.stop()
            if gateway is not None and gateway_task is not None:
                gateway.should_exit = True
                with contextlib.suppress(Exception):
                    await gateway_task
            if bridge is not None:
                with contextlib.suppress(Exception):
                    await bridge.stop()
            for agent in reversed(agents):
                with contextlib.suppress(Exception):
                    await agent.stop()
            if runtime is not None:
                with contextlib.suppress(Exception):
                    await runtime.stop()
            if executor is not None:
                with contextlib.suppress(Exception):
                    await executor.stop()
            for server in reversed(servers):
                await asyncio.to_thread(server.stop)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _start_gateway(self, settings: Settings) -> tuple[Any, asyncio.Task[None]]:
        from agentmesh.broker.servers import ServerError, port_in_use
        from agentmesh.gateway.server import make_server

        assert self.gateway_port is not None
        if port_in_use(self.gateway_port, self.host):
            raise ServerError(
                f"port {self.gateway_port} is already in use: is another mesh running? "
                "Stop it or choose another port with --gateway-port."
            )
        server = make_server(
            settings,
            host=self.host,
            port=self.gateway_port,
            config=self._gateway_config,
            log_level="warning",
        )
        try:
            task = await server.start()
        except RuntimeError as exc:
            raise ServerError(str(exc)) from None
        return server, task

    # What runs: the mesh file's sections, or the defaults of a plain `up` -------------------
    def _agents(self, echo: bool) -> list[Agent]:
        if self.file is None:
            if not echo:
                return []
            from agentmesh.agents.examples.echo import agent as echo_agent

            return [echo_agent]
        return [load_agent(target) for target in self.file.doc.agents()]

    async def _models(self) -> LLMConfig | None:
        if self.file is not None:
            return self.file.doc.llm()
        # Probing for a local Ollama blocks for up to half a second: off the loop.
        return await asyncio.to_thread(config_from_env)

    def _mcp_config(self) -> MCPConfig | None:
        if self.file is not None:
            return self.file.doc.mcp()
        return MCPConfig.parse(MCP_SERVERS, source="agentmesh up")

    @functools.cached_property
    def _gateway_base(self) -> GatewayConfig:
        return GatewayConfig.from_env()

    @functools.cached_property
    def _gateway_config(self) -> GatewayConfig:
        """The gateway's live config (a reload of the file changes it in place)."""
        if self.file is None:
            return self._gateway_base
        doc = self.file.doc
        return replace(doc.gateway().to_config(self._gateway_base), channels=doc.channels())

    def _follow(
        self,
        worker: LLMWorker | None,
        tools: MCPWorker | None,
        runtime: RuntimeWorker | None,
        bridge: A2ABridge | None = None,
    ) -> Follower:
        assert self.file is not None
        doc = self.file.doc
        parts = []
        if self.gateway_port is not None:
            parts.append(gateway_part(self._gateway_config, self._gateway_base, doc.gateway()))
            parts.append(channels_part(self._gateway_config))
        if worker is not None:
            parts.append(llm_part(worker))
        if tools is not None:
            parts.append(mcp_part(tools))
        if runtime is not None:
            parts.append(runtime_part(runtime))
        if bridge is not None:
            parts.append(a2a_part(bridge))
        served = {p.section for p in parts}
        restart_only = [
            "servers",
            "agents",
            *(s for s in ("models", "mcpServers", "a2a") if s not in served),
        ]
        applier = MeshFollower(doc, parts, restart_only=restart_only)
        follower = Follower(self.file.source, applier.on_text, current=self.file.text)
        follower.start()
        return follower

    async def _mcp_settled(self, worker: MCPWorker, timeout: float) -> None:
        """Wait (bounded) until each server is up or has failed once."""
        with contextlib.suppress(TimeoutError):
            await worker.wait_for(
                lambda: all(u.state != "starting" for u in worker.upstreams.values()), timeout
            )

    async def _mcp_started(self, worker: MCPWorker) -> bool:
        """Whether the MCP worker's servers came up; if not, a warning, and `up` goes on without
        it: a missing mcp-server-time must not keep the rest of the mesh from running."""
        upstreams = worker.upstreams.values()
        # Up, or failed once: a server that cannot start (not installed) fails within a second,
        # so do not sit out its reconnect backoff.
        with contextlib.suppress(TimeoutError):
            await worker.wait_for(
                lambda: all(u.state != "starting" for u in upstreams), MCP_START_TIMEOUT
            )
        down = [f"{u.name}: {u.error or u.state}" for u in upstreams if u.state != "up"]
        if not down:
            return True
        print(
            f"warning: no MCP worker, its servers did not start ({'; '.join(down)}); "
            "is mcp-server-time installed (pip install -e '.[servers]')? --no-mcp skips it",
            flush=True,
        )
        return False

    def banner(
        self,
        settings: Settings,
        servers: list[LocalServer],
        agents: list[str],
        models: LLMConfig | None = None,
        tools: MCPWorker | None = None,
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
            "  tasks  one executor (durable tasks in JetStream)",
            "  runtime one runtime worker (saved agents: POST /v1/agents, /v1/infer)",
            *self._models_lines(models),
            self._mcp_line(tools),
            "",
            "In another terminal:",
            *self._env_lines(settings),
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
            *self._tool_curl_lines(tools),
            "",
            "Ctrl-C stops everything started here.",
        ]
        return "\n".join(lines)

    def _env_lines(self, settings: Settings) -> list[str]:
        """Off the default ports or prefix, how to point another terminal's commands here."""
        defaults = Settings()
        names = {"nats_url": "NATS_URL", "redis_url": "REDIS_URL", "prefix": "PREFIX"}
        changed = {
            name: getattr(settings, field)
            for field, name in names.items()
            if getattr(settings, field) != getattr(defaults, field)
        }
        if not changed:
            return []
        return [
            "  # not the default mesh: point the commands here (or pass --nats-url, ...)",
            *(f"  export AGENTMESH_{name}={shlex.quote(value)}" for name, value in changed.items()),
        ]

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

    def _mcp_line(self, tools: MCPWorker | None) -> str:
        url = f"http://{self.host}:{self.gateway_port}/mcp" if self.gateway_port else "-"
        if tools is None:
            return f"  MCP    {url}  (no MCP worker)" if self.gateway_port else "  MCP    -"
        up = [u for u in tools.upstreams.values() if u.state == "up"]
        count = sum(len(u.tools) for u in up)
        names = ", ".join(u.name for u in up)
        plural = "s" if len(up) != 1 else ""
        return f"  MCP    {url}  ({len(up)} server{plural}: {names}; {count} tools)"

    def _tool_curl_lines(self, tools: MCPWorker | None) -> list[str]:
        if tools is None or "time" not in tools.upstreams or self.gateway_port is None:
            return []
        call = {"server": "time", "tool": "get_current_time", "arguments": {"timezone": "UTC"}}
        return [
            "  # a tool of the time MCP server (or point any MCP client at the /mcp URL above):",
            f"  curl http://{self.host}:{self.gateway_port}/v1/tools/call \\",
            "    -H 'content-type: application/json' \\",
            f"    -d '{json.dumps(call)}'",
        ]
