"""`agentmesh worker`: run the mesh's workers (`llm` now) until Ctrl-C or SIGTERM."""

from __future__ import annotations

from pathlib import Path

import typer

# The module, not its names: agentmesh.cli imports this module while it is still loading.
from agentmesh import cli as _cli

worker_app = typer.Typer(help="Run workers that serve models or tools.", no_args_is_help=True)


@worker_app.command("llm")
def llm(
    config: Path = typer.Option(
        ..., "--config", "-c", help="The models file (models.yaml): aliases and deployments."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Serve the model aliases of a models file over the bus (start more to share the load)."""
    from workers.llm.config import ConfigError, LLMConfig
    from workers.llm.worker import LLMWorker

    _cli._setup_logging(verbose)
    try:
        models = LLMConfig.load(config)
    except ConfigError as exc:
        raise _cli._fail(str(exc)) from None
    settings = _cli._settings()
    worker = LLMWorker(models)

    async def main() -> None:
        try:
            await worker.run_until_signal(settings)
        except BaseException:
            await worker.stop()  # a failed start (NATS or Redis down): close what did open
            raise

    _cli._run(main)
