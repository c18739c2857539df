"""The SDK's calls refuse what the mesh cannot carry with `InvalidMessage`, before any request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agentmesh.agents.client import MeshClient
from agentmesh.schemas.errors import InvalidMessage

CALLS: dict[str, tuple[Callable[[MeshClient], Awaitable[Any]], str]] = {
    "a surrogate tool name": (lambda mesh: mesh.tools.call("time", "\ud800"), "tool"),
    "surrogate tool arguments": (
        lambda mesh: mesh.tools.call("time", "now", {"tz": "a\ud800"}),
        "arguments.tz",
    ),
    "a 2**70 tool argument": (
        lambda mesh: mesh.tools.call("time", "now", {"n": 2**70}),
        "arguments.n",
    ),
    "a surrogate chat message": (
        lambda mesh: mesh.llm("m").chat([{"role": "user", "content": "a\ud800"}]),
        "messages.0.content",
    ),
    "a surrogate message text": (lambda mesh: mesh.ask("anyone", "a\ud800"), "content.0.text"),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_an_sdk_call_with_a_value_the_mesh_cannot_carry_raises_invalid_message(
    mesh: MeshClient, call: str
) -> None:
    make, names = CALLS[call]
    with pytest.raises(InvalidMessage) as raised:
        await make(mesh)
    assert names in raised.value.message
