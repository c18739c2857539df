"""The `agentmesh` command line. The only place that configures logging."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from agentmesh.broker.servers import ServerError
from agentmesh.broker.settings import Settings
from agentmesh.cli_keys import keys_app
from agentmesh.cli_tools import tools_app
from agentmesh.cli_webhooks import webhooks_app
from agentmesh.cli_worker import worker_app
from agentmesh.schemas.errors import ConnectionFailed, MeshError

T = TypeVar("T")

app = typer.Typer(
    help="AgentMesh: a distributed message-bus agent mesh.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
agent_app = typer.Typer(help="Run agents.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(keys_app, name="keys")
app.add_typer(webhooks_app, name="webhooks")
app.add_typer(worker_app, name="worker")
app.add_typer(tools_app, name="tools")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not verbose:  # nats-py and redis are chatty at INFO
        logging.getLogger("nats").setLevel(logging.WARNING)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except (ValueError, MeshError) as exc:
        raise _fail(str(exc)) from None


def _table(rows: list[tuple[str, ...]]) -> None:
    """Print rows as aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; expected failures become one clear line and exit code 1."""
    try:
        return asyncio.run(make())
    except ConnectionFailed as exc:
        raise _fail(exc.message) from None
    except MeshError as exc:
        raise _fail(f"{exc.code}: {exc.message}") from None
    except ServerError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def up(
    nats_port: int = typer.Option(4222, help="Port for the local nats-server."),
    redis_port: int = typer.Option(6379, help="Port for the local redis-server."),
    data_dir: Path = typer.Option(Path(".agentmesh"), help="Where server data and logs go."),
    gateway_port: int = typer.Option(8001, help="Port for the gateway (HTTP, WebSocket)."),
    no_gateway: bool = typer.Option(False, "--no-gateway", help="Do not start the gateway."),
    no_echo: bool = typer.Option(False, "--no-echo", help="Do not start the demo echo agent."),
    no_llm: bool = typer.Option(
        False, "--no-llm", help="Do not start the LLM worker (echo model, keys from the env)."
    ),
    no_mcp: bool = typer.Option(
        False, "--no-mcp", help="Do not start the MCP worker (the mcp-server-time tools)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run a local mesh: nats-server (JetStream), redis-server, the gateway, the echo agent, an
    LLM worker (the built-in echo model, plus OpenAI, Anthropic or Ollama models when their
    keys are set or a local Ollama answers) and an MCP worker (the reference time server)."""
    from agentmesh.local import LocalMesh

    _setup_logging(verbose)
    mesh = LocalMesh(
        nats_port=nats_port,
        redis_port=redis_port,
        data_dir=data_dir,
        prefix=_settings().prefix,
        gateway_port=None if no_gateway else gateway_port,
    )
    _run(lambda: mesh.run(echo=not no_echo, llm=not no_llm, mcp=not no_mcp))


@app.command()
def agents(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the agents online now."""
    from agentmesh.agents.client import MeshClient

    async def main() -> list[Any]:
        async with MeshClient.connect(_settings()) as mesh:
            return await mesh.agents()

    found = _run(main)
    if as_json:
        typer.echo(json.dumps([p.model_dump(mode="json") for p in found], indent=2))
        return
    if not found:
        typer.echo("no agents online")
        return
    rows = [("AGENT ID", "NAME", "CAPABILITIES", "INSTANCES", "LAST HEARTBEAT")]
    now = time.time()
    for p in sorted(found, key=lambda p: p.agent_id):
        rows.append(
            (
                p.agent_id,
                p.agent_name or "",
                ",".join(p.capabilities),
                str(len(p.instances)),
                f"{now - p.last_heartbeat:.0f}s ago",
            )
        )
    _table(rows)


@app.command()
def send(
    agent_id: str = typer.Argument(..., help="The agent to send to."),
    text: str = typer.Argument(..., help="The message text."),
    stream: bool = typer.Option(False, "--stream", "-s", help="Print chunks as they arrive."),
    timeout: float = typer.Option(30.0, help="Seconds to wait for the reply."),
    conversation: str | None = typer.Option(None, "--conversation", "-c", help="Conversation id."),
    data: str | None = typer.Option(None, help="Send this JSON as a data part instead of text."),
) -> None:
    """Send a message to an agent and print the reply."""
    from agentmesh.agents.client import MeshClient

    content: Any = text
    if data is not None:
        try:
            content = json.loads(data)
        except json.JSONDecodeError as exc:
            raise _fail(f"--data is not valid JSON: {exc}") from None

    async def main() -> None:
        async with MeshClient.connect(_settings(), sender_id="cli") as mesh:
            if stream:
                async for chunk in mesh.stream(
                    agent_id, content, timeout=timeout, conversation_id=conversation
                ):
                    sys.stdout.write(_render(chunk))
                    sys.stdout.flush()
                sys.stdout.write("\n")
            else:
                reply = await mesh.ask(
                    agent_id, content, timeout=timeout, conversation_id=conversation
                )
                typer.echo(_render(reply))

    _run(main)


def _render(msg: Any) -> str:
    if msg.text or not msg.content:
        return msg.text
    return json.dumps(msg.model_dump(mode="json")["content"], ensure_ascii=False)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show whether NATS and Redis are reachable, and what is online."""
    from agentmesh.broker.bus import Bus
    from agentmesh.broker.connections import connect_redis
    from agentmesh.broker.presence import PresenceRegistry
    from agentmesh.broker.subjects import Subjects

    settings = _settings()

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {"prefix": settings.prefix}
        try:
            bus = await Bus.connect(settings, name="agentmesh-status")
            info = bus.nc._server_info  # server version, JetStream flag
            out["nats"] = {
                "url": settings.nats_url,
                "ok": True,
                "version": info.get("version"),
                "jetstream": bool(info.get("jetstream")),
            }
            await bus.close()
        except ConnectionFailed as exc:
            out["nats"] = {"url": settings.nats_url, "ok": False, "error": exc.message}
        try:
            redis = await connect_redis(settings)
            registry = PresenceRegistry(
                redis, Subjects(settings.prefix), heartbeat_timeout=settings.heartbeat_timeout
            )
            online = await registry.list()
            info = await redis.info("server")
            out["redis"] = {
                "url": settings.redis_url,
                "ok": True,
                "version": info.get("redis_version"),
            }
            out["agents"] = len(online)
            out["instances"] = sum(len(p.instances) for p in online)
            await redis.aclose()
        except ConnectionFailed as exc:
            out["redis"] = {"url": settings.redis_url, "ok": False, "error": exc.message}
        return out

    result = _run(main)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        for name in ("nats", "redis"):
            s = result[name]
            extra = f"version {s.get('version')}" if s["ok"] else s["error"]
            if name == "nats" and s["ok"]:
                extra += ", JetStream " + ("on" if s["jetstream"] else "off")
            typer.echo(f"{name.upper():6} {'ok  ' if s['ok'] else 'DOWN'} {s['url']}  {extra}")
        if "agents" in result:
            typer.echo(
                f"agents {result['agents']} online, {result['instances']} instances "
                f"(prefix {result['prefix']})"
            )
    if not (result["nats"]["ok"] and result["redis"]["ok"]):
        raise typer.Exit(1)


@app.command()
def gateway(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0 for all)."),
    port: int = typer.Option(8001, help="Port to listen on."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run one gateway replica (start more on other ports or hosts; they share nothing)."""
    from agentmesh.gateway.server import make_server

    _setup_logging(verbose)
    server = make_server(_settings(), host=host, port=port)

    async def main() -> None:
        import signal

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        await server.serve()
        if not server.started:
            raise ConnectionFailed(
                f"the gateway could not start on {host}:{port} (see the log above)"
            )

    _run(main)


@agent_app.command("run")
def agent_run(
    target: str = typer.Argument(..., help="MODULE:ATTR of an Agent, e.g. mymodule:agent"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run an agent defined in a Python module until Ctrl-C or SIGTERM."""
    from agentmesh.agents.agent import Agent

    _setup_logging(verbose)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise _fail(f"expected MODULE:ATTR, got {target!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise _fail(f"cannot load {target}: {exc}") from None
    if not isinstance(obj, Agent):
        raise _fail(f"{target} is a {type(obj).__name__}, not an agentmesh Agent")
    settings = _settings()
    _run(lambda: obj._run_until_signal(settings))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
