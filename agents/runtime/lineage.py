"""Where an inference sits in a delegation tree: the delegate calls that lead to it (the
`path` its events carry), its depth, and the agents above it (a cycle is refused)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentmesh.schemas.errors import InvalidMessage

DEFAULT_MAX_DEPTH = 3
METADATA_KEY = "runtime"  # mesh Message metadata: {"depth": n, "agents": [...]} of a delegation


@dataclass(frozen=True, slots=True)
class Lineage:
    path: list[str] = field(default_factory=list)  # delegate call ids from the root
    depth: int = 0  # 0 for the root inference
    agents: tuple[str, ...] = ()  # agent ids from the root down to this one
    max_depth: int = DEFAULT_MAX_DEPTH

    def child(self, call_id: str, agent_id: str | None) -> Lineage:
        """The lineage of a delegation from here.

        Raises:
            InvalidMessage: the depth limit is reached, or `agent_id` is already above.
        """
        if self.depth + 1 > self.max_depth:
            raise InvalidMessage(
                f"delegation depth limit reached ({self.max_depth})",
                details={"max_depth": self.max_depth},
            )
        if agent_id is not None and agent_id in self.agents:
            chain = " → ".join([*self.agents, agent_id])
            raise InvalidMessage(
                f"delegation cycle: {chain}", details={"agents": [*self.agents, agent_id]}
            )
        return Lineage(
            path=[*self.path, call_id],
            depth=self.depth + 1,
            agents=(*self.agents, agent_id) if agent_id else self.agents,
            max_depth=self.max_depth,
        )

    def to_metadata(self) -> dict[str, Any]:
        return {"depth": self.depth, "agents": list(self.agents), "max_depth": self.max_depth}

    @classmethod
    def from_request(cls, value: dict[str, Any]) -> Lineage:
        """The lineage an ad-hoc sub-agent's request carries (`delegation`, with its path)."""
        path = value.get("path")
        raw = value.get("agents")
        agents = tuple(a for a in raw if isinstance(a, str)) if isinstance(raw, list) else ()
        depth = value.get("depth")
        limit = value.get("max_depth")
        return cls(
            path=[p for p in path if isinstance(p, str)] if isinstance(path, list) else [],
            depth=depth if isinstance(depth, int) and depth >= 0 else 0,
            agents=agents,
            max_depth=limit if isinstance(limit, int) and limit >= 0 else DEFAULT_MAX_DEPTH,
        )

    @classmethod
    def from_metadata(cls, value: Any, *, agent_id: str, max_depth: int) -> Lineage:
        """The lineage a delegated mesh call carries (none: a root call to `agent_id`)."""
        depth, agents, limit = 0, (), max_depth
        if isinstance(value, dict):
            if isinstance(value.get("depth"), int) and value["depth"] >= 0:
                depth = value["depth"]
            raw = value.get("agents")
            if isinstance(raw, list):
                agents = tuple(a for a in raw if isinstance(a, str))
            if isinstance(value.get("max_depth"), int):
                limit = min(max_depth, value["max_depth"])
        if agent_id not in agents:
            agents = (*agents, agent_id)
        return cls(path=[], depth=depth, agents=agents, max_depth=limit)
