"""`agentmesh config`: the mesh file's JSON Schema, checking a file, and the shared config."""

from __future__ import annotations

from pathlib import Path

import typer

from agentmesh import cli_support

config_app = typer.Typer(
    help="The mesh file (mesh.yaml): its schema, checking it, sharing it.", no_args_is_help=True
)

FILE = typer.Option(..., "--file", "-f", help="The mesh file (YAML or JSON).")


def _checked(file: Path) -> tuple[str, list[str]]:
    """The file's text and its warnings, or exit 1 with the error naming the field."""
    from agentmesh.meshconfig import load_document
    from agentmesh.workers.config import ConfigError

    try:
        doc, text = load_document(file)
        doc.validate()
    except ConfigError as exc:
        raise cli_support.fail(str(exc)) from None
    return text, doc.warnings


@config_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of the mesh file (for editors: yaml-language-server, VS Code)."""
    from agentmesh.meshconfig import schema_text

    typer.echo(schema_text(), nl=False)


@config_app.command("check")
def check(file: Path = FILE) -> None:
    """Validate a mesh file: every section, with `${VAR}` expanded from this environment."""
    _, warnings = _checked(file)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"{file}: ok")


@config_app.command("apply")
def apply(file: Path = FILE) -> None:
    """Validate a mesh file and make it the mesh's shared config: every process started with
    `--shared` applies it within a second or two. `${VAR}` is stored as written, so each
    process expands its own environment (keys need not leave their machines)."""
    from agentmesh.broker.bus import Bus
    from agentmesh.broker.watch import SharedSource

    text, warnings = _checked(file)
    for warning in warnings:
        typer.echo(f"warning: {warning}", err=True)
    settings = cli_support.settings()

    async def main() -> tuple[str, int]:
        async with await Bus.connect(settings, name="agentmesh-config") as bus:
            shared = await SharedSource.open(bus.nc, settings.prefix, create=True)
            return shared.describe(), await shared.put(text)

    where, revision = cli_support.run(main)
    typer.echo(f"applied {file} to {where}, revision {revision}")
