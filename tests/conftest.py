"""Shared fixtures: tiny random-weight models saved as diffusers folders, the embedded model, a live app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"  # screenshots and other artefacts a person may want to look at

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the network


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Diffusers folders of tiny random SD-1.x-like and SD-2.x-like pipelines."""
    from fmn.tiny import tiny_pipeline

    dirs = {}
    for kind in ("sd15", "sd2"):
        folder = tmp_path_factory.mktemp(kind)
        tiny_pipeline(kind).save_pretrained(folder)
        dirs[kind] = folder
    return dirs


@pytest.fixture(scope="session")
def embedded():
    """The embedded shapes-world pipeline on the CPU."""
    from fmn.models import load_pipeline

    return load_pipeline(device="cpu")


@pytest.fixture(scope="session")
def judge():
    from fmn.models import EMBEDDED_JUDGE
    from fmn.world.judge import Judge

    return Judge.load(EMBEDDED_JUDGE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_url():
    """app.py started as a real server on a free loopback port, on the embedded model."""
    port = free_port()
    OUTPUT.mkdir(exist_ok=True)
    log = open(OUTPUT / "app-server.log", "w")
    proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with {proc.returncode}; see {OUTPUT / 'app-server.log'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        raise RuntimeError("app.py did not start listening within 240 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
