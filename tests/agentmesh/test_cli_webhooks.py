"""`agentmesh webhooks create/list/delete` as a real process against this test's NATS
(JetStream) and Redis."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest

from agentmesh.broker.bus import Bus
from agentmesh.broker.connections import connect_redis
from agentmesh.broker.durable import DurableState
from agentmesh.broker.servers import free_port
from agentmesh.broker.settings import Settings
from agentmesh.broker.subjects import Subjects
from agentmesh.gateway.webhook_store import WebhookStore
from agentmesh.gateway.webhooks import signature
from tests.agentmesh.test_cli import run_cli


async def stored_secret(settings: Settings, name: str) -> str | None:
    redis = await connect_redis(settings)
    try:
        async with await Bus.connect(settings, name="tests") as bus:
            store = WebhookStore(DurableState(bus.nc), redis, Subjects(settings.prefix))
            hook = await store.get(name)
        return hook.secret if hook else None
    finally:
        await redis.aclose()


async def test_create_prints_a_generated_secret_once_and_list_never_shows_it(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    r = await run_cli(
        agentmesh_exe, "webhooks", "create", "github", "--agent", "triage", env=env_for
    )
    assert r.code == 0, r.err
    secret = await stored_secret(settings, "github")
    assert secret is not None and len(secret) >= 43  # token_urlsafe(32)
    assert f"secret (shown once, store it now): {secret}" in r.out
    assert "X-Mesh-Signature: v2=" in r.out and "/webhooks/github" in r.out
    assert "409 REPLAYED" in r.out

    listed = await run_cli(agentmesh_exe, "webhooks", "list", env=env_for)
    assert listed.code == 0, listed.err
    header, row = listed.out.splitlines()
    assert header.split() == ["NAME", "AGENT", "TOLERANCE", "CREATED"]
    assert row.split()[:3] == ["github", "triage", "300s"]
    as_json = await run_cli(agentmesh_exe, "webhooks", "list", "--json", env=env_for)
    assert [h["name"] for h in json.loads(as_json.out)] == ["github"]
    for out in (listed.out, as_json.out):
        assert secret not in out and "secret" not in out


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the recipe uses openssl")
async def test_the_printed_recipe_computes_the_v2_signature_the_gateway_checks(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    r = await run_cli(agentmesh_exe, "webhooks", "create", "ci", "--agent", "x", env=env_for)
    assert r.code == 0, r.err
    lines = r.out.split("For example:\n", 1)[1].split("  curl ", 1)[0]
    script = lines + '\nprintf \'%s\\n%s\\n%s\' "$ts" "$id" "$sig"\n'
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    ts, delivery_id, sig = out.decode().split("\n")
    secret = await stored_secret(settings, "ci")
    assert secret is not None
    assert signature(secret, ts, delivery_id, b'{"hello": "world"}') == f"v2={sig}"


async def test_create_takes_a_secret_from_the_environment_and_a_tolerance(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    env = env_for | {"AGENTMESH_WEBHOOK_SECRET": "a-shared-secret-from-the-vendor"}
    r = await run_cli(
        agentmesh_exe,
        "webhooks", "create", "stripe", "--agent", "billing", "--tolerance", "60", "--json",
        env=env,
    )  # fmt: skip
    assert r.code == 0, r.err
    created = json.loads(r.out)
    assert created["secret"] == "a-shared-secret-from-the-vendor"
    assert created["agent_id"] == "billing" and created["tolerance_seconds"] == 60
    assert await stored_secret(settings, "stripe") == "a-shared-secret-from-the-vendor"


async def test_delete_removes_the_webhook(
    agentmesh_exe: str, env_for: dict[str, str], settings: Settings
) -> None:
    assert (
        await run_cli(agentmesh_exe, "webhooks", "create", "ci", "-a", "builds", env=env_for)
    ).code == 0
    r = await run_cli(agentmesh_exe, "webhooks", "delete", "ci", env=env_for)
    assert r.code == 0 and "deleted webhook ci" in r.out
    assert await stored_secret(settings, "ci") is None
    listed = await run_cli(agentmesh_exe, "webhooks", "list", env=env_for)
    assert listed.out.strip() == "no webhooks"


async def test_bad_input_is_one_clear_line_and_exit_code_1(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    cases = [
        (("create", "bad.name", "--agent", "triage"), "invalid webhook name"),
        (("create", "ok", "--agent", "a*b"), "invalid agent id"),
        (("create", "ok", "--agent", "triage", "--secret", "short"), "secret too short"),
        (("create", "ok", "--agent", "triage", "--tolerance", "0"), "tolerance"),
        (("delete", "nobody"), "no webhook named 'nobody'"),
    ]
    for args, expected in cases:
        r = await run_cli(agentmesh_exe, "webhooks", *args, env=env_for)
        assert r.code == 1, (args, r.out, r.err)
        assert expected in r.err and "Traceback" not in r.err
        assert len(r.err.strip().splitlines()) == 1, r.err

    assert (
        await run_cli(agentmesh_exe, "webhooks", "create", "ok", "-a", "x", env=env_for)
    ).code == 0
    again = await run_cli(agentmesh_exe, "webhooks", "create", "ok", "-a", "y", env=env_for)
    assert again.code == 1 and "already exists" in again.err


async def test_nats_down_is_a_clear_error_not_a_traceback(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    env = env_for | {"AGENTMESH_NATS_URL": f"nats://127.0.0.1:{free_port()}"}
    for args in (("create", "x", "-a", "y"), ("list",), ("delete", "x")):
        r = await run_cli(agentmesh_exe, "webhooks", *args, env=env)
        assert r.code == 1 and "cannot reach NATS" in r.err, r.err
        assert "Traceback" not in r.err


async def test_redis_down_is_a_clear_error_not_a_traceback(
    agentmesh_exe: str, env_for: dict[str, str]
) -> None:
    env = env_for | {"AGENTMESH_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (("create", "x", "-a", "y"), ("list",), ("delete", "x")):
        r = await run_cli(agentmesh_exe, "webhooks", *args, env=env)
        assert r.code == 1 and "cannot reach Redis" in r.err, r.err
        assert "Traceback" not in r.err
