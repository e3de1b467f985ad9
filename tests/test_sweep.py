"""Sweeps (`fmn.sweep`): jobs run here or on Ray give the same results, finished jobs are kept and not run
again, and the two sweeps of the command line (bench quality's cells, erase --separate) use them."""

import json
import os
import secrets
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fmn.__main__ import main
from fmn.bench.load import free_port
from fmn.erase.separate import PatchFolder, _config, file_name
from fmn.files import written
from fmn.patch import Patch
from fmn.sweep import Job, Store, sweep

from conftest import OUTPUT, ROOT


def _fmn(*args, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "fmn", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


class Counting:
    """A work function that records which jobs it ran."""

    def __init__(self):
        self.ran = []

    def __call__(self, state, spec):
        self.ran.append(spec["n"])
        return ({"square": spec["n"] ** 2, "state": state},
                [Image.new("RGB", (8, 6), (spec["n"], 0, 255 - spec["n"]))] * 2)


def test_finished_jobs_are_read_back_not_run_again(tmp_path):
    jobs = [Job(f"job-{n}", {"n": n}) for n in range(4)]
    work, store, lines = Counting(), Store(tmp_path / "cells"), []
    first = sweep(jobs, lambda: "model", work, store, log=lines.append)
    assert work.ran == [0, 1, 2, 3] and first["job-3"][0] == {"square": 9, "state": "model"}
    assert lines[-1].startswith("[4/4] job-3")  # progress: jobs done / total
    (tmp_path / "cells" / "job-2.json").unlink()  # interrupted before job 2 was kept
    (tmp_path / "cells" / "job-1.json").write_text("{half a fi")  # or while it was written
    jobs[3] = Job("job-3", {"n": 3, "steps": 5})  # another setting: its stored result does not count
    again = sweep(jobs, lambda: "model", work, store, log=lines.append)
    assert work.ran == [0, 1, 2, 3, 1, 2, 3]
    for key in ("job-0", "job-1"):
        record, images = again[key]
        assert record == first[key][0] and len(images) == 2
        assert [np.asarray(i).tolist() for i in images] == [np.asarray(i).tolist() for i in first[key][1]]


def test_a_write_that_fails_leaves_the_old_file_and_no_half_one(tmp_path):
    target = tmp_path / "job-0.json"
    target.write_text("the finished result")
    with pytest.raises(OSError, match="disk full"):
        with written(target) as staged:
            staged.write_text("half a res")
            raise OSError("disk full")
    assert target.read_text() == "the finished result" and [p.name for p in tmp_path.iterdir()] == ["job-0.json"]
    with written(tmp_path / "model") as staged:  # a folder (a merged export)
        staged.mkdir()
        (staged / "unet.safetensors").write_text("weights")
    assert (tmp_path / "model" / "unet.safetensors").read_text() == "weights" and len(list(tmp_path.iterdir())) == 2


def test_a_kept_patch_counts_only_if_every_setting_is_the_same(tmp_path):
    """Defaults included: a patch made before a method's default changed is made again. What each worker's erasure
    finds on the model to hold is the worker's (the user's keep list is a setting like any other)."""
    config = _config("uce", "circle", None, {"keep": ["dog"]})
    assert (config["seed"] == 0 and config["keep"] == ["dog"] and "preserve" not in config
            and "keep_prompts" not in config)
    spec = {"concept": "circle", "method": "uce", "replace_with": None, "overrides": {}, "config": config}
    folder = PatchFolder(tmp_path)
    held = config | {"preserve": ["dog", "square"], "keep_prompts": ["a square"], "in_context": ["a red circle"]}
    folder.save(Job("circle.safetensors", spec), Patch({"unet.w": torch.zeros(2)}, "uce", ["circle"], "base", {}, held))
    assert folder.load(Job("circle.safetensors", spec)).settings == held
    assert folder.load(Job("circle.safetensors", {**spec, "config": {**config, "keep": []}})) is None
    assert _config("uce", "circle", None, {"preserve": []})["preserve"] == []  # given: part of the job
    assert folder.load(Job("circle.safetensors", {**spec, "config": {**config, "seed": 1}})) is None
    assert folder.load(Job("circle.safetensors", {**spec, "method": "rece"})) is None


def test_bad_sweeps_are_refused():
    with pytest.raises(ValueError, match="--workers 0: use 1 or more"):
        sweep([Job("a", {})], dict, Counting(), workers=0)
    with pytest.raises(ValueError, match="share a key"):
        sweep([Job("a", {"n": 1}), Job("a", {"n": 2})], dict, Counting())


def test_a_concept_names_a_file_inside_the_folder():
    assert file_name("circle") == "circle.safetensors" and file_name("Van Gogh") == "Van-Gogh.safetensors"
    assert file_name("../../etc/passwd") == "etc-passwd.safetensors" and file_name("/..") == "concept.safetensors"


def test_erase_separate_refuses_what_it_cannot_do(tmp_path, capsys):
    cases = [(["--concept", "circle", "--separate", "--out", str(tmp_path / "c.safetensors")],
              "with --separate, --out is a folder"),
             (["--concept", "circle", "--workers", "2", "--out", str(tmp_path / "c.safetensors")], "add --separate"),
             (["--concept", "circle", "--concept", "Circle", "--separate", "--out", str(tmp_path)], "named twice"),
             (["--concept", "circle", "--concept", "zebra", "--separate", "--out", str(tmp_path)], "never saw zebra"),
             (["--concept", "circle", "--separate", "--images", str(tmp_path), "--out", str(tmp_path)],
              "--images and --figure"),
             (["--concept", "circle", "--concept", "circle!", "--separate", "--out", str(tmp_path)],
              "share the file circle.safetensors")]
    for args, message in cases:
        assert main(["erase", "--method", "uce", *args]) == 2
        err = capsys.readouterr().err
        assert message in err, (args, err)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.slow
def test_erase_separate_on_ray_writes_the_same_patches_and_keeps_them(tmp_path):
    concepts = ["--concept", "circle", "--concept", "Mimo, night"]
    here = _fmn("erase", *concepts, "--method", "uce", "--separate", "--out", str(tmp_path / "here"))
    ray = _fmn("erase", *concepts, "--method", "uce", "--separate", "--workers", "2", "--out", str(tmp_path / "ray"))
    assert here.returncode == 0 and ray.returncode == 0, (here.stderr[-1500:], ray.stderr[-1500:])
    for name in ("circle", "Mimo", "night"):
        a, b = (load_file(tmp_path / side / f"{name}.safetensors") for side in ("here", "ray"))
        assert a.keys() == b.keys(), name
        # each layer's change B @ A: a Ray worker solves on 1 thread, this process on 2, so the sums run in another
        # order on some CPUs; the factors are stored in fp16 (2^-11): the same patch within 2^-8 of its largest entry
        for key in (k for k in a if ".lora_A." in k):
            here_change, ray_change = (p[key.replace(".lora_A.", ".lora_B.")].float() @ p[key].float() for p in (a, b))
            assert (here_change - ray_change).abs().max() <= 2**-8 * here_change.abs().max(), (name, key)
    (tmp_path / "ray" / "Mimo.safetensors").unlink()
    resumed = _fmn("erase", *concepts, "--method", "uce", "--separate", "--workers", "2",
                   "--out", str(tmp_path / "ray"))
    assert (resumed.returncode == 0 and "[2/3] done before" in resumed.stderr
            and "[3/3] Mimo.safetensors" in resumed.stderr)


QUALITY = ["bench", "quality", "--quick", "--concepts", "triangle,Tobble", "--methods", "uce,fmn", "--prompts", "2",
           "--steps", "4", "--attack-steps", "2"]


@pytest.mark.slow
def test_bench_quality_on_two_ray_workers_gives_the_serial_table_and_resumes(tmp_path):
    # each Ray actor computes on one thread; so does the serial run, as the sums' order changes a borderline image
    serial = _fmn(*QUALITY, "--out", str(tmp_path / "serial"), env=os.environ | {"OMP_NUM_THREADS": "1"})
    ray = _fmn(*QUALITY, "--workers", "2", "--out", str(tmp_path / "ray"))
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "bench-quality-ray.log").write_text(serial.stdout + ray.stdout + ray.stderr[-3000:])
    assert serial.returncode == 0 and ray.returncode == 0, (serial.stderr[-1500:], ray.stderr[-1500:])
    rows = [json.loads((tmp_path / side / "quality-quick.json").read_text())["rows"] for side in ("serial", "ray")]
    measured = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "peak_mb")} for r in rs]  # noqa: E731
    assert len(rows[0]) == 6 and measured(rows[0]) == measured(rows[1])
    assert "Ray, 2 workers" in ray.stdout and "[6/6]" in ray.stdout
    cells = tmp_path / "ray" / "quality-quick-cells"
    (cells / "Tobble-uce.json").unlink()  # as if interrupted before this cell finished
    resumed = _fmn(*QUALITY, "--out", str(tmp_path / "ray"))
    assert resumed.returncode == 0 and "[5/6] done before" in resumed.stdout and "[6/6] Tobble-uce" in resumed.stdout
    assert measured(json.loads((tmp_path / "ray" / "quality-quick.json").read_text())["rows"]) == measured(rows[0])


@pytest.mark.slow
def test_bench_quality_on_a_running_ray_cluster_by_its_address(tmp_path):
    """The cluster path: `ray start --head` as an operator would, then --address; the repository travels to
    the workers as Ray's working_dir. The table is the serial one."""

    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    port = free_port()
    # as README says: one token, every node
    token = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    subprocess.run([*ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    "--disable-usage-stats"], check=True, capture_output=True, timeout=120, env=token)
    try:
        args = [*QUALITY, "--methods", "uce"]
        cluster = _fmn(*args, "--workers", "2", "--address", f"127.0.0.1:{port}", "--out", str(tmp_path / "cluster"),
                       env=token)
        serial = _fmn(*args, "--out", str(tmp_path / "serial"))
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, timeout=120, env=token)
    assert cluster.returncode == 0 and serial.returncode == 0, (cluster.stderr[-1500:], serial.stderr[-1500:])
    assert f"Ray cluster at 127.0.0.1:{port}, 2 workers" in cluster.stdout
    rows = [json.loads((tmp_path / side / "quality-quick.json").read_text())["rows"] for side in ("serial", "cluster")]
    measured = lambda rs: [{k: v for k, v in r.items() if k not in ("seconds", "peak_mb")} for r in rs]  # noqa: E731
    assert len(rows[0]) == 4 and measured(rows[0]) == measured(rows[1])
