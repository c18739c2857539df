"""`agentmesh channels list|test` as a real process: the mesh file's channels, and their
credentials checked against a fake Slack (a real HTTP server)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tests.agentmesh.test_cli import run_cli
from tests.channels.fake_slack import SIGNING_SECRET, TOKEN, FakeSlack


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack(users={}).start()
    yield fake
    await fake.stop()


def mesh_file(tmp_path: Path, slack: FakeSlack, token: str = TOKEN) -> Path:
    doc = {
        "channels": [
            {
                "name": "team",
                "kind": "slack",
                "bot_token": "${TEAM_BOT_TOKEN}",
                "signing_secret": SIGNING_SECRET,
                "base_url": slack.base_url,
                "agent": "echo",
            },
            {
                "name": "support",
                "kind": "lark",
                "app_id": "cli_1",
                "app_secret": "s",
                "verification_token": "v",
                "agent_type": "assistant",
                "chats": {"oc_1": "sales"},
                "mode": "long_connection",
            },
        ]
    }
    path = tmp_path / "mesh.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_list_shows_every_channel_without_its_secrets(
    tmp_path: Path, slack: FakeSlack, agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    file = mesh_file(tmp_path, slack)
    env = {**env_for, "TEAM_BOT_TOKEN": TOKEN}
    listed = await run_cli(agentmesh_exe, "channels", "list", "-f", str(file), "--json", env=env)
    assert listed.code == 0, listed.err
    rows = json.loads(listed.out)
    assert [(r["kind"], r["name"], r["mode"]) for r in rows] == [
        ("slack", "team", "webhook"),
        ("lark", "support", "long_connection"),
    ]
    assert rows[0]["events"] == "/channels/slack/team/events" and rows[1]["events"] == "-"
    assert rows[1]["answers"] == "type:assistant (+1 chats)"
    assert rows[1]["api"] == "https://open.larksuite.com"
    assert TOKEN not in listed.out and SIGNING_SECRET not in listed.out
    table = await run_cli(agentmesh_exe, "channels", "list", "-f", str(file), env=env)
    assert table.out.splitlines()[0].split() == ["KIND", "NAME", "MODE", "ANSWERS", "EVENTS", "API"]


async def test_test_checks_the_credentials_against_the_platform(
    tmp_path: Path, slack: FakeSlack, agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    file = mesh_file(tmp_path, slack)
    ok = await run_cli(
        agentmesh_exe,
        "channels",
        "test",
        "-f",
        str(file),
        "team",
        env={**env_for, "TEAM_BOT_TOKEN": TOKEN},
    )
    assert ok.code == 0, ok.err
    assert ok.out.startswith("slack/team: ok, bot ")
    bad = await run_cli(
        agentmesh_exe,
        "channels",
        "test",
        "-f",
        str(file),
        "team",
        env={**env_for, "TEAM_BOT_TOKEN": "xoxb-wrong"},
    )
    assert bad.code == 1 and "slack/team: FAILED" in bad.err and "invalid_auth" in bad.err
    unset = await run_cli(agentmesh_exe, "channels", "list", "-f", str(file), env=env_for)
    assert unset.code == 1 and "TEAM_BOT_TOKEN" in unset.err
    missing = await run_cli(
        agentmesh_exe,
        "channels",
        "test",
        "-f",
        str(file),
        "nobody",
        env={**env_for, "TEAM_BOT_TOKEN": TOKEN},
    )
    assert missing.code == 1 and "no channel 'nobody'" in missing.err
