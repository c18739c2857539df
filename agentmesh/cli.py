"""The `agentmesh` command line. The only place that configures logging."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from agentmesh import cli_status, cli_support
from agentmesh.cli_channels import channels_app
from agentmesh.cli_config import config_app
from agentmesh.cli_keys import keys_app
from agentmesh.cli_tasks import tasks_app, traces_app
from agentmesh.cli_tools import tools_app
from agentmesh.cli_webhooks import webhooks_app
from agentmesh.cli_worker import worker_app
from agentmesh.schemas.errors import ConnectionFailed

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
app.add_typer(channels_app, name="channels")
app.add_typer(worker_app, name="worker")
app.add_typer(tools_app, name="tools")
app.add_typer(tasks_app, name="tasks")
app.add_typer(traces_app, name="traces")
app.add_typer(config_app, name="config")
app.command()(cli_status.status)
app.command()(cli_status.ps)


@app.command()
def up(
    file: Path | None = typer.Option(
        None,
        "--file",
        "-f",
        help="A mesh file (mesh.yaml, or an agentgateway config): run what it says, applying "
        "its edits live (SIGHUP re-reads it). Flags given win over it.",
    ),
    nats_port: int | None = typer.Option(
        None, help="Port for the local nats-server [default: 4222]"
    ),
    redis_port: int | None = typer.Option(
        None, help="Port for the local redis-server [default: 6379]"
    ),
    data_dir: Path | None = typer.Option(
        None, help="Where server data and logs go [default: .agentmesh]"
    ),
    gateway_port: int | None = typer.Option(
        None, help="Port for the gateway (HTTP, WebSocket) [default: 8001]"
    ),
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
    from agentmesh.following import log_warnings, open_source
    from agentmesh.local import LocalMesh
    from agentmesh.meshconfig import MeshDocument, ServersSection
    from agentmesh.workers.config import ConfigError

    cli_support.setup_logging(verbose)
    settings = cli_support.settings()
    try:
        opened = None if file is None else asyncio.run(open_source(file, False, settings))
        doc = opened.doc if opened is not None else MeshDocument(raw={}, source="")
        servers = doc.servers() if opened is not None else ServersSection()
        section = doc.gateway() if opened is not None else None
    except ConfigError as exc:
        raise cli_support.fail(str(exc)) from None
    if opened is not None:
        log_warnings(doc)
    mesh = LocalMesh(
        nats_port=nats_port or servers.nats_port,
        redis_port=redis_port or servers.redis_port,
        data_dir=data_dir or servers.data_dir,
        prefix=settings.prefix,
        host=servers.host,
        gateway_port=None if no_gateway else gateway_port or (section.port if section else 8001),
        file=opened,
    )
    try:
        cli_support.run(lambda: mesh.run(echo=not no_echo, llm=not no_llm, mcp=not no_mcp))
    except ConfigError as exc:
        raise cli_support.fail(str(exc)) from None


@app.command()
def agents(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the agents online now."""
    from agentmesh.agents.client import MeshClient

    async def main() -> list[Any]:
        async with MeshClient.connect(cli_support.settings()) as mesh:
            return await mesh.agents()

    found = cli_support.run(main)
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
    cli_support.table(rows)


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
            raise cli_support.fail(f"--data is not valid JSON: {exc}") from None

    async def main() -> None:
        async with MeshClient.connect(cli_support.settings(), sender_id="cli") as mesh:
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

    cli_support.run(main)


def _render(msg: Any) -> str:
    if msg.text or not msg.content:
        return msg.text
    return json.dumps(msg.model_dump(mode="json")["content"], ensure_ascii=False)


@app.command()
def gateway(
    host: str | None = typer.Option(
        None, help="Interface to listen on (0.0.0.0 for all) [default: 127.0.0.1]"
    ),
    port: int | None = typer.Option(None, help="Port to listen on [default: 8001]"),
    file: Path | None = typer.Option(
        None, "--file", "-f", help="A mesh file: run on its gateway section, applying edits live."
    ),
    shared: bool = typer.Option(
        False, "--shared", help="Follow the shared config (`agentmesh config apply`)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run one gateway replica (start more on other ports or hosts; they share nothing)."""
    from agentmesh.gateway.server import make_server

    cli_support.setup_logging(verbose)
    if file is not None or shared:
        _gateway_following(file, shared, host, port)
        return
    host, port = host or "127.0.0.1", port or 8001
    server = make_server(cli_support.settings(), host=host, port=port)

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

    cli_support.run(main)


def _gateway_following(file: Path | None, shared: bool, host: str | None, port: int | None) -> None:
    from agentmesh.following import open_source, run_gateway
    from agentmesh.workers.config import ConfigError

    if file is not None and shared:
        raise cli_support.fail("give -f/--file or --shared, not both")
    settings = cli_support.settings()

    async def main() -> None:
        opened = await open_source(file, shared, settings)
        await run_gateway(opened, settings, host=host, port=port)

    try:
        cli_support.run(main)
    except ConfigError as exc:
        raise cli_support.fail(str(exc)) from None


@agent_app.command("run")
def agent_run(
    target: str = typer.Argument(..., help="MODULE:ATTR of an Agent, e.g. mymodule:agent"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run an agent defined in a Python module until Ctrl-C or SIGTERM."""
    from agentmesh.agents.agent import Agent
    from agentmesh.broker.lifecycle import run_until_signal

    cli_support.setup_logging(verbose)
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise cli_support.fail(f"expected MODULE:ATTR, got {target!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise cli_support.fail(f"cannot load {target}: {exc}") from None
    if not isinstance(obj, Agent):
        raise cli_support.fail(f"{target} is a {type(obj).__name__}, not an agentmesh Agent")
    settings = cli_support.settings()
    cli_support.run(lambda: run_until_signal(obj, settings))


# Last, once every command is registered: all but `up` (which starts its own servers) take
# --nats-url, --redis-url and --prefix.
cli_support.add_mesh_options(app, skip=frozenset({"up"}))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
