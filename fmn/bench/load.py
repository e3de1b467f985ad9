"""Many strangers on one server: python -m fmn bench load [--sessions 20] [--seconds 300] [--json load.json]

Starts app.py on a free loopback port (the embedded model, the app's own queue) and runs N gradio_client
sessions at once for a while, each cycling through what a visitor does (`SCRIPT`): generate, erase (UCE, a
closed form), generate, upload a patch, attack (every tenth session; the others generate), generate,
Reset, erase with the text-encoder method (trained), generate, Reset. Then it reports requests served per endpoint,
errors, isolation failures and the server's resident memory before and after.

Isolation: each image under load must equal, pixel for pixel, the same prompt and seed in the same state
(no patch, each erasure, an erasure with the uploaded patch) drawn by one session alone: in the warm-up,
or after the load for a state the warm-up did not pass, rebuilt by the same steps. Memory: the server's resident
set after a warm-up (one session alone walks a whole script) and after the load, every session Reset;
`--memory-mb` is the bound it is
checked against. When the time is up a session takes no new step and withdraws one still waiting in the
queue (the one running finishes), so the run ends by itself, soon after.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

__all__ = ["add_arguments", "run", "Server", "Visitor", "script", "free_port"]

ROOT = Path(__file__).resolve().parents[2]
STEPS = 10  # denoising steps of each generate: a visitor's quick look
PROMPTS = [("a red circle on grass", 0), ("Mimo and a blue star on sand", 1)]
TRAINED_STEPS = 5  # the text-encoder erasure's steps: a trained method under load, not its defaults


def add_arguments(parser) -> None:
    parser.add_argument("--sessions", type=int, default=20, help="concurrent gradio_client sessions (1-64)")
    parser.add_argument("--seconds", type=float, default=300, help="how long sessions take new steps")
    parser.add_argument("--memory-mb", type=float, default=300, help="resident memory the server may gain over the run")
    parser.add_argument("--json", help="write the figures here")


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """app.py in its own process on a free loopback port; its resident memory read from /proc."""

    def __init__(self, log: Path, *flags: str):
        self.port = free_port()
        self.log = open(log, "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1",
                                      "--port", str(self.port), *flags],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}/"
        deadline = time.time() + 240
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}; see {log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError("app.py did not listen within 240 s")
                time.sleep(1)

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def _pixels(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class Withdrawn(Exception):
    """A step still waiting in the queue when the time was up, taken out of it."""


class Visitor:
    """One gradio_client session and the state of its patches, as the steps it took name them.
    With `until` (a time.time()), a step still queued then is withdrawn; the one running finishes."""

    def __init__(self, url: str, patch_file: str | None = None, until: float | None = None):
        from gradio_client import Client

        self.client, self.patch_file, self.state, self.until = Client(url, verbose=False), patch_file, (), until

    def call(self, *args, api_name: str):
        from gradio_client.utils import Status

        job = self.client.submit(*args, api_name=api_name)
        while not job.done():
            if self.until and time.time() > self.until and job.status().code == Status.IN_QUEUE:
                job.cancel()
                raise Withdrawn(api_name)
            time.sleep(0.2)
        return job.result()

    def generate(self, prompt: str, seed: int) -> np.ndarray:
        image, *_ = self.call(prompt, "", seed, STEPS, 5.0, 0, STEPS, api_name="/generate")
        return _pixels(image)

    def erase(self, method: str, concept: str, steps: int = 0) -> str:
        """Erases with the app's Steps box at `steps` (0: the method's default); returns the patch file
        the app offers for download."""
        status, _, _, _, patch, *_ = self.call(concept, method, None, "", steps, api_name="/erase")
        if "Erased" not in status:
            raise RuntimeError(status)
        self.state += (f"{method}:{concept}:{steps}",)
        return patch

    def upload(self) -> None:
        from gradio_client import handle_file

        status = self.call(handle_file(self.patch_file), api_name="/load_patch")
        if "Loaded" not in status:
            raise RuntimeError(status)
        self.state += ("upload",)

    def attack(self, concept: str) -> None:
        self.call(concept, None, api_name="/attack")

    def reset(self) -> None:
        self.call(api_name="/reset")
        self.state = ()


SCRIPT = [("generate",), ("erase", "uce", "circle", 0), ("generate",), ("upload",), ("attack", "circle"), ("generate",),
          ("reset",), ("erase", "text-encoder", "star", TRAINED_STEPS), ("generate",), ("reset",)]
ATTACK = SCRIPT.index(("attack", "circle"))


def script(index: int) -> tuple[list[tuple], int]:
    """Session `index`'s cycle of steps, (what, arguments), and the step it starts at. Every tenth session
    attacks its patches and starts with the upload just before (a second's call, where an erasure takes
    half a minute), so that even a short run attacks; the others draw instead of attacking and start
    spread over the cycle."""
    if index % 10 == 0:
        return SCRIPT, ATTACK - 1
    steps = [step if step[0] != "attack" else ("generate",) for step in SCRIPT]
    return steps, (3 * index) % len(steps)


def warm_up(url: str, log=print) -> tuple[str, dict]:
    """One session alone walks the whole script (every endpoint, the attack included) before the load, so
    that the memory read after it is the warm server's, and draws every prompt in every state it passes
    (the images the load's are checked against). Returns the patch file visitors upload and those images."""
    maker = Visitor(url)
    patch_file = maker.erase("uce", "Mimo")  # the file visitors upload: another session's erasure
    maker.reset()
    visitor, alone = Visitor(url, patch_file), {}
    for step in SCRIPT:
        for count in range(len(PROMPTS)) if step[0] == "generate" else [0]:
            if drawn := take(visitor, step, count):
                alone[drawn[:3]] = drawn[3]
    visitor.reset()
    log(f"warm-up: {len(SCRIPT)} steps alone, {len(alone)} images")
    return patch_file, alone


def take(visitor: Visitor, step: tuple, count: int) -> tuple | None:
    """Takes one step; a generate returns (state, prompt, seed, pixels) to check."""
    if step[0] != "generate":
        getattr(visitor, step[0])(*step[1:])
        return None
    prompt, seed = PROMPTS[count % len(PROMPTS)]
    return visitor.state, prompt, seed, visitor.generate(prompt, seed)


def visit(url: str, index: int, patch_file: str, until: float, tally: dict, lock: threading.Lock) -> None:
    """Session `index` takes its script's steps in a cycle from its own start (`script`) until the time is
    up (a step still queued then is withdrawn); then Resets."""
    try:
        visitor = Visitor(url, patch_file, until)
        steps, count = script(index)
        while time.time() < until:
            step = steps[count % len(steps)]
            try:
                drawn = take(visitor, step, count)
                with lock:
                    tally["served"][step[0]] += 1
                    if drawn:
                        tally["drawn"].append(drawn)
            except Withdrawn:
                with lock:
                    tally["withdrawn"] += 1
                break
            except Exception as err:  # counted and shown; the session goes on
                with lock:
                    tally["errors"].append(f"session {index} {step[0]}: {str(err)[:200]}")
            count += 1
        visitor.until = None  # the last Reset is never withdrawn (the script's own may be, like any step)
        visitor.reset()
    except Exception as err:
        with lock:
            tally["errors"].append(f"session {index}: {str(err)[:200]}")


def isolation_failures(url: str, patch_file: str, drawn: list[tuple], alone: dict) -> int:
    """Counts the images under load that differ by any pixel from the same (state, prompt, seed) drawn by one
    session alone: in the warm-up, or now, each state the warm-up did not pass rebuilt by the same steps."""
    failures = 0
    for key, pixels in [(d[:3], d[3]) for d in drawn if d[:3] in alone]:
        failures += not np.array_equal(pixels, alone[key])
    drawn = [d for d in drawn if d[:3] not in alone]
    for state in dict.fromkeys(d[0] for d in drawn):
        visitor = Visitor(url, patch_file)
        for part in state:
            if part == "upload":
                visitor.upload()
            else:
                method, concept, steps = part.split(":")
                visitor.erase(method, concept, int(steps))
        alone = {}
        for _, prompt, seed, pixels in (d for d in drawn if d[0] == state):
            if (prompt, seed) not in alone:
                alone[prompt, seed] = visitor.generate(prompt, seed)
            failures += not np.array_equal(pixels, alone[prompt, seed])
        visitor.reset()
    return failures


def run(args) -> dict:
    if not 1 <= args.sessions <= 64 or not 1 <= args.seconds <= 24 * 3600:
        raise ValueError(f"--sessions {args.sessions}, --seconds {args.seconds}: use 1-64 sessions and 1 s to a day.")
    out = Path(tempfile.mkdtemp(prefix="fmn-load-"))
    server = Server(out / "server.log")
    try:
        patch_file, alone = warm_up(server.url)
        before = server.rss_mb()
        print(f"server {server.url}: {before:.0f} MB resident, warm; {args.sessions} sessions for "
              f"{args.seconds:.0f} s", flush=True)
        tally, lock = {"served": Counter(), "errors": [], "drawn": [], "withdrawn": 0}, threading.Lock()
        start = time.time()
        threads = [threading.Thread(target=visit, args=(server.url, i, patch_file, start + args.seconds, tally, lock))
                   for i in range(args.sessions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.time() - start
        after = server.rss_mb()
        failures = isolation_failures(server.url, patch_file, tally["drawn"], alone)
    finally:
        server.stop()
    served = dict(tally["served"])
    result = {"sessions": args.sessions, "seconds": args.seconds, "wall_s": round(wall, 1), "served": served,
              "requests": sum(served.values()), "withdrawn": tally["withdrawn"], "errors": tally["errors"],
              "images_checked": len(tally["drawn"]),
              "isolation_failures": failures,
              "rss_mb_before": round(before, 1), "rss_mb_after": round(after, 1), "memory_bound_mb": args.memory_mb,
              "memory_ok": after - before <= args.memory_mb, "server_log": str(out / "server.log")}
    print(f"served {result['requests']} requests in {wall:.0f} s ({', '.join(f'{k} {v}' for k, v in served.items())}; "
          f"{tally['withdrawn']} still queued when the time was up, withdrawn); "
          f"errors {len(result['errors'])}; isolation failures {failures} of {len(tally['drawn'])} images; "
          f"resident memory {before:.0f} -> {after:.0f} MB (bound +{args.memory_mb:.0f} MB: "
          f"{'kept' if result['memory_ok'] else 'EXCEEDED'})", flush=True)
    for error in result["errors"][:10]:
        print("  error:", error, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result
