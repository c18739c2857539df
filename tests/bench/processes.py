"""Child processes of the gateway benchmark (a gateway, the echo agent, load generators) and
what `/proc` says about them: CPU seconds and resident memory."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import httpx

from agentmesh.agents.client import MeshClient
from agentmesh.broker.servers import _die_with_parent, free_port
from agentmesh.broker.settings import Settings
from tests.bench.measure import Call, Result, measure, progress, run
from tests.waiting import until

BIN = Path(sys.executable).parent  # the venv's bin: its `agentmesh` and `python`
ROOT = Path(__file__).resolve().parents[2]  # children run here, so `tests.bench` imports
TICK = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT = 10.0


class ChildError(RuntimeError):
    """A child process exited or did not become ready; the message points at its log."""


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child's `Settings.from_env()` equal `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    for f in fields(settings):
        env[f"AGENTMESH_{f.name.upper()}"] = str(getattr(settings, f.name))
    return env


class Child:
    """One child process this benchmark started; `stop()` ends exactly that process."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path,
        talk: bool = False,
    ) -> None:
        """With `talk`, stdin and stdout are pipes (see `say` and `hear`); stderr goes to `log`."""
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=ROOT,
                stdout=subprocess.PIPE if talk else out,
                stderr=out if talk else subprocess.STDOUT,
                stdin=subprocess.PIPE if talk else subprocess.DEVNULL,
                text=talk,
                start_new_session=True,  # a Ctrl-C reaches the bench, which stops its children
                preexec_fn=_die_with_parent,  # and none outlives a bench that was killed
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise ChildError(f"{self.name} exited with code {self.proc.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        """The end of the child's log (the log is gone with the bench's temporary directory)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {self.log})"

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None, "started without talk=True"
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    async def hear(self, *, timeout: float) -> dict[str, Any]:
        """The next JSON line the child prints."""
        assert self.proc.stdout is not None, "started without talk=True"
        try:
            async with asyncio.timeout(timeout):
                line = await asyncio.to_thread(self.proc.stdout.readline)
        except TimeoutError:
            raise ChildError(f"{self.name} said nothing for {timeout}s:\n{self.tail()}") from None
        if not line:
            self.proc.wait()
            self.check_running()
        return json.loads(line)

    def stop(self) -> None:
        """SIGTERM, wait, then SIGKILL, by the Popen we hold."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@dataclass(frozen=True, slots=True)
class Gateway:
    child: Child
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


def launch_gateway(env: Mapping[str, str], logs: Path) -> Gateway:
    """`agentmesh gateway --port <free>`, started; see `gateway_ready`."""
    port = free_port()
    argv = [str(BIN / "agentmesh"), "gateway", "--port", str(port)]
    return Gateway(Child("gateway", argv, env=env, log=logs / "gateway.log"), port)


async def started(
    check: Callable[[], Awaitable[bool]],
    children: Sequence[Child],
    *,
    timeout: float,
    what: str,
) -> None:
    """Return once `check` says the children are up (their start-up: nothing to await).

    Raises:
        ChildError: a child exited meanwhile, or `timeout` passed; with the children's logs.
    """

    async def up() -> bool:
        for child in children:
            child.check_running()
        return await check()

    try:
        await until(up, timeout=timeout, what=what, every=0.05)
    except AssertionError:
        tails = "\n".join(c.tail() for c in children)
        raise ChildError(f"not within {timeout:g} s: {what}:\n{tails}") from None


async def answers_200(http: httpx.AsyncClient, url: str) -> bool:
    """Whether GET `url` answers 200 (False while nothing listens there yet)."""
    try:
        return (await http.get(url)).status_code == 200
    except httpx.TransportError:
        return False


async def gateway_ready(gateway: Gateway, *, timeout: float = 20.0) -> None:
    """Return once GET /readyz answers 200 (NATS and Redis connected)."""
    async with httpx.AsyncClient(base_url=gateway.url, timeout=1.0) as http:
        await started(
            lambda: answers_200(http, "/readyz"),
            [gateway.child],
            timeout=timeout,
            what="the gateway ready",
        )


def launch_echo(env: Mapping[str, str], logs: Path) -> Child:
    """`agentmesh agent run agentmesh.agents.examples.echo:agent`, started; see `agent_online`."""
    argv = [str(BIN / "agentmesh"), "agent", "run", "agentmesh.agents.examples.echo:agent"]
    return Child("echo agent", argv, env=env, log=logs / "echo.log")


async def agent_online(
    mesh: MeshClient, agent_id: str, child: Child, *, timeout: float = 20.0
) -> None:
    """Return once `agent_id` (run by `child`) is online."""

    async def online() -> bool:
        return await mesh.agent(agent_id) is not None

    await started(online, [child], timeout=timeout, what=f"{agent_id} online")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces; the fields after it are space-separated.
        after = f.read().rsplit(")", 1)[1].split()
    return (int(after[11]) + int(after[12])) / TICK  # utime, stime: fields 14 and 15


def machine_cpu_seconds() -> float:
    """CPU time all processes of the machine have used so far (busy time of all cores)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    guest = sum(ticks[8:])  # guest time is also counted in user time
    return (sum(ticks) - idle - guest) / TICK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise ChildError(f"no VmRSS for pid {pid}")


MACHINE = "whole machine"


class CpuMeter:
    """CPU use of some processes, and of the whole machine, over a stretch of wall time; in %
    of one core (so up to 100 × cores for the machine)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self._start = time.monotonic()
        self._cpu = self._read()

    def _read(self) -> dict[str, float]:
        used = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        used[MACHINE] = machine_cpu_seconds()
        return used

    def percent(self) -> dict[str, float]:
        """Since the meter was made: each process's CPU %, then the whole machine's."""
        now, wall = self._read(), time.monotonic() - self._start
        return {name: 100 * (now[name] - self._cpu[name]) / wall for name in now}


@dataclass(frozen=True, slots=True)
class Throughput:
    """One throughput run, and the CPU it cost."""

    result: Result
    cpu: dict[str, float]  # % of one core over the run, per process and machine-wide


async def metered(
    path: str,
    call: Call,
    pids: Mapping[str, int],
    *,
    requests: int,
    concurrency: int,
    warm: int = 0,
) -> Throughput:
    """`warm` calls first (not measured), then `requests` calls `concurrency` at a time, with
    the CPU of `pids` and of the whole machine metered over them; one progress line."""
    if warm:
        await run(call, requests=warm, concurrency=concurrency)
    meter = CpuMeter(pids)
    result = await measure(path, call, requests=requests, concurrency=concurrency)
    cpu = meter.percent()
    busy = ", ".join(f"{k} {v:.0f}%" for k, v in cpu.items() if v >= 5)
    progress(
        f"c={concurrency} {path}: {result.rps:,.0f}/s, p50 {result.p50_ms:.2f} ms, "
        f"p99 {result.p99_ms:.2f} ms; CPU {busy}"
    )
    return Throughput(result, cpu)


def raise_nofile(need: int) -> int:
    """Raise this process's soft open-files limit to at least `need` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        limit = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        soft = limit
    return soft


@contextmanager
def stopping(children: list[Child]) -> Iterator[list[Child]]:
    """Stop every child appended to `children`, last started first, however the block ends."""
    try:
        yield children
    finally:
        for child in reversed(children):
            child.stop()
