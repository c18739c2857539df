"""An outside agent's A2A card as the mesh card of the agent the bridge serves.

name → `agent_name`, description, version, skill ids → `capabilities`; the rest under
`metadata["a2a"]`, where the gateway's own A2A server reads it back (gateway/a2a/cards.py), so the
agent re-served over A2A shows the same skills and modes:

    metadata.a2a = {url, skills: [AgentSkill as JSON], input_modes, output_modes,
                    capabilities: {streaming, pushNotifications, ...}, provider?}
"""

from __future__ import annotations

from typing import Any

from a2a.types.a2a_pb2 import AgentCard as A2ACard
from google.protobuf.json_format import MessageToDict

from agentmesh.schemas.agent import AgentCard

VIA = "a2a"  # the registry records' `via`: an agent reached through a bridge


def mesh_card(agent_id: str, card: A2ACard, *, url: str) -> AgentCard:
    """The mesh card of `agent_id`, served from the outside agent at `url` whose card is `card`."""
    a2a: dict[str, Any] = {
        "url": url,
        "skills": [MessageToDict(skill) for skill in card.skills],
        "input_modes": list(card.default_input_modes),
        "output_modes": list(card.default_output_modes),
        "capabilities": MessageToDict(card.capabilities),
    }
    if card.HasField("provider"):
        a2a["provider"] = MessageToDict(card.provider)
    return AgentCard(
        agent_id=agent_id,
        agent_name=card.name or agent_id,
        capabilities=[skill.id for skill in card.skills if skill.id],
        description=card.description or None,
        version=card.version or None,
        metadata={"a2a": a2a},
    )
