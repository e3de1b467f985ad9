"""Many strangers and faults against a real app.py server on loopback: the short load run of
`python -m fmn bench load` (docs/app.md has the long one), then the faults a public server meets."""

import time
import uuid
from argparse import Namespace

import numpy as np
import pytest
from gradio_client import Client, handle_file

from fmn.bench.load import PROMPTS, Server, Visitor, run

from conftest import OUTPUT

pytestmark = pytest.mark.slow


def test_ten_sessions_for_a_minute_are_served_isolated_and_leave_memory_bounded():
    OUTPUT.mkdir(exist_ok=True)
    result = run(Namespace(sessions=10, seconds=60, memory_mb=300, json=str(OUTPUT / "load-short.json")))
    assert result["errors"] == [], result["errors"]
    assert set(result["served"]) == {"generate", "erase", "attack", "upload", "reset"}, result["served"]
    # an attack holds the device: ~3 images a minute
    assert result["images_checked"] >= 1 and result["isolation_failures"] == 0
    assert result["memory_ok"], (result["rss_mb_before"], result["rss_mb_after"])


ERASE = ("star", "text-encoder", None, "", 400)  # an erasure of minutes: it holds the erase queue while it runs


def _erasing(url, timeout=60):
    """Starts a long erasure and returns its job once it has streamed a step: within `timeout`, since the
    erasure before it (cancelled, or its client gone) must have stopped at its next step."""
    job = Client(url, verbose=False).submit(*ERASE, api_name="/erase")
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any("Erasing: step" in str(out[0]) for out in job.outputs()):
            return job
        time.sleep(0.5)
    raise AssertionError(f"no step streamed in {timeout} s: {job.status()}")


def _leave_mid_erasure(url, timeout=60):
    """A visitor whose connection drops mid-erasure (a closed tab): joins the queue over plain HTTP, reads the
    event stream until a step arrives, then closes the connection."""
    import httpx

    fn_index = Client(url, verbose=False)._infer_fn_index("/erase", None)
    session = uuid.uuid4().hex
    with httpx.Client(base_url=url, timeout=timeout) as http:
        http.post("gradio_api/queue/join", json={"data": [*ERASE, None, False, ""], "fn_index": fn_index,
                                                 "session_hash": session}).raise_for_status()
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if "Erasing: step" in line:
                    return
    raise AssertionError("the erasure never streamed a step")


def test_faults_lose_nothing_and_the_server_keeps_serving(tmp_path):
    OUTPUT.mkdir(exist_ok=True)
    server = Server(OUTPUT / "fault-server.log", "--queue-size", "3")
    try:
        prompt, seed = PROMPTS[0]
        original = Visitor(server.url).generate(prompt, seed)
        alice = Visitor(server.url)
        patch = alice.erase("uce", "circle")
        patched = alice.generate(prompt, seed)
        assert not np.array_equal(original, patched)

        def as_before():
            assert np.array_equal(Visitor(server.url).generate(prompt, seed), original)  # the model as it was
            assert np.array_equal(alice.generate(prompt, seed), patched)  # alice's work kept

        _erasing(server.url).cancel()  # a visitor who cancels mid-erasure
        as_before()
        _leave_mid_erasure(server.url)  # one whose connection drops
        as_before()

        damaged = tmp_path / "damaged.safetensors"
        damaged.write_bytes(open(patch, "rb").read()[:1000])
        with pytest.raises(Exception, match="damaged.safetensors is not a readable safetensors file"):
            alice.client.predict(handle_file(str(damaged)), api_name="/load_patch")
        as_before()

        # starts at once: both erasures before it stopped; it holds the device as a crowd arrives
        busy = _erasing(server.url)
        clients = [Client(server.url, verbose=False) for _ in range(8)]
        crowd = [c.submit(prompt, "", seed, 10, 5.0, 0, 10, api_name="/generate") for c in clients]
        time.sleep(3)
        refused = [job for job in crowd if job.done() and "full" in str(job.exception()).lower()]
        assert refused, [job.status() for job in crowd]  # more than the queue holds: refused at once, with why
        busy.cancel()
        served = [job.result(timeout=300) for job in crowd if job not in refused]
        assert served and all(np.array_equal(_pixels(out[0]), original) for out in served)
        as_before()
    finally:
        server.stop()


def _pixels(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))
