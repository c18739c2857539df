"""`make lint`'s layer check: import-linter's contracts (pyproject `[tool.importlinter]`).

import-linter finds a package's modules by walking its folder, but the repository keeps the
design card's folders at the top and setuptools maps them into `agentmesh` (pyproject's
`package-dir`). So this builds, under `.agentmesh/lint/`, a tree of symlinks shaped like the
installed package and runs `lint-imports` there. Run: `python -m tests.lint_imports`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".agentmesh" / "lint"


def build_tree() -> Path:
    """`.agentmesh/lint/agentmesh/`: the facade's files, and each mapped folder, as symlinks."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    package = TREE / "agentmesh"
    package.mkdir(parents=True)
    for path in (ROOT / "agentmesh").glob("*.py"):
        (package / path.name).symlink_to(path)
    for name, folder in package_dir.items():
        parent, _, child = name.rpartition(".")
        if parent == "agentmesh":  # nested packages come with their folder
            (package / child).symlink_to(ROOT / folder, target_is_directory=True)
    return TREE


def main() -> int:
    tree = build_tree()
    lint_imports = Path(sys.executable).with_name("lint-imports")
    # lint-imports puts its working directory first on sys.path: the tree, not the repository.
    command = [str(lint_imports), "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")]
    return subprocess.run(command, cwd=tree).returncode


if __name__ == "__main__":
    sys.exit(main())
