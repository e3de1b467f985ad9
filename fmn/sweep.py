"""Independent jobs of a sweep (a benchmark's concept × method cells, concepts erased into separate patches),
run here one after another or as Ray tasks on several workers, each result kept on disk as it arrives, so that
an interrupted sweep runs only what is left.

    results = sweep(jobs, open_model, run_job, store=Path("out/cells"), workers=2)

`setup()` runs once per worker (it loads the model) and `work(state, job.spec)` once per job; both are
module-level functions, so that Ray finds them by name on every node. A worker is a Ray actor holding its
model: a local Ray is started for you, or `address` joins a running cluster (the repository travels with
the jobs as Ray's working_dir; the nodes need requirements.txt installed). Where the cluster has GPUs, each
worker takes one. Every job seeds what it draws, so the same spec gives the same result whichever worker runs
it and in whatever order they finish (to float rounding: a worker's thread count changes the order of sums).

A store keeps results: `load(job)` gives a finished job's result or None, `save(job, result)` keeps one.
`Store` keeps a JSON record and images; `fmn.erase.separate.PatchFolder` keeps patch files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from .files import written

__all__ = ["Job", "Record", "sweep", "Store"]

ROOT = Path(__file__).resolve().parent.parent
Record = tuple[dict, list[Image.Image]]  # a JSON record and the job's images (may be empty)


@dataclass
class Job:
    key: str  # unique in the sweep, a file name: letters, digits, '-', '_', '.'
    spec: dict  # everything that decides the result (JSON); a stored result counts only for the same spec


class Store:
    """One JSON file per finished job (its spec and record) and one PNG strip of its images, in a folder,
    each written whole or not at all (`fmn.files.written`)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def load(self, job: Job) -> Record | None:
        path = self.folder / f"{job.key}.json"
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if stored.get("spec") != json.loads(json.dumps(job.spec)):
            return None  # made with other settings: run again
        images = []
        if stored["images"]:
            with Image.open(path.with_suffix(".png")) as strip:
                width = strip.width // stored["images"]
                images = [strip.crop((i * width, 0, (i + 1) * width, strip.height)).convert("RGB")
                          for i in range(stored["images"])]
        return stored["record"], images

    def save(self, job: Job, result: Record) -> None:
        record, images = result
        if images:
            strip = Image.new("RGB", (sum(i.width for i in images), images[0].height))
            for i, image in enumerate(images):
                strip.paste(image, (i * images[0].width, 0))
            with written(self.folder / f"{job.key}.png") as staged:
                strip.save(staged, format="PNG")
        with written(self.folder / f"{job.key}.json") as staged:  # last: it marks the result done
            staged.write_text(json.dumps({"spec": job.spec, "record": record, "images": len(images)}, indent=1))


def sweep(jobs: list[Job], setup: Callable[[], Any], work: Callable[[Any, dict], Any], store=None,
          workers: int = 1, address: str | None = None, log: Callable[[str], None] = print,
          describe: Callable[[Any], str] = lambda result: "") -> dict[str, Any]:
    """Every job's result by key: stored ones read back, the rest run (here with workers=1 and no address,
    else on Ray), each saved as soon as it finishes. Logs 'jobs done / total' and `describe(record)` as they come."""
    if workers < 1:
        raise ValueError(f"--workers {workers}: use 1 or more.")
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("Two jobs share a key.")
    results = {job.key: stored for job in jobs if store and (stored := store.load(job)) is not None}
    todo = [job for job in jobs if job.key not in results]
    if results:
        log(f"[{len(results)}/{len(jobs)}] done before, read from {store.folder}")

    def finished(job: Job, result) -> None:
        results[job.key] = result
        if store:
            store.save(job, result)
        log(f"[{len(results)}/{len(jobs)}] {job.key}: {describe(result)}")

    if not todo:
        return results
    if workers == 1 and address is None:
        state = setup()
        for job in todo:
            finished(job, work(state, job.spec))
    else:
        _on_ray(todo, setup, work, workers, address, finished)
    return results


class _Worker:
    """A Ray actor: the model loaded once, then one job after another."""

    def __init__(self, setup, work, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.state, self.work = setup(), work

    def run(self, key: str, spec: dict) -> tuple[str, Any]:
        return key, self.work(self.state, spec)


def _on_ray(jobs: list[Job], setup, work, workers: int, address: str | None, finished) -> None:
    import ray
    from ray.util import ActorPool

    if address:  # a running cluster: ship this repository to its nodes
        env = {"working_dir": str(ROOT), "excludes": [".git", ".whl", ".gradio", "docs", "tests", "test-output",
                                                      "benchmarks", "**/__pycache__"]}
        ray.init(address=address, runtime_env=env, logging_level="ERROR", log_to_driver=False)
    else:  # a Ray of this machine's cores, its workers importing this checkout
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        count = min(workers, len(jobs), gpus) if gpus else min(workers, len(jobs))
        cpus = 1 if gpus else max(1, int(resources.get("CPU", 1)) // count)
        actor = ray.remote(num_cpus=cpus, num_gpus=1 if gpus else 0)(_Worker)
        pool = ActorPool([actor.remote(setup, work, None if gpus else cpus) for _ in range(count)])
        by_key = {job.key: job for job in jobs}
        for key, result in pool.map_unordered(lambda a, job: a.run.remote(job.key, job.spec), jobs):
            finished(by_key[key], result)
    finally:
        ray.shutdown()
