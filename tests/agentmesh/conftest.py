"""Where the `agentmesh` console script is, for tests that run it as a real process."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def agentmesh_exe() -> str:
    found = shutil.which("agentmesh", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"no agentmesh script next to {sys.executable}: pip install -e .")
    return found
