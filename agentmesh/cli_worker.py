"""`agentmesh worker`: run the mesh's workers (`llm`, `mcp`, `executor`, `runtime`, `a2a`) until
Ctrl-C or SIGTERM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from agentmesh import cli_support
from agentmesh.broker.lifecycle import MeshService, run_until_signal
from agentmesh.broker.subjects import ID_RE

if TYPE_CHECKING:
    from agentmesh.following import Part
    from agentmesh.meshconfig import MeshDocument

worker_app = typer.Typer(help="Run workers that serve models or tools.", no_args_is_help=True)


def _serve(load: Callable[[], MeshService], verbose: bool) -> None:
    """Build a worker from its config file (a bad file: one line, exit 1), run it until a signal."""
    from agentmesh.workers.config import ConfigError

    cli_support.setup_logging(verbose)
    try:
        worker = load()
    except ConfigError as exc:
        raise cli_support.fail(str(exc)) from None
    settings = cli_support.settings()

    cli_support.run(lambda: run_until_signal(worker, settings))


def _follow(
    build: Callable[[MeshDocument], tuple[MeshService, Part]],
    file: Path | None,
    shared: bool,
    verbose: bool,
) -> None:
    """Run the worker `build` makes from a mesh file or the shared config (it raises
    ConfigError if its section is missing), applying every new version live (a bad one at
    start: one line, exit 1)."""
    from agentmesh.following import Following, log_warnings, open_source
    from agentmesh.workers.config import ConfigError

    cli_support.setup_logging(verbose)
    settings = cli_support.settings()

    async def main() -> None:
        opened = await open_source(file, shared, settings)
        try:
            log_warnings(opened.doc)
            worker, part = build(opened.doc)
        except BaseException:
            await opened.close()
            raise
        await run_until_signal(Following(worker, opened, [part]), settings)

    try:
        cli_support.run(main)
    except ConfigError as exc:
        raise cli_support.fail(str(exc)) from None


def _llm(doc: MeshDocument) -> tuple[MeshService, Part]:
    from agentmesh.following import llm_part
    from agentmesh.workers.llm.worker import LLMWorker

    models = doc.llm()
    if models is None:
        raise _missing(doc, "models")
    worker = LLMWorker(models)
    return worker, llm_part(worker)


def _mcp(doc: MeshDocument) -> tuple[MeshService, Part]:
    from agentmesh.following import mcp_part
    from agentmesh.workers.mcp.worker import MCPWorker

    servers = doc.mcp()
    if servers is None:
        raise _missing(doc, "mcpServers")
    worker = MCPWorker(servers)
    return worker, mcp_part(worker)


def _missing(doc: MeshDocument, section: str) -> Exception:
    from agentmesh.workers.config import ConfigError

    return ConfigError(f"{doc.source}: no {section!r} section")


def _one_source(config: Path | None, file: Path | None, shared: bool) -> None:
    if sum((config is not None, file is not None, shared)) != 1:
        raise cli_support.fail("give one of --config, -f/--file or --shared")


FILE_HELP = "A mesh file (mesh.yaml): serve its section, applying edits live (SIGHUP re-reads)."
SHARED_HELP = "Follow the mesh's shared config (JetStream KV, written by `agentmesh config apply`)."


@worker_app.command("llm")
def llm(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The models file (models.yaml): aliases and deployments."
    ),
    file: Path | None = typer.Option(None, "--file", "-f", help=FILE_HELP),
    shared: bool = typer.Option(False, "--shared", help=SHARED_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the model aliases of a models file over the bus (start more to share the load)."""
    from agentmesh.workers.llm.config import LLMConfig
    from agentmesh.workers.llm.worker import LLMWorker

    _one_source(config, file, shared)
    if config is None:
        _follow(_llm, file, shared, verbose)
        return
    _serve(lambda: LLMWorker(LLMConfig.load(config)), verbose)


@worker_app.command(
    "mcp",
    help="Serve the tools of the MCP servers in an mcp.json over the bus "
    "(start more to share the load).",
)
def mcp(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The MCP servers file (mcp.json, the mcpServers shape)."
    ),
    file: Path | None = typer.Option(None, "--file", "-f", help=FILE_HELP),
    shared: bool = typer.Option(False, "--shared", help=SHARED_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    from agentmesh.workers.mcp.config import MCPConfig
    from agentmesh.workers.mcp.worker import MCPWorker

    _one_source(config, file, shared)
    if config is None:
        _follow(_mcp, file, shared, verbose)
        return
    _serve(lambda: MCPWorker(MCPConfig.load(config)), verbose)


@worker_app.command("executor")
def executor(
    name: str = typer.Option("executor", "--name", help="Its service name in the registry."),
    max_running: int = typer.Option(
        100, "--max-running", min=1, help="Tasks this executor runs at once."
    ),
    limit: list[str] = typer.Option(
        [],
        "--limit",
        help="AGENT=N: at most N tasks of that agent at once, mesh-wide (give every executor "
        "the same limits). Repeat for more agents.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run durable tasks: take them from JetStream and call their agents (start more to share
    the load; each task runs on one of them, and another takes over if it dies)."""
    from agentmesh.workers.executor import Executor

    limits: dict[str, int] = {}
    for item in limit:
        agent, sep, count = (part.strip() for part in item.partition("="))
        if not sep or not count.isdigit() or int(count) < 1 or not ID_RE.fullmatch(agent):
            raise cli_support.fail(f"--limit {item!r}: use AGENT=N, an agent id and N >= 1")
        limits[agent] = int(count)
    _serve(lambda: Executor(name, max_running=max_running, agent_limits=limits), verbose)


@worker_app.command("runtime")
def runtime(
    name: str = typer.Option("runtime", "--name", help="Its service name in the registry."),
    file: Path | None = typer.Option(
        None,
        "--file",
        "-f",
        help="A mesh file: its `runtime:` section (agents and templates are saved into the "
        "mesh; edits apply live).",
    ),
    shared: bool = typer.Option(False, "--shared", help=SHARED_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve every saved agent of the mesh as a mesh agent, and ad-hoc inferences (`/v1/infer`,
    sub-agents). Start more to share the load; any of them continues any session."""
    from agentmesh.agents.runtime.worker import RuntimeWorker

    if file is None and not shared:
        _serve(lambda: RuntimeWorker(name), verbose)
        return
    _follow(_runtime(name), file, shared, verbose)


def _runtime(name: str) -> Callable[[MeshDocument], tuple[MeshService, Part]]:
    def build(doc: MeshDocument) -> tuple[MeshService, Part]:
        from agentmesh.agents.runtime.worker import RuntimeWorker
        from agentmesh.following import runtime_part
        from agentmesh.schemas.errors import InvalidMessage
        from agentmesh.workers.config import ConfigError

        try:
            worker = RuntimeWorker(name, section=doc.runtime())
        except InvalidMessage as exc:
            raise ConfigError(f"{doc.source}: {exc.message}") from None
        return worker, runtime_part(worker)

    return build


@worker_app.command("a2a")
def a2a(
    url: str | None = typer.Option(
        None, "--url", help="An outside A2A agent's base URL (its card is under it)."
    ),
    agent_id: str | None = typer.Option(None, "--agent-id", help="Its agent id on the mesh."),
    header: list[str] = typer.Option(
        [], "--header", "-H", help="NAME=VALUE: an HTTP header for every request (repeat)."
    ),
    file: Path | None = typer.Option(
        None,
        "--file",
        "-f",
        help="A mesh file: serve the agents of its `a2a:` section (edits apply live).",
    ),
    shared: bool = typer.Option(False, "--shared", help=SHARED_HELP),
    name: str = typer.Option("a2a", "--name", help="Its service name in the registry."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve outside A2A agents as mesh agents: each one's card becomes its mesh card, and mesh
    calls become A2A messages. Start more to share the load."""
    from pydantic import ValidationError

    from agentmesh.workers.a2a import A2ABridge, A2ASection, OutsideAgent
    from agentmesh.workers.a2a.config import parse_headers
    from agentmesh.workers.config import reasons

    one = url is not None or agent_id is not None
    if sum((one, file is not None, shared)) != 1:
        raise cli_support.fail("give --url and --agent-id, or one of -f/--file or --shared")
    if not one:
        if header:
            raise cli_support.fail("--header goes with --url (in a mesh file: `headers:`)")
        _follow(_a2a(name), file, shared, verbose)
        return
    if url is None or agent_id is None:
        raise cli_support.fail("--url and --agent-id go together")
    try:
        agent = OutsideAgent(agent_id=agent_id, url=url, headers=parse_headers(header))
    except ValidationError as exc:
        raise cli_support.fail(reasons(exc)) from None
    except ValueError as exc:
        raise cli_support.fail(str(exc)) from None
    _serve(lambda: A2ABridge(A2ASection(agents=[agent]), name), verbose)


def _a2a(name: str) -> Callable[[MeshDocument], tuple[MeshService, Part]]:
    def build(doc: MeshDocument) -> tuple[MeshService, Part]:
        from agentmesh.following import a2a_part
        from agentmesh.workers.a2a import A2ABridge
        from agentmesh.workers.config import ConfigError

        section = doc.a2a()
        if section is None:
            raise ConfigError(f"{doc.source}: no 'a2a' section: no outside agent")
        bridge = A2ABridge(section, name)
        return bridge, a2a_part(bridge)

    return build
