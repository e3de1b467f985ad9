"""The repository passes its linter: `ruff check .` with the settings in pyproject.toml (pyflakes, pycodestyle,
import order, lines of at most 120 characters)."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_check_passes():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"ruff check . exited {done.returncode}:\n{done.stdout}{done.stderr}"
