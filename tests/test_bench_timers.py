"""The small timing benchmarks (`python -m fmn bench erase-speed | generate-speed | heatmap-overhead`)
run on a tiny model and print what they measured, on which device, against which target."""

from fmn.__main__ import main


def test_erase_speed_times_the_apps_erase_click(tiny_dirs, capsys):
    assert main(["bench", "erase-speed", "--model", str(tiny_dirs["sd15"]), "--method", "uce"]) == 0
    out = capsys.readouterr().out
    assert "device: " in out and "uce erasure of 'circle'" in out and "before/after (30 images)" in out
    assert "target <= 60 s on 2 CPU cores" in out


def test_generate_speed_reports_the_median(tiny_dirs, capsys):
    assert main(["bench", "generate-speed", "--model", str(tiny_dirs["sd15"]), "--runs", "2"]) == 0
    out = capsys.readouterr().out
    assert "device: " in out and "median" in out and "over 2 runs" in out and "target <= 3.0 s" in out


def test_heatmap_overhead_compares_traced_and_plain(capsys):
    assert main(["bench", "heatmap-overhead", "--steps", "2", "--runs", "1"]) == 0
    out = capsys.readouterr().out
    assert "plain:" in out and "trace:" in out and "overhead:" in out and "target <= 30%" in out
