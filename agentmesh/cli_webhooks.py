"""`agentmesh webhooks`: create, list and delete the mesh's signed webhooks (stored in JetStream
KV)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer

from agentmesh import cli_support
from agentmesh.gateway.webhook_store import DEFAULT_TOLERANCE, Webhook, WebhookStore
from agentmesh.schemas.envelope import iso_utc

T = TypeVar("T")

webhooks_app = typer.Typer(
    help="Signed webhooks: POST /webhooks/NAME on any gateway delivers to an agent.",
    no_args_is_help=True,
)


def _with_store(use: Callable[[WebhookStore], Awaitable[T]]) -> T:
    settings = cli_support.settings()

    async def main() -> T:
        async with cli_support.records(settings, name="agentmesh-webhooks") as r:
            return await use(WebhookStore(r.durable, r.redis, r.subjects))

    return cli_support.run(main)


@webhooks_app.command("create")
def create(
    name: str = typer.Argument(..., help="The webhook's name: POST /webhooks/NAME."),
    agent: str = typer.Option(..., "--agent", "-a", help="The agent id that receives deliveries."),
    secret: str | None = typer.Option(
        None,
        help="The signing secret (default: a new random one). Prefer the environment variable: "
        "a command-line argument is visible to other users of the machine.",
        envvar="AGENTMESH_WEBHOOK_SECRET",
        show_envvar=True,
    ),
    tolerance: int = typer.Option(
        DEFAULT_TOLERANCE, help="Seconds a delivery's timestamp may be off the gateway's clock."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (includes the secret)."),
) -> None:
    """Create a webhook and print its secret (shown this once)."""
    hook = _with_store(
        lambda store: store.create(name, agent_id=agent, secret=secret, tolerance_seconds=tolerance)
    )
    if as_json:
        typer.echo(json.dumps({**_row(hook), "secret": hook.secret}, indent=2))
        return
    typer.echo(f"created webhook {hook.name} -> agent {hook.agent_id}")
    typer.echo(f"secret (shown once, store it now): {hook.secret}")
    typer.echo(
        f"""
Send deliveries to POST /webhooks/{hook.name} on any gateway replica, with headers
  X-Mesh-Timestamp: <unix seconds>   (within {hook.tolerance_seconds}s of the gateway's clock)
  X-Mesh-Delivery:  <a unique id per event; retries reuse it>
  X-Mesh-Signature: v2=<hex HMAC-SHA256(secret, "<timestamp>.<delivery id>." + raw body)>
A signed request passes once: resent with another delivery id it is refused (409 REPLAYED).
Retry an event with its own delivery id, signed afresh; once delivered it answers "duplicate".
For example:
  SECRET={shlex.quote(hook.secret)}
  body='{{"hello": "world"}}'; ts=$(date +%s); id="evt-$ts-$RANDOM"
  sig=$(printf '%s.%s.%s' "$ts" "$id" "$body" \\
    | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.*= //')
  curl -sS -X POST http://127.0.0.1:8001/webhooks/{hook.name} \\
    -H 'Content-Type: application/json' -H "X-Mesh-Timestamp: $ts" \\
    -H "X-Mesh-Delivery: $id" -H "X-Mesh-Signature: v2=$sig" \\
    --data-binary "$body"
See docs/PROTOCOL.md, section 8."""
    )


@webhooks_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the webhooks (never their secrets)."""
    hooks = _with_store(lambda store: store.list())
    if as_json:
        typer.echo(json.dumps([_row(h) for h in hooks], indent=2))
        return
    if not hooks:
        typer.echo("no webhooks")
        return
    rows = [("NAME", "AGENT", "TOLERANCE", "CREATED")]
    rows += [(h.name, h.agent_id, f"{h.tolerance_seconds}s", iso_utc(h.created_at)) for h in hooks]
    cli_support.table(rows)


@webhooks_app.command("delete")
def delete(name: str = typer.Argument(..., help="The webhook to delete.")) -> None:
    """Delete a webhook; deliveries to it are refused with 404 from then on."""
    if not _with_store(lambda store: store.delete(name)):
        raise cli_support.fail(f"no webhook named {name!r}")
    typer.echo(f"deleted webhook {name}")


def _row(hook: Webhook) -> dict[str, object]:
    return {
        "name": hook.name,
        "agent_id": hook.agent_id,
        "tolerance_seconds": hook.tolerance_seconds,
        "created_at": iso_utc(hook.created_at),
    }
