"""The project's text describes what is: no line names a round of work by its number.

History lives in git log. A line that dates a statement by a numbered round of work in README, docs,
code or tests is out of date the day it is written, so the fast lane fails on it, naming file:line.
The app's visitor sessions and the load benchmark's `--sessions N` flag are product words and pass.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HISTORY = [re.compile(r"(^|[^-\w])[Ss]essions? \d+"), re.compile(r"\b[Rr]ounds? of work \d+")]
SKIPPED = {"tests/test_history.py"}  # names the patterns it looks for


def history_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line that names a round of work by its number."""
    return [(i, line) for i, line in enumerate(text.splitlines(), 1) if any(p.search(line) for p in HISTORY)]


def text_files() -> list[tuple[str, str]]:
    """(path, text) of every file git tracks or would add (not ignored), but JSON, binary files and SKIPPED."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no list of tracked files")
    files = []
    for name in sorted(set(listed.decode().split("\0")) - {""} - SKIPPED):
        path = ROOT / name
        if name.endswith(".json") or not path.is_file():  # JSON: results; not a file: deleted in the working tree
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary: images, weights
            continue
        try:
            files.append((name, data.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return files


def test_the_pattern_finds_rounds_of_work_and_passes_product_words():
    def found(line: str) -> bool:
        return bool(history_lines(line))

    word = "session"  # the examples are built here, so that this file holds no history line itself
    for line in (f"since {word} 15 the default", f"{word.title()} 6 read 70 %", f"{word}s 15–17",
                 f"({word} 12: 5 % left)", "in the second round of work 3", "rounds of work 2 and 3"):
        assert found(line), line
    for line in ("python -m fmn bench load --sessions 4 --seconds 60", "bench load [--sessions 20]",
                 "the app's visitor sessions", "20 sessions taking new steps", "a session idle this long",
                 "RECE's rounds", f"gradio_{word}s 3", "every browser session names its patches"):
        assert not found(line), line


def test_no_tracked_text_names_a_round_of_work_by_its_number():
    files = text_files()
    assert any(name == "README.md" for name, _ in files), "README.md should be among the files checked"
    lines = [f"{name}:{i}: {line.strip()[:120]}" for name, text in files for i, line in history_lines(text)]
    assert not lines, "history in the project's text (describe what is; git log keeps it):\n" + "\n".join(lines)
