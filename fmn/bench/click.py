"""The Erase click as a person sees it:  python -m fmn bench click [--concept Zubrik] [--method text-map]

First the click as `bench erase-speed` times it, in this process (the erasure, then the before/after drawn and
rendered). Then app.py as a real server on a free loopback port and a page in headless Chromium (Debian's
/usr/bin/chromium through Playwright, nothing that reaches the network): the Erase tab, the concept typed, Erase
clicked, timed until the grid, the judge's reads and the word's heatmaps are on screen. Bound: the page's click
within 1.5x the bench's. The page's milestones (the first step's progress, the "Erased" status, the views on
screen) against the bench's erase and comparison show where any extra time goes.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..erase import DEFAULT_METHOD, METHODS
from ..studio import Studio
from .erase_speed import Click, click, mark
from .load import Server
from .measure import device_name

__all__ = ["add_arguments", "run", "launch_chromium", "PageClick", "BOUND"]

BOUND = 1.5  # the page's click at most this many times the bench's
WAIT_MS = 600_000  # the longest any milestone is waited for
POLL_MS = 100
STATUS = "text => document.querySelector('#erase-status').innerText.includes(text)"
# the click's views on screen: the grid and the word's heatmaps loaded, the judge's reads (or the prompts) written
SHOWN = """() => {
    const loaded = id => { const img = document.querySelector(`#${id} img`);
                           return img !== null && img.complete && img.naturalWidth > 0; };
    const reads = document.querySelector('#judged textarea');
    return loaded('grid') && loaded('heat-grid') && reads !== null && reads.value.length > 0;
}"""


def launch_chromium(playwright):
    """Debian's chromium, headless, with nothing that reaches the network."""
    return playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"])


@dataclass
class PageClick:
    """Seconds from the Erase click on the page to each milestone the person sees."""

    first_step_s: float  # the first training step's progress
    erased_s: float  # the status "drawing the before/after": the patch made, the comparison under way
    shown_s: float  # the grid, the judge's reads and the word's heatmaps on screen


def add_arguments(parser) -> None:
    parser.add_argument("--concept", default="Zubrik")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the method's own)")
    parser.add_argument("--model", default=None, help="default: the embedded model")


def _until(page, condition: str, arg=None) -> float:
    """The time (perf_counter) the condition first held, looked at every `POLL_MS`: a faster look (every frame)
    takes the CPU the erasure runs on."""
    page.wait_for_function(condition, arg=arg, polling=POLL_MS, timeout=WAIT_MS)
    return time.perf_counter()


def _fill_form(page, concept: str, method: str, steps: int | None) -> None:
    """The Erase tab with the concept typed (and its held words shown), the method picked and the steps set."""
    page.get_by_role("tab", name="Erase").click()
    box, held = page.locator("#concept textarea, #concept input").first, page.locator("#held").inner_text()
    if box.input_value() != concept:
        box.fill(concept)
        page.wait_for_function("was => document.querySelector('#held').innerText !== was", arg=held,
                               timeout=WAIT_MS)
    if method != DEFAULT_METHOD:
        page.locator("#method input").click()
        page.get_by_role("option", name=method, exact=True).click()
    if steps:
        page.get_by_label("Steps (0: the method's default)").fill(str(steps))


def page_click(url: str, concept: str, method: str, steps: int | None) -> PageClick:
    """One visitor's click in headless Chromium, timed from the click to each milestone."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        _fill_form(page, concept, method, steps)
        start = time.perf_counter()
        page.locator("#erase").click()
        first = _until(page, STATUS, "Erasing: step") - start
        erased = _until(page, STATUS, "drawing the before/after") - start
        shown = _until(page, SHOWN) - start
        browser.close()
    return PageClick(first, erased, shown)


def _bench_click(args) -> Click:
    """The click as `bench erase-speed` times it, on a model of this process's own."""
    studio = Studio(args.model, device="cpu")
    result, patch_id = click(studio, args.method, args.concept, args.steps)
    studio.remove_patch(patch_id)
    return result


def run(args) -> tuple[Click, PageClick]:
    """Prints the page's click against the bench's and the bound; returns both."""
    bench = _bench_click(args)
    flags = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp) / "app-server.log", *flags)
        try:
            seen = page_click(server.url, args.concept, args.method, args.steps)
        finally:
            server.stop()
    bound = BOUND * bench.total_s
    print(f"device: {device_name(torch.device('cpu'))}")
    print(f"{args.method} on {args.concept!r}{f', {args.steps} training steps' if args.steps else ''}")
    print(f"bench (erase-speed): erase {bench.erase_s:.1f} s + before/after shown {bench.compare_s:.1f} s "
          f"= {bench.total_s:.1f} s")
    print(f"page (headless Chromium, from the click): first step shown {seen.first_step_s:.1f} s, "
          f"comparison started {seen.erased_s:.1f} s, grid, reads and heatmaps on screen {seen.shown_s:.1f} s")
    print(f"the page's erasure {seen.erased_s - bench.erase_s:+.1f} s and comparison "
          f"{seen.shown_s - seen.erased_s - bench.compare_s:+.1f} s against the bench's")
    print(f"the page's click {seen.shown_s:.1f} s = {seen.shown_s / bench.total_s:.2f}x the bench's; "
          f"bound <= {BOUND}x ({bound:.1f} s) {mark(seen.shown_s <= bound)}")
    return bench, seen
