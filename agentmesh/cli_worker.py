"""`agentmesh worker`: run the mesh's workers (`llm`, `mcp`) until Ctrl-C or SIGTERM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer

# The module, not its names: agentmesh.cli imports this module while it is still loading.
from agentmesh import cli as _cli
from agentmesh.workers.running import Worker, run_until_signal

worker_app = typer.Typer(help="Run workers that serve models or tools.", no_args_is_help=True)


def _serve(load: Callable[[], Worker], verbose: bool) -> None:
    """Build a worker from its config file (a bad file: one line, exit 1), run it until a signal."""
    from agentmesh.workers.config import ConfigError

    _cli._setup_logging(verbose)
    try:
        worker = load()
    except ConfigError as exc:
        raise _cli._fail(str(exc)) from None
    settings = _cli._settings()

    async def main() -> None:
        try:
            await run_until_signal(worker, settings)
        except BaseException:
            await worker.stop()  # a failed start (NATS or Redis down): close what did open
            raise

    _cli._run(main)


@worker_app.command("llm")
def llm(
    config: Path = typer.Option(
        ..., "--config", "-c", help="The models file (models.yaml): aliases and deployments."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the model aliases of a models file over the bus (start more to share the load)."""
    from agentmesh.workers.llm.config import LLMConfig
    from agentmesh.workers.llm.worker import LLMWorker

    _serve(lambda: LLMWorker(LLMConfig.load(config)), verbose)


@worker_app.command(
    "mcp",
    help="Serve the tools of the MCP servers in an mcp.json over the bus "
    "(start more to share the load).",
)
def mcp(
    config: Path = typer.Option(
        ..., "--config", "-c", help="The MCP servers file (mcp.json, the mcpServers shape)."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    from agentmesh.workers.mcp.config import MCPConfig
    from agentmesh.workers.mcp.worker import MCPWorker

    _serve(lambda: MCPWorker(MCPConfig.load(config)), verbose)
