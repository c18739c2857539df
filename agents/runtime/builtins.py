"""The built-in tools `bash` and `fetch`, fenced: `bash` runs only where an agent definition (or
the `Runtime`) enables it, in a per-session working directory, with a timeout and an output cap
and without the process's environment; `fetch` caps size and time and refuses private,
loopback and link-local addresses (at every redirect) unless allowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx

from agentmesh.schemas.errors import Forbidden, InvalidMessage, MeshTimeout
from agentmesh.schemas.runtime import ToolConfig, ToolType

MAX_REDIRECTS = 5


@dataclass(slots=True)
class Fences:
    """The limits of the built-in tools (one per runtime; a definition may enable bash)."""

    bash_enabled: bool = False
    workdir_root: Path = field(default_factory=lambda: Path(".agentmesh") / "runtime" / "work")
    bash_timeout: float = 30.0
    output_cap: int = 64 * 1024  # bytes of stdout+stderr kept
    fetch_timeout: float = 15.0
    fetch_max_bytes: int = 1024 * 1024
    fetch_allow_private: bool = False
    # The runtime's secrets (`/v1/env`), given to bash commands as environment variables, as the
    # seed's env.json is (only agents with bash enabled run commands at all).
    env: dict[str, str] = field(default_factory=dict)


BASH = ToolConfig(
    tool_id="bash",
    tool_type=ToolType.BUILTIN,
    name="bash",
    description=(
        "Run a bash command in this session's working directory; returns the exit code and "
        "the output (truncated when long)."
    ),
    parameters={
        "type": "object",
        "properties": {"command": {"type": "string", "description": "The command line."}},
        "required": ["command"],
    },
)

FETCH = ToolConfig(
    tool_id="fetch",
    tool_type=ToolType.BUILTIN,
    name="fetch",
    description="GET a public http(s) URL; returns the status and the body as text.",
    parameters={
        "type": "object",
        "properties": {"url": {"type": "string", "description": "An http or https URL."}},
        "required": ["url"],
    },
)


def workdir(fences: Fences, session_id: str | None) -> Path:
    path = fences.workdir_root / (session_id or "stateless")
    path.mkdir(parents=True, exist_ok=True)
    return path


async def run_bash(command: str, *, cwd: Path, fences: Fences) -> str:
    """Run `command`; the result text (exit code, then output). A timeout kills the whole
    process group the command started and raises `MeshTimeout`."""
    if not fences.bash_enabled:
        raise Forbidden("the bash tool is not enabled for this agent")
    if not isinstance(command, str) or not command.strip():
        raise InvalidMessage("bash needs a 'command'")
    env = {
        **fences.env,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "LANG": "C.UTF-8",
    }
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout kills all it started
    )
    try:
        async with asyncio.timeout(fences.bash_timeout):
            output = await _read_capped(proc, fences.output_cap)
            code = await proc.wait()
    except TimeoutError:
        _kill_group(proc)
        await proc.wait()
        raise MeshTimeout(f"bash: the command ran longer than {fences.bash_timeout:g} s") from None
    except asyncio.CancelledError:
        _kill_group(proc)
        raise
    return f"exit code: {code}\n{output}"


async def _read_capped(proc: asyncio.subprocess.Process, cap: int) -> str:
    assert proc.stdout is not None
    kept = bytearray()
    dropped = 0
    while chunk := await proc.stdout.read(65536):
        room = cap - len(kept)
        kept += chunk[:room]
        dropped += max(0, len(chunk) - room)
    text = kept.decode("utf-8", errors="replace")
    if dropped:
        text += f"\n[output truncated: {dropped} more bytes]"
    return text


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    # The group is the one this process created for the command (start_new_session).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_fetch(url: str, *, fences: Fences, client: httpx.AsyncClient) -> str:
    """GET `url` (following redirects, each one checked); the status line and the body text."""
    if not isinstance(url, str):
        raise InvalidMessage("fetch needs a 'url'")
    try:
        async with asyncio.timeout(fences.fetch_timeout):
            for _ in range(MAX_REDIRECTS + 1):
                await check_public(url, allow_private=fences.fetch_allow_private)
                async with client.stream("GET", url, follow_redirects=False) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > fences.fetch_max_bytes:
                            del body[fences.fetch_max_bytes :]
                            break
                    text = bytes(body).decode(response.encoding or "utf-8", errors="replace")
                    return f"HTTP {response.status_code}\n{text}"
            raise InvalidMessage(f"fetch: more than {MAX_REDIRECTS} redirects")
    except TimeoutError:
        raise MeshTimeout(f"fetch: no answer within {fences.fetch_timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise InvalidMessage(f"fetch failed: {exc}") from None


async def check_public(url: str, *, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), or whose host resolves to a private, loopback,
    link-local, multicast or reserved address (unless `allow_private`).

    Raises:
        InvalidMessage: not an http(s) URL.
        Forbidden: the host is not public.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidMessage(f"fetch takes http(s) URLs, not {url!r}")
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname, port, type=socket.SOCK_STREAM
        )
    except socket.gaierror:
        raise InvalidMessage(f"fetch: cannot resolve {parts.hostname!r}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise Forbidden(
                f"fetch: {parts.hostname} is a private or local address ({address}); "
                "allow it in the runtime's config to reach it",
                details={"host": parts.hostname},
            )
