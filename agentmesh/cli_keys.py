"""`agentmesh keys`: create, list and revoke the gateway's API keys, and show their LLM usage
(straight in JetStream, with Redis as the usage cache)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer

from agentmesh import cli_support
from agentmesh.broker.ratelimit import Limit
from agentmesh.broker.settings import Settings
from agentmesh.gateway.keys import (
    DEFAULT_SCOPES,
    KeyRecord,
    KeyStore,
    parse_agent_patterns,
    parse_scopes,
    parse_to_agent_patterns,
    parse_tool_patterns,
    validate_name,
)
from agentmesh.gateway.usage import FIELDS, Usage, UsageStore
from agentmesh.schemas.envelope import iso_utc
from agentmesh.schemas.errors import InvalidMessage

T = TypeVar("T")

keys_app = typer.Typer(
    help="API keys for the gateway (used when it runs with AGENTMESH_AUTH=on).",
    no_args_is_help=True,
)


def _with_store(settings: Settings, use: Callable[[KeyStore], Awaitable[T]]) -> T:
    return _with_records(settings, lambda r: use(KeyStore(r.durable, r.subjects)))


def _with_records(settings: Settings, use: Callable[[cli_support.Records], Awaitable[T]]) -> T:
    async def main() -> T:
        async with cli_support.records(settings, name="agentmesh-keys") as records:
            return await use(records)

    return cli_support.run(main)


def _scopes_text(record: KeyRecord) -> str:
    return ",".join(sorted(s.value for s in record.scopes))


def _tools_text(record: KeyRecord, sep: str = ",") -> str:
    if record.tools is None:
        return "all"
    return sep.join(record.tools) or "none"


def _to_agents_text(record: KeyRecord, sep: str = ",") -> str:
    if record.to_agents is None:
        return "all"
    return sep.join(record.to_agents) or "none"


def _limit(text: str | None, what: str) -> Limit | None:
    if text is None:
        return None
    try:
        return Limit.parse(text)
    except ValueError as exc:
        raise InvalidMessage(str(exc).replace("rate limit", what, 1)) from None


@keys_app.command()
def create(
    name: str = typer.Argument(..., help="What the key is for (1-64 printable characters)."),
    scope: list[str] | None = typer.Option(
        None,
        "--scope",
        "-s",
        help="agents:read, send, connect, define or admin; repeat or comma-separate. "
        "Default: agents:read, send, connect.",
    ),
    rate_limit: str | None = typer.Option(
        None, "--rate-limit", "-r", help="N/SECONDS, e.g. 100/60 or 1000/h, shared by replicas."
    ),
    token_limit: str | None = typer.Option(
        None,
        "--token-limit",
        "-t",
        help="LLM tokens N/SECONDS, e.g. 10000/60: each call reserves an estimate, corrected "
        "from its actual usage.",
    ),
    tools: list[str] | None = typer.Option(
        None,
        "--tools",
        help="MCP tools the key may list and call, as server/tool patterns with * wildcards, "
        "e.g. 'time/*,github/get_issue'; repeat or comma-separate. Default: every tool.",
    ),
    agents: list[str] | None = typer.Option(
        None,
        "--agents",
        help="Agent ids the key may attach as (WebSocket) and send as (from_agent_id), as "
        "patterns with * wildcards, e.g. 'bot-*'; repeat or comma-separate. Default: none.",
    ),
    to_agents: list[str] | None = typer.Option(
        None,
        "--to-agents",
        help="Agent ids the key may call (send to, submit tasks for, reach over A2A), as "
        "patterns with * and ? wildcards, e.g. 'a*,support'; repeat or comma-separate. "
        "Default: every agent.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the key."),
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    try:
        validate_name(name)
        scopes = parse_scopes(",".join(scope)) if scope else DEFAULT_SCOPES
        limit = _limit(rate_limit, "rate limit")
        tokens = _limit(token_limit, "token limit")
        allowed = parse_tool_patterns(",".join(tools)) if tools else None
        as_agents = parse_agent_patterns(",".join(agents)) if agents else ()
        reach = parse_to_agent_patterns(",".join(to_agents)) if to_agents else None
    except InvalidMessage as exc:
        raise cli_support.fail(exc.message) from None
    settings = cli_support.settings()
    key, record = _with_store(
        settings,
        lambda store: store.create(
            name,
            scopes=scopes,
            rate_limit=limit,
            token_limit=tokens,
            tools=allowed,
            agents=as_agents,
            to_agents=reach,
        ),
    )
    if quiet:
        typer.echo(key)
        return
    typer.echo(f"created key {record.key_id} ({record.name})")
    typer.echo(f"  scopes:      {_scopes_text(record).replace(',', ', ')}")
    typer.echo(f"  rate limit:  {record.rate_limit or 'none'}")
    typer.echo(f"  token limit: {record.token_limit or 'none'}")
    typer.echo(f"  tools:       {_tools_text(record, ', ')}")
    typer.echo(f"  agents:      {', '.join(record.agents) or 'none'}")
    typer.echo(f"  to agents:   {_to_agents_text(record, ', ')}")
    typer.echo("")
    typer.echo(key)
    typer.echo("")
    typer.echo("Copy the key now: it will not be shown again.")


@keys_app.command("list")
def list_keys(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the keys (ids and names; never the keys or their hashes)."""
    records = _with_store(cli_support.settings(), lambda store: store.list())
    if as_json:
        rows = [
            {
                "key_id": r.key_id,
                "name": r.name,
                "scopes": sorted(s.value for s in r.scopes),
                "rate_limit": None if r.rate_limit is None else str(r.rate_limit),
                "token_limit": None if r.token_limit is None else str(r.token_limit),
                "tools": None if r.tools is None else list(r.tools),
                "agents": list(r.agents),
                "to_agents": None if r.to_agents is None else list(r.to_agents),
                "created_at": iso_utc(r.created_at),
            }
            for r in records
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    if not records:
        typer.echo("no keys")
        return
    table = [("ID", "NAME", "SCOPES", "RATE LIMIT", "TOKEN LIMIT", "TOOLS", "TO AGENTS", "CREATED")]
    for r in records:
        limits = (str(r.rate_limit or "-"), str(r.token_limit or "-"))
        patterns = (_tools_text(r), _to_agents_text(r))
        table.append((r.key_id, r.name, _scopes_text(r), *limits, *patterns, iso_utc(r.created_at)))
    cli_support.table(table)


@keys_app.command()
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (see `agentmesh keys list`)."),
) -> None:
    """Revoke a key: every replica refuses it from its next request."""
    if not _with_store(cli_support.settings(), lambda store: store.revoke(key_id)):
        raise cli_support.fail(f"no key with id {key_id!r} (see `agentmesh keys list`)")
    typer.echo(f"revoked key {key_id}")


@keys_app.command()
def usage(
    key_id: str | None = typer.Argument(
        None, help="Only this key (see `agentmesh keys list`; `anonymous` for calls without one)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """LLM usage per key and model: requests, tokens and errors, counted by every gateway."""
    rows: list[Usage] = _with_records(
        cli_support.settings(),
        lambda r: UsageStore(r.durable, r.redis, r.subjects).read(key_id),
    )
    if as_json:
        typer.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    if not rows:
        typer.echo("no usage" + (f" for key {key_id}" if key_id else ""))
        return
    header = ("KEY", "MODEL", *(f.replace("_tokens", "").upper() for f in FIELDS))
    body = [(r.key_id, r.model, *(str(getattr(r, f)) for f in FIELDS)) for r in rows]
    cli_support.table([header, *body])
