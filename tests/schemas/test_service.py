"""Service records: what a kind's summary counts as served."""

from __future__ import annotations

from agentmesh.schemas.service import InvalidRecord, Serves, ServiceRecord, summarize


def agent(agent_id: str, instance: str, agent_type: str | None = None) -> ServiceRecord:
    return ServiceRecord(
        kind="agent",
        service_id=agent_id,
        instance_id=instance,
        started_at=1.0,
        serves=Serves(agents=[agent_id], agent_types=[agent_type] if agent_type else []),
    )


def test_agent_types_index_agents_but_are_not_names_they_serve() -> None:
    assert Serves(agents=["pa-1"], agent_types=["personal_assistant"]).names() == ["pa-1"]
    summary = summarize(
        [
            agent("pa-1", "i1", "personal_assistant"),
            agent("pa-2", "i2", "personal_assistant"),
            agent("pa-1", "i3", "personal_assistant"),
            InvalidRecord(key="p:svc:x", error="not JSON", instance_id="x", last_heartbeat=1.0),
        ]
    )
    assert summary["agent"].serves == ["pa-1", "pa-2"] and summary["agent"].instances == 3
    assert summary["invalid"].instances == 1
