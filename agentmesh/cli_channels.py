"""`agentmesh channels`: the chat apps of a mesh file (`channels:`), and a check of their
credentials against the platform."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from agentmesh import cli_support
from agentmesh.gateway.channels.config import ChannelConfig

channels_app = typer.Typer(
    help="Chat channels (Feishu, Lark, Slack) of the mesh file: list them, test credentials.",
    no_args_is_help=True,
)

FILE = typer.Option(..., "--file", "-f", help="The mesh file (YAML or JSON).")


def _configs(file: Path) -> list[ChannelConfig]:
    from agentmesh.meshconfig import load_document
    from agentmesh.workers.config import ConfigError

    try:
        doc, _ = load_document(file)
        return list(doc.channels())
    except ConfigError as exc:
        raise cli_support.fail(str(exc)) from None


def _routes(config: ChannelConfig) -> str:
    agent = config.agent or (f"type:{config.agent_type}" if config.agent_type else "-")
    return agent + (f" (+{len(config.chats)} chats)" if config.chats else "")


@channels_app.command("list")
def list_channels(
    file: Path = FILE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON (no secrets)."),
) -> None:
    """The configured channels: kind, name, mode, who answers, the events path."""
    configs = _configs(file)
    rows = [
        {
            "kind": c.kind,
            "name": c.name,
            "mode": c.mode,
            "answers": _routes(c),
            "events": f"/channels/{c.kind}/{c.name}/events" if c.mode == "webhook" else "-",
            "api": c.api_base,
        }
        for c in configs
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"{file}: no channels")
        return
    header = ("KIND", "NAME", "MODE", "ANSWERS", "EVENTS", "API")
    cli_support.table([header, *(tuple(r.values()) for r in rows)])


@channels_app.command("test")
def test_channels(
    file: Path = FILE,
    name: str | None = typer.Argument(None, help="One channel (default: every one)."),
) -> None:
    """Check each channel's credentials against its platform (a token, the bot's identity).
    Exit 1 if any fails."""
    from agentmesh.broker.connections import connect_redis
    from agentmesh.gateway.channels.base import ReplyFailed
    from agentmesh.gateway.channels.registry import make_channel

    configs = [c for c in _configs(file) if name is None or c.name == name]
    if not configs:
        raise cli_support.fail(f"no channel {name!r} in {file}" if name else f"{file}: no channels")
    settings = cli_support.settings()

    async def main() -> int:
        failed = 0
        redis = await connect_redis(settings)  # tokens are cached where the gateways find them
        try:
            for config in configs:
                channel = make_channel(config, redis, settings.prefix)
                try:
                    said = await channel.check()
                    typer.echo(f"{config.kind}/{config.name}: ok, {said}")
                except ReplyFailed as exc:
                    failed += 1
                    typer.echo(f"{config.kind}/{config.name}: FAILED, {exc}", err=True)
                finally:
                    await channel.aclose()
        finally:
            await redis.aclose()
        return failed

    if cli_support.run(main):
        raise typer.Exit(1)
