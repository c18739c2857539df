"""The mesh's tool catalog, merged from the MCP workers' registry records.

Each MCP worker announces its servers in its record's `detail.servers`:
`{server name: {state, transport, tools, error, restarts}}`. A server is `up` while any live
worker has it up, and its tools are taken from one of those workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agentmesh.schemas.service import InvalidRecord, ServiceKind, ServiceRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CatalogTool:
    server: str
    tool: dict[str, Any]  # the MCP Tool object (name, description, inputSchema, ...)

    @property
    def name(self) -> str:
        """The tool's own name on its server."""
        return self.tool["name"]

    @property
    def federated_name(self) -> str:
        """`{server}_{tool}`: the name the gateway's `/mcp` lists."""
        return f"{self.server}_{self.name}"


@dataclass(slots=True)
class CatalogServer:
    name: str
    state: str  # "up" when at least one worker has it connected, else "down"
    workers: int = 0  # live workers that have it up
    tools: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # why it is down (from a worker that has it down)


@dataclass(slots=True)
class Catalog:
    servers: dict[str, CatalogServer] = field(default_factory=dict)

    @classmethod
    def of(cls, records: list[ServiceRecord | InvalidRecord]) -> Catalog:
        """The catalog announced by the live MCP workers among `records`."""
        catalog = cls()
        for record in records:
            if not isinstance(record, ServiceRecord) or record.kind != ServiceKind.MCP_WORKER:
                continue
            servers = record.detail.get("servers")
            if not isinstance(servers, dict):
                continue
            for name, info in servers.items():
                if isinstance(name, str) and isinstance(info, dict):
                    _merge(catalog, name, info)
        return catalog

    def tools(self) -> list[CatalogTool]:
        """Every tool of every server that is up, by server then tool name."""
        return [
            CatalogTool(server.name, tool)
            for server in sorted(self.servers.values(), key=lambda s: s.name)
            if server.state == "up"
            for tool in sorted(server.tools, key=lambda t: t["name"])
        ]

    def find(self, server: str, tool: str) -> CatalogTool | None:
        entry = self.servers.get(server)
        if entry is None:
            return None
        found = next((t for t in entry.tools if t.get("name") == tool), None)
        return None if found is None else CatalogTool(server, found)

    def federated(self) -> dict[str, CatalogTool]:
        """`{server}_{tool}` → tool; on a clash (`a_b`+`c` vs `a`+`b_c`) the first server wins."""
        out: dict[str, CatalogTool] = {}
        for tool in self.tools():
            if tool.federated_name in out:
                logger.warning("two tools federate to %s; keeping the first", tool.federated_name)
                continue
            out[tool.federated_name] = tool
        return out


def _merge(catalog: Catalog, name: str, info: dict[str, Any]) -> None:
    entry = catalog.servers.setdefault(name, CatalogServer(name=name, state="down"))
    if info.get("state") == "up":
        if entry.state != "up":
            tools = info.get("tools")
            entry.tools = [
                t
                for t in (tools if isinstance(tools, list) else [])
                if isinstance(t, dict) and isinstance(t.get("name"), str)
            ]
            entry.error = None
        entry.state = "up"
        entry.workers += 1
    elif entry.state != "up":
        entry.error = info.get("error") or info.get("state")
