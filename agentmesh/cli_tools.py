"""`agentmesh tools`: the MCP tools served in the mesh — list them, call one directly."""

from __future__ import annotations

import json
from typing import Any

import typer

from agentmesh import cli_support

tools_app = typer.Typer(
    help="MCP tools served by MCP workers: list them, call one.", no_args_is_help=True
)


@tools_app.command("list")
def list_tools(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The tools callable now, and the MCP servers that are down."""
    from agentmesh.agents.client import MeshClient
    from agentmesh.schemas.catalog import Catalog

    async def main() -> Catalog:
        async with MeshClient.connect(cli_support.settings()) as mesh:
            return await mesh.tools.catalog()

    catalog = cli_support.run(main)
    tools = catalog.tools()
    if as_json:
        entries = [{"server": t.server, **t.tool} for t in tools]
        typer.echo(json.dumps(entries, indent=2))
        return
    if tools:
        rows = [("SERVER", "TOOL", "DESCRIPTION")]
        rows += [(t.server, t.name, _first_line(t.tool.get("description"))) for t in tools]
        cli_support.table(rows)
    elif not catalog.servers:
        typer.echo("no MCP worker is running (start one: agentmesh worker mcp --config mcp.json)")
    for server in sorted(catalog.servers.values(), key=lambda s: s.name):
        if server.state != "up":
            typer.echo(f"server {server.name} is down: {server.error or 'reconnecting'}")


@tools_app.command("call")
def call(
    server: str = typer.Argument(..., help="The MCP server's name (a key of mcp.json)."),
    tool: str = typer.Argument(..., help="The tool's name on that server."),
    arguments: str = typer.Argument("{}", help="The arguments as a JSON object."),
    timeout: float = typer.Option(60.0, help="Seconds the call may take."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole MCP result as JSON."),
) -> None:
    """Call a tool and print its result; a tool error exits with code 2."""
    from agentmesh.agents.client import MeshClient

    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise cli_support.fail(f"the arguments are not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise cli_support.fail("the arguments must be a JSON object")

    async def main() -> Any:
        async with MeshClient.connect(cli_support.settings(), sender_id="cli") as mesh:
            return await mesh.tools.call(server, tool, parsed, timeout=timeout)

    result = cli_support.run(main)
    if as_json:
        typer.echo(json.dumps(result.raw, indent=2))
    elif result.structured is not None:
        typer.echo(json.dumps(result.structured, indent=2))
    else:
        typer.echo(result.text)
    if result.is_error:
        raise typer.Exit(2)


def _first_line(text: Any, width: int = 72) -> str:
    line = str(text or "").strip().splitlines()[0] if text else ""
    return line if len(line) <= width else line[: width - 1] + "…"
