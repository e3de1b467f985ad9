"""Shared fixtures: tiny random-weight models saved as diffusers folders, the embedded model, a live app."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "test-output"  # screenshots and other artefacts a person may want to look at

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the network


BAD_UPLOADS = ["not an image", "corrupt", "truncated", "8000x8000", "decompression bomb", "100 images"]


def bad_upload(case: str, folder: Path) -> tuple[list[Path], str]:
    """Writes into `folder` the files of an upload that must be refused; returns them and the
    message that must say why. Big images cost little: a palette PNG of one colour compresses to
    a few kB, and the bomb is a small PNG whose header claims 20000x20000."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, "PNG")
    red = buffer.getvalue()
    if case == "not an image":
        (folder / "notes.txt").write_text("a shopping list")
        return [folder / "notes.txt"], "notes.txt is not a readable image"
    if case == "corrupt":
        (folder / "broken.png").write_bytes(b"\x89PNG broken")
        return [folder / "broken.png"], "broken.png is not a readable image"
    if case == "truncated":  # a sound header, half the pixels: it fails only when decoded
        Image.effect_noise((64, 64), 64).save(folder / "half.png")
        (folder / "half.png").write_bytes((folder / "half.png").read_bytes()[:2000])
        return [folder / "half.png"], "half.png is not a readable image"
    if case == "8000x8000":
        Image.new("P", (8000, 8000)).save(folder / "huge.png")
        return [folder / "huge.png"], "huge.png is 8000x8000 pixels; the limit is 4096"
    if case == "decompression bomb":
        header = b"IHDR" + struct.pack(">II", 20000, 20000) + red[24:29]  # IHDR: size, then depth, colour type, ...
        (folder / "bomb.png").write_bytes(red[:12] + header + struct.pack(">I", zlib.crc32(header)) + red[33:])
        return [folder / "bomb.png"], "bomb.png is too large"
    assert case == "100 images", case
    paths = [folder / f"red{i:03}.png" for i in range(100)]
    for path in paths:
        path.write_bytes(red)
    return paths, "100 images; the limit is 20"


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Diffusers folders of tiny random SD-1.x-like, SD-2.x-like and SDXL-like pipelines."""
    from fmn.tiny import tiny_pipeline

    dirs = {}
    for kind in ("sd15", "sd2", "sdxl"):
        folder = tmp_path_factory.mktemp(kind)
        tiny_pipeline(kind).save_pretrained(folder)
        dirs[kind] = folder
    return dirs


@pytest.fixture(scope="session")
def transformer_dirs(tmp_path_factory) -> dict[str, str]:
    """Diffusers folders of the tiny random SD3 and FLUX."""
    from fmn.tiny import tiny_pipeline

    dirs = {}
    for kind in ("sd3", "flux"):
        folder = tmp_path_factory.mktemp(kind)
        tiny_pipeline(kind).save_pretrained(folder)
        dirs[kind] = str(folder)
    return dirs


@pytest.fixture(scope="session")
def embedded():
    """The embedded shapes-world pipeline on the CPU."""
    from fmn.models import load_pipeline

    return load_pipeline(device="cpu")


@pytest.fixture(scope="session")
def judge(embedded):
    """The shapes world's judge, loaded with the embedded model's world."""
    return embedded.world.judge


@pytest.fixture(scope="module")
def app_url():
    """app.py started as a real server on a free loopback port, on the embedded model; stopped after
    the module that uses it, so that an idle server does not share the cores with later tests."""
    from fmn.bench.load import Server

    OUTPUT.mkdir(exist_ok=True)
    server = Server(OUTPUT / "app-server.log")
    yield server.url
    server.stop()
