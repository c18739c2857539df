"""`agent.run()` as a program's main (`python researcher.py`): it logs like the `agentmesh` CLI,
and a mesh it cannot reach is one line on stderr and exit code 1, never a traceback."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

from agentmesh.broker.servers import free_port

RESEARCHER = """
from agentmesh import Agent

agent = Agent("researcher", name="Research Agent")

@agent.handler
async def handle(msg, ctx):
    return "found: " + msg.text

agent.run()
"""
ROOT = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d INFO    agentmesh\.agents\.agent: agent researcher online")


async def run_script(path: Path, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(path),
        env=env,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_a_script_whose_redis_is_down_fails_with_one_line(
    env_for: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "researcher.py"
    script.write_text(RESEARCHER)
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {**env_for, "AGENTMESH_REDIS_URL": url, "AGENTMESH_CONNECT_TIMEOUT": "0.5"}
    proc = await run_script(script, env)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    text = err.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    assert text.count("\n") == 1 and text.startswith("error: ") and url in text


async def test_a_script_logs_like_the_cli_and_stops_cleanly_on_sigterm(
    env_for: dict[str, str], tmp_path: Path
) -> None:
    script = tmp_path / "researcher.py"
    script.write_text(RESEARCHER)
    proc = await run_script(script, env_for)
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(30):
            while not LOG_LINE.match(line := (await proc.stderr.readline()).decode()):
                assert line, "the script exited before it was online"
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest = (await proc.stderr.read()).decode()
            assert await proc.wait() == 0, rest
        assert "agent researcher stopped" in rest and "Traceback" not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
