"""The installed distribution: one top-level import package, `agentmesh`, holding every module
of the repository's folders, next to the OpenAI Agents SDK (whose import name is `agents`).

Fast and offline: the wheel is built from a copy of the sources without build isolation, and
the fresh venv has no pip of its own; this environment's site-packages provide the
dependencies through a `.pth` file, and this environment's pip installs into it (`--python`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
# Import package → source folder: `agentmesh` is agentmesh/, the others as package-dir says.
FOLDERS = {"agentmesh": "agentmesh", **SETUPTOOLS["package-dir"]}


def _pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


def _source_modules() -> set[str]:
    """Every file the wheel must hold, as its path in the wheel: modules and the Lua scripts."""
    wanted = set()
    for package, folder in FOLDERS.items():
        base = ROOT / folder
        for path in base.rglob("*"):
            inside = path.relative_to(base)
            if "__pycache__" in inside.parts or path.suffix not in (".py", ".lua"):
                continue
            # Only files of packages: every folder up to this file has an __init__.py.
            if all((base / p / "__init__.py").is_file() for p in _parents(inside)):
                wanted.add("/".join([*package.split("."), *inside.parts]))
    return wanted


def _parents(inside: Path) -> list[Path]:
    return [Path(*inside.parts[:i]) for i in range(len(inside.parts))]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the build reads, so building writes nothing into the repository."""
    copy = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    for folder in set(FOLDERS.values()):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture(scope="module")
def wheel(sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _pip(
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        str(out),
        str(sources),
    )
    (built,) = out.glob("agentmesh-*.whl")
    return built


def test_every_folder_with_an_init_is_a_listed_package() -> None:
    found = set()
    for package, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            inside = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *inside.parts]))
    assert found == set(SETUPTOOLS["packages"])


def test_the_wheel_holds_one_top_level_package_with_every_module(wheel: Path) -> None:
    names = [n for n in zipfile.ZipFile(wheel).namelist() if not n.endswith("/")]
    assert {n.split("/")[0] for n in names} == {
        "agentmesh",
        f"agentmesh-{_version()}.dist-info",
    }
    held = {n for n in names if n.startswith("agentmesh/")}
    assert held == _source_modules()
    assert "agentmesh/broker/ratelimit.lua" in held


def test_pip_install_puts_only_agentmesh_next_to_the_openai_agents_sdk(
    sources: Path, tmp_path: Path
) -> None:
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    purelib = Path(
        subprocess.check_output(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            text=True,
        ).strip()
    )
    # The dependencies (and openai-agents) come from this environment, after the venv's own.
    (purelib / "_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # `pip install .`, not editable: pip builds the wheel and installs it.
    _pip(
        "--python",
        str(python),
        "install",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        str(sources),
    )

    assert sorted(p.name for p in purelib.iterdir()) == [
        "_deps.pth",
        "agentmesh",
        f"agentmesh-{_version()}.dist-info",
    ]
    assert (env / "bin" / "agentmesh").is_file()
    check = """
import importlib.util, sys
from agents import Agent as SdkAgent, Runner
import agents
from agentmesh import Agent, MeshClient, __version__
import agentmesh, agentmesh.broker.bus, agentmesh.gateway.app, agentmesh.workers.llm.worker
for generic in ("broker", "gateway", "schemas", "workers"):
    assert importlib.util.find_spec(generic) is None, generic
print(agents.__file__)
print(agentmesh.gateway.app.__file__)
print(__version__)
"""
    # -I: no current directory on sys.path, so the repository's own folders cannot answer.
    done = subprocess.run(
        [str(python), "-I", "-c", check], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    sdk, gateway, version = done.stdout.split()
    assert Path(sdk).parts[-2:] == ("agents", "__init__.py")
    assert Path(sdk).is_relative_to(sysconfig.get_path("purelib"))  # openai-agents
    assert Path(gateway).is_relative_to(purelib / "agentmesh")
    assert version == _version()


def _version() -> str:
    from agentmesh.schemas.version import __version__

    return __version__
