"""What the `agentmesh` commands share: logging, the mesh's settings (with `--nats-url`,
`--redis-url` and `--prefix`), one-line failures, running a coroutine, tables.

Only the CLI modules (`agentmesh/cli*.py`) import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from agentmesh.broker.lifecycle import configure_logging
from agentmesh.broker.servers import ServerError
from agentmesh.broker.settings import Settings
from agentmesh.schemas.errors import ConnectionFailed, MeshError

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from agentmesh.broker.durable import DurableState
    from agentmesh.broker.subjects import Subjects

T = TypeVar("T")

# The connection options of the command being run (`with_mesh_options`); unset ones are None.
_overrides: dict[str, str | None] = {}


def setup_logging(verbose: bool) -> None:
    """The one log format of every AgentMesh process (`MeshService.run` uses it too)."""
    configure_logging(verbose)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` to stderr; raise the returned `typer.Exit`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def settings() -> Settings:
    """The environment's settings (`AGENTMESH_*`), overridden by the command's options."""
    try:
        return Settings.from_env(**_overrides)
    except (ValueError, MeshError) as exc:
        raise fail(str(exc)) from None


def table(rows: list[tuple[str, ...]]) -> None:
    """Print rows as aligned columns (the first row is the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; expected failures become one clear line and exit code 1."""
    try:
        return asyncio.run(make())
    except ConnectionFailed as exc:
        raise fail(exc.message) from None
    except MeshError as exc:
        raise fail(f"{exc.code}: {exc.message}") from None
    except ServerError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@dataclass(frozen=True)
class Records:
    """Where the mesh keeps its records: JetStream (definitions, usage) and Redis (caches)."""

    durable: DurableState
    redis: aioredis.Redis
    subjects: Subjects


@contextlib.asynccontextmanager
async def records(settings: Settings, *, name: str) -> AsyncIterator[Records]:
    """Redis and NATS for `agentmesh keys` / `webhooks`, with the records of an earlier version
    moved from Redis to JetStream first (as a gateway does at start).

    Raises:
        ConnectionFailed: Redis or NATS cannot be reached (the message names the URL).
    """
    from redis.exceptions import RedisError

    from agentmesh.broker.bus import Bus
    from agentmesh.broker.connections import connect_redis, redis_unreachable
    from agentmesh.broker.durable import DurableState
    from agentmesh.gateway.migration import migrate

    redis = await connect_redis(settings)
    try:
        async with await Bus.connect(settings, name=name) as bus:
            durable = DurableState(bus.nc, timeout=max(5.0, settings.connect_timeout))
            try:
                moved = await migrate(durable, redis, bus.subjects)
                if moved:
                    typer.echo(
                        f"moved {moved.keys} keys, {moved.webhooks} webhooks and the usage of "
                        f"{moved.usage} key/model pairs from Redis to JetStream",
                        err=True,
                    )
                yield Records(durable, redis, bus.subjects)
            except (RedisError, OSError) as exc:
                raise redis_unreachable(settings, exc) from None
    finally:
        await redis.aclose()


def _mesh_options() -> list[inspect.Parameter]:
    def option(name: str, flag: str, help: str) -> inspect.Parameter:
        default = typer.Option(None, flag, help=help, show_default=False)
        return inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=str | None
        )

    return [
        option(
            "nats_url",
            "--nats-url",
            "NATS server of the mesh (default: $AGENTMESH_NATS_URL, else nats://127.0.0.1:4222).",
        ),
        option(
            "redis_url",
            "--redis-url",
            "Redis of the mesh (default: $AGENTMESH_REDIS_URL, else redis://127.0.0.1:6379/0).",
        ),
        option(
            "prefix", "--prefix", "Subject and key prefix (default: $AGENTMESH_PREFIX, else mesh)."
        ),
    ]


def with_mesh_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` with `--nats-url`, `--redis-url` and `--prefix`, which `settings()` applies."""
    signature = inspect.signature(command, eval_str=True)
    options = _mesh_options()
    names = {p.name for p in options}

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _overrides.clear()
        _overrides.update({name: kwargs.pop(name, None) for name in names})
        return command(*args, **kwargs)

    parameters = [*signature.parameters.values(), *options]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    # typer reads the annotations too: the command's own, evaluated, and the options'.
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def add_mesh_options(app: typer.Typer, *, skip: frozenset[str] = frozenset()) -> None:
    """Give every command of `app` and of its groups the mesh options, except those in `skip`
    (`up` starts its own servers) and those that declare a `nats_url` of their own."""
    for info in app.registered_commands:
        name = info.name or (info.callback.__name__ if info.callback else "")
        if info.callback is None or name in skip:
            continue
        if "nats_url" not in inspect.signature(info.callback).parameters:
            info.callback = with_mesh_options(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            add_mesh_options(group.typer_instance)
