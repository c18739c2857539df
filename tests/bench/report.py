"""Report benchmark results: markdown tables, the machine, and sections of docs/BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from agentmesh.broker.servers import find_nats_server
from tests.bench.measure import Result, scale

DOCS = Path(__file__).resolve().parents[2] / "docs" / "BENCHMARKS.md"

HEADER = """\
# Benchmarks

Run them with `make bench` (it runs `.venv/bin/python -m tests.bench`; `--only bus`,
`--only gateway`, `--only llm`, `--only mcp`, `--only tasks`, `--only runtime` or `--only a2a`
runs one section, `--no-write` only prints; set `BENCH_SCALE=0.2` for a quick run with fewer
requests and shorter windows, `BENCH_WS_AGENTS=N` for another number of WebSocket agents). Each
path is measured side by side with its baseline in the same run, so the ratios are what to compare
across machines. The numbers below are from one run on the machine described in each section.

Each section is rewritten by its benchmark between its `<!-- bench:NAME:start -->` and
`<!-- bench:NAME:end -->` markers; text outside the markers is kept.
"""


def _first(path: str, pattern: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError:
        return "unknown"
    found = re.search(pattern, text, re.MULTILINE)
    return found.group(1).strip().strip('"') if found else "unknown"


def cpus() -> int:
    return len(os.sched_getaffinity(0))  # what `nproc` prints


def machine() -> str:
    """One line describing where the numbers come from."""
    model = _first("/proc/cpuinfo", r"^model name\s*:\s*(.+)$")
    mem_kb = _first("/proc/meminfo", r"^MemTotal:\s*(\d+)")
    memory = f"{int(mem_kb) / 1024**2:.1f} GiB" if mem_kb.isdigit() else "unknown"
    system = _first("/etc/os-release", r"^PRETTY_NAME=(.+)$")
    nats_version = subprocess.run(
        [find_nats_server(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{cpus()} CPUs ({model}), {memory} RAM, {system}, "
        f"Python {platform.python_version()}, {nats_version or 'nats-server (unknown version)'}"
    )


def revision() -> str:
    """The commit measured, and whether tracked files differed from it."""
    root = DOCS.parents[1]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # read only: never refresh the index

    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["git", *args], cwd=root, env=env, capture_output=True, text=True, check=False
        )

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "unknown revision"
    dirty = git("diff", "--quiet", "HEAD", "--").returncode != 0
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def command() -> str:
    """How this run was started, as markdown."""
    factor = scale()
    env = "" if factor == 1.0 else f"BENCH_SCALE={factor:g} "
    ws_agents = os.environ.get("BENCH_WS_AGENTS", "")
    env += f"BENCH_WS_AGENTS={ws_agents} " if ws_agents else ""
    args = "".join(f" {a}" for a in sys.argv[1:] if a != "--no-write")
    if args:
        return f"`{env}.venv/bin/python -m tests.bench{args}`"
    return f"`{env}make bench`, that is `{env}.venv/bin/python -m tests.bench`"


def table(results: list[Result], baseline: str, *, short: str = "raw") -> str:
    """Results as a markdown table; each non-baseline row is compared with the baseline row
    of the same concurrency (`short` names the baseline in the header)."""
    rows = [
        "| path | concurrency | requests | req/s | p50 ms | p99 ms "
        f"| req/s vs {short} | added p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r.concurrency: r for r in results if r.path == baseline}
    for r in results:
        ratio = added = ""
        if r.path != baseline and r.concurrency in base:
            ratio = f"{r.rps / base[r.concurrency].rps:.2f}×"
            added = f"{r.p50_ms - base[r.concurrency].p50_ms:+.3f}"
        rows.append(
            f"| {r.path} | {r.concurrency} | {r.requests:,} | {r.rps:,.0f} | "
            f"{r.p50_ms:.3f} | {r.p99_ms:.3f} | {ratio} | {added} |"
        )
    return "\n".join(rows)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def today() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def write_section(name: str, body: str, path: Path = DOCS) -> None:
    """Put `body` between the `name` markers of `path`, keeping everything else."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def wrap(markdown: str, width: int = 100) -> str:
    """Fill prose paragraphs and list items to `width`; leave headings and tables alone."""
    blocks = []
    for block in markdown.strip().split("\n\n"):
        if block.startswith(("#", "|")):
            blocks.append(block)
        elif block.startswith("- "):
            items = ("\n" + block).split("\n- ")[1:]  # an item's continuation lines are indented
            blocks.append(
                "\n".join(_fill("- " + " ".join(i.split()), width, indent="  ") for i in items)
            )
        else:
            blocks.append(_fill(" ".join(block.split("\n")), width))
    return "\n\n".join(blocks) + "\n"


_NBSP = "\x00"


def _fill(text: str, width: int, *, indent: str = "") -> str:
    # Never break inside a `code span`.
    spans = text.split("`")
    spans[1::2] = [span.replace(" ", _NBSP) for span in spans[1::2]]
    filled = textwrap.fill(
        "`".join(spans),
        width,
        subsequent_indent=indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return filled.replace(_NBSP, " ")
