"""The small timing benchmarks (`python -m fmn bench erase-speed | click | generate-speed | heatmap-overhead`)
run on a tiny model and print what they measured, on which device, against which target."""

import re

import pytest

from fmn.__main__ import main


def test_erase_speed_times_the_apps_erase_click_for_every_method_asked(tiny_dirs, capsys):
    assert main(["bench", "erase-speed", "--model", str(tiny_dirs["sd15"]), "--methods", "uce,text-map",
                 "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "device: " in out and "the click on 'circle'" in out and "(2 training steps)" in out
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith(("| uce |", "| text-map |"))]
    assert [row[0] for row in rows] == ["| uce", "| text-map"]
    assert all(float(row[3]) >= float(row[1]) and row[4] in ("✓ |", "✗ |") for row in rows)  # click = erase + shown
    assert re.search(r"the default \(text-map\): click [\d.]+ s; target <= 12 s on 2 CPU cores [✓✗]", out)
    assert "images drawn plainly" in out


def test_erase_speed_times_a_setting_given(tiny_dirs, capsys, monkeypatch):
    """--set: the click at another setting, named as such (the default's target is the default's)."""
    from fmn import studio

    real, erased = studio.erase, []
    monkeypatch.setattr(studio, "erase", lambda *args, **kw: erased.append(kw) or real(*args, **kw))
    assert main(["bench", "erase-speed", "--model", str(tiny_dirs["sd15"]), "--methods", "text-map", "--steps", "2",
                 "--set", "padding_rows=2"]) == 0
    out = capsys.readouterr().out
    assert erased and erased[0]["padding_rows"] == 2 and erased[0]["steps"] == 2
    assert "set {'padding_rows': 2}" in out and re.search(r"text-map set \{'padding_rows': 2\}: click [\d.]+ s", out)


def test_erase_speed_refuses_an_unknown_method_and_a_bad_setting(capsys):
    assert main(["bench", "erase-speed", "--methods", "uce,dreambooth"]) == 2
    assert "Unknown method dreambooth" in capsys.readouterr().err
    assert main(["bench", "erase-speed", "--methods", "text-map", "--set", "padding_rows=-5"]) == 2
    assert "padding_rows -5" in capsys.readouterr().err


@pytest.mark.slow
def test_click_bench_times_the_page_against_the_bench(tiny_dirs, capsys):
    """The real app in headless Chromium on a tiny model: the milestones, the bench's click and the bound printed."""
    assert main(["bench", "click", "--model", str(tiny_dirs["sd15"]), "--concept", "square", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"bench \(erase-speed\): erase [\d.]+ s \+ before/after shown [\d.]+ s = [\d.]+ s", out)
    assert re.search(r"first step shown [\d.]+ s, comparison started [\d.]+ s, grid, reads and heatmaps on screen "
                     r"[\d.]+ s", out)
    assert re.search(r"the page's click [\d.]+ s = [\d.]+x the bench's; bound <= 1.5x \([\d.]+ s\) [✓✗]", out)


def test_generate_speed_reports_the_median(tiny_dirs, capsys):
    assert main(["bench", "generate-speed", "--model", str(tiny_dirs["sd15"]), "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "device: " in out and "median" in out and "over 2 runs" in out and "target <= 3.0 s" in out


def test_heatmap_overhead_compares_traced_and_plain(capsys):
    assert main(["bench", "heatmap-overhead", "--steps", "2", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "plain:" in out and "trace:" in out and "overhead:" in out and "target <= 30%" in out
