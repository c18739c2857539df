"""The mesh file's `a2a:` section: the outside A2A agents a bridge serves as mesh agents.

    a2a:
      agents:
        - agent_id: weather                  # its id on the mesh
          url: https://weather.example.com   # the agent's base URL (its card is under it)
          headers: {Authorization: "Bearer ${WEATHER_TOKEN}"}   # sent with every request
          # card_path: /.well-known/agent-card.json              # the default
          # timeout: 600                     # seconds one remote call may take

`agentmesh worker a2a -f mesh.yaml` serves them (`--url URL --agent-id ID` serves one without a
file); `${VAR}` and `${VAR:-default}` are expanded everywhere.
"""

from __future__ import annotations

from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentmesh.broker.subjects import ID_PATTERN

DEFAULT_TIMEOUT = 600.0  # seconds one remote call may take (the mesh caller's deadline ends it too)
CONNECT_TIMEOUT = 5.0  # seconds to open a connection to the outside agent


class OutsideAgent(BaseModel):
    """One outside A2A agent and the mesh agent id it is served under."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str = Field(pattern=ID_PATTERN, description="Its agent id on the mesh.")
    url: str = Field(description="The agent's base URL; its card is at url + card_path.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP headers sent with every request (credentials)."
    )
    card_path: str = Field(AGENT_CARD_WELL_KNOWN_PATH, description="Where the card is, under url.")
    timeout: float = Field(DEFAULT_TIMEOUT, gt=0, le=86400, description="Seconds per remote call.")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")


class A2ASection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[OutsideAgent] = Field(default_factory=list)
    retry_max: float = Field(
        30.0, gt=0, le=3600, description="Longest wait between tries to read an agent's card."
    )

    @field_validator("agents")
    @classmethod
    def _unique(cls, agents: list[OutsideAgent]) -> list[OutsideAgent]:
        seen: set[str] = set()
        for agent in agents:
            if agent.agent_id in seen:
                raise ValueError(f"agent_id {agent.agent_id!r} is listed twice")
            seen.add(agent.agent_id)
        return agents


def parse_headers(items: list[str]) -> dict[str, str]:
    """`K=V` command-line headers as a map.

    Raises:
        ValueError: an item without `=` or with an empty name.
    """
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--header {item!r}: use NAME=VALUE")
        out[name.strip()] = value
    return out
