"""`agentmesh status` (the whole mesh as one table) and `agentmesh ps` (every instance)."""

from __future__ import annotations

import json
import time
from typing import Any

import typer

from agentmesh import cli_support as support
from agentmesh.schemas.service import InvalidRecord, ServiceKind, ServiceRecord, summarize

_ORDER = [
    ServiceKind.GATEWAY,
    ServiceKind.EXECUTOR,
    ServiceKind.LLM_WORKER,
    ServiceKind.MCP_WORKER,
    ServiceKind.AGENT,
]
_WHAT = {
    ServiceKind.GATEWAY: "",
    ServiceKind.EXECUTOR: "",
    ServiceKind.LLM_WORKER: "models",
    ServiceKind.MCP_WORKER: "servers",
    ServiceKind.AGENT: "agents",
}


async def _probe(settings: Any) -> dict[str, Any]:
    """NATS, Redis and the registry, each reported even when another is down."""
    from agentmesh.broker.bus import Bus
    from agentmesh.broker.connections import connect_redis
    from agentmesh.broker.registry import Registry
    from agentmesh.broker.subjects import Subjects
    from agentmesh.schemas.errors import ConnectionFailed

    out: dict[str, Any] = {"prefix": settings.prefix}
    try:
        bus = await Bus.connect(settings, name="agentmesh-status")
        try:
            out["nats"] = {
                "url": settings.nats_url,
                "ok": True,
                "version": bus.server_version,
                "jetstream": await bus.jetstream_enabled(),
            }
        finally:
            await bus.close()
    except ConnectionFailed as exc:
        out["nats"] = {"url": settings.nats_url, "ok": False, "error": exc.message}
    try:
        redis = await connect_redis(settings)
        try:
            info = await redis.info("server")
            version = info.get("redis_version")
            out["redis"] = {"url": settings.redis_url, "ok": True, "version": version}
            registry = Registry(
                redis, Subjects(settings.prefix), timeout=settings.heartbeat_timeout
            )
            out["instances"] = await registry.instances()
        finally:
            await redis.aclose()
    except ConnectionFailed as exc:
        out["redis"] = {"url": settings.redis_url, "ok": False, "error": exc.message}
    return out


def _connections(result: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = []
    for name in ("nats", "redis"):
        s = result[name]
        if s["ok"]:
            extra = f"{s['url']}  version {s.get('version')}"
            if name == "nats":
                extra += ", JetStream " + ("on" if s["jetstream"] else "off")
        else:
            extra = s["error"]
        rows.append((name, "ok" if s["ok"] else "DOWN", "", extra))
    return rows


def _age(ts: float) -> str:
    seconds = max(0.0, time.time() - ts)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _serves(record: ServiceRecord) -> str:
    if record.kind == ServiceKind.GATEWAY:
        return str(record.detail.get("listen") or "")
    return ", ".join(sorted(record.serves.names()))


def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the whole mesh: NATS, Redis, gateways, executors, LLM workers and their models, MCP
    workers and their servers, agents and their instances. Exits 1 if NATS or Redis is down."""
    settings = support.settings()
    result = support.run(lambda: _probe(settings))
    records: list[ServiceRecord | InvalidRecord] = result.pop("instances", [])
    summary = summarize(records)
    if as_json:
        result["services"] = {k: v.model_dump() for k, v in summary.items()}
        typer.echo(json.dumps(result, indent=2))
    else:
        rows: list[tuple[str, ...]] = [("COMPONENT", "STATE", "LOAD", "DETAIL")]
        rows += _connections(result)
        kinds = [k for k in _ORDER if k in summary] + sorted(set(summary) - set(_ORDER))
        for kind in kinds:
            s = summary[kind]
            if kind == "invalid":
                rows.append(("invalid", f"{s.instances} records", "", "see `agentmesh ps`"))
                continue
            what = _WHAT.get(kind, "serves")
            if kind == ServiceKind.GATEWAY:
                gateways = [r for r in records if isinstance(r, ServiceRecord) and r.kind == kind]
                detail = ", ".join(x for x in map(_serves, gateways) if x)
            elif kind == ServiceKind.AGENT:
                per_agent: dict[str, int] = {}
                for r in records:
                    if isinstance(r, ServiceRecord) and r.kind == kind:
                        per_agent[r.service_id] = per_agent.get(r.service_id, 0) + 1
                detail = "agents: " + ", ".join(f"{a} ({n})" for a, n in sorted(per_agent.items()))
            else:
                detail = f"{what}: {', '.join(s.serves) or '-'}" if what else ""
            load = f"{s.in_flight} in flight, {s.served} served"
            rows.append((kind, f"{s.instances} up", load, detail))
        if "redis" in result and result["redis"]["ok"] and not records:
            detail = f"nothing registered under prefix {settings.prefix}"
            rows.append(("services", "none", "", detail))
        support.table(rows)
        if result["redis"]["ok"]:
            agents = summary.get(ServiceKind.AGENT)
            typer.echo(
                f"prefix {settings.prefix}: {len(agents.serves) if agents else 0} agents online, "
                f"{len(records)} service instances"
            )
    if not (result["nats"]["ok"] and result["redis"]["ok"]):
        raise typer.Exit(1)


def ps(
    kind: str | None = typer.Option(None, "--kind", "-k", help="Only this kind (e.g. agent)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List every live service instance of the mesh (invalid registry records too)."""
    from agentmesh.agents.client import MeshClient

    async def main() -> list[ServiceRecord | InvalidRecord]:
        async with MeshClient.connect(support.settings()) as mesh:
            return await mesh.services(kind)

    found = support.run(main)
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in found], indent=2))
        return
    if not found:
        typer.echo("no service instances online" + (f" of kind {kind}" if kind else ""))
        return
    rows: list[tuple[str, ...]] = [
        ("KIND", "ID", "INSTANCE", "HOST", "PID", "UP", "BEAT", "IN FLIGHT", "SERVED", "SERVES")
    ]
    for r in found:
        if isinstance(r, InvalidRecord):
            beat = _age(r.last_heartbeat)
            rows.append(("invalid", "", r.instance_id, "", "", "", beat, "", "", r.error[:80]))
            continue
        rows.append(
            (
                r.kind,
                r.service_id,
                r.instance_id,
                r.host or "",
                str(r.pid or ""),
                _age(r.started_at),
                _age(r.last_heartbeat),
                str(r.load.in_flight),
                str(r.load.served),
                _serves(r),
            )
        )
    support.table(rows)
