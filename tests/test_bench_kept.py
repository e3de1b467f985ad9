"""`bench kept`: what an erasure takes from the prompts it should keep, part by part, on `bench quality`'s kept sets."""

import argparse
import json

import pytest

from fmn.__main__ import main
from fmn.bench import kept
from fmn.bench.kept import PARTS, losses, render
from fmn.bench.protocol import SPLITS, Prompt, kept_whole, missing
from fmn.world.judge import COLOUR_NAMES, SUBJECTS, Verdict
from fmn.world.scenes import Scene, Thing

from conftest import ROOT

SCENE = Scene([Thing("square", "green", 32, 32, 20), Thing("Mimo", None, 20, 20, 12)], style="Quimby",
              background="sand")
PROMPT = Prompt("a green square and Mimo on sand in the style of Quimby", "object", "square", SCENE)


def verdict(**changes) -> Verdict:
    seen = dict(subjects={"square": 0.9, "Mimo": 0.9}, colours={"green": 0.8}, style={"plain": 0.1, "Quimby": 0.9},
                background={"plain": 0.1, "sand": 0.9}, night=0.0) | changes
    for table in ("subjects", "colours"):
        seen[table] = {k: seen[table].get(k, 0.0) for k in (SUBJECTS if table == "subjects" else COLOUR_NAMES)}
    return Verdict(**seen)


def test_what_a_kept_image_lost_is_named_part_by_part():
    assert missing(verdict(), PROMPT, {"circle"}) == [] and kept_whole(verdict(), PROMPT, {"circle"})
    lost = {"shape": dict(subjects={"Mimo": 0.9}), "character": dict(subjects={"square": 0.9}),
            "colour": dict(colours={"blue": 0.9}), "style": dict(style={"plain": 0.9, "Quimby": 0.1}),
            "background": dict(background={"grass": 0.9, "sand": 0.1}), "night": dict(night=0.9)}
    assert set(lost) == set(PARTS)
    for part, change in lost.items():
        assert missing(verdict(**change), PROMPT, {"circle"}) == [part], part
        assert not kept_whole(verdict(**change), PROMPT, {"circle"})
    # several parts at once, each named; what belongs to the erased concept is not asked for
    assert missing(verdict(colours={}, night=0.9), PROMPT, {"circle"}) == ["colour", "night"]
    assert missing(verdict(style={"plain": 0.9, "Quimby": 0.1}, subjects={"square": 0.9}), PROMPT,
                   {"Quimby", "Mimo"}) == []


def test_losses_count_images_broken_and_fixed_and_leave_uncertain_ones_out():
    whole, styled_away = verdict(), verdict(style={"plain": 0.9, "Quimby": 0.1})
    before = [whole, whole, styled_away, None, whole]
    after = [whole, styled_away, whole, whole, None]
    r = losses(before, after, [PROMPT] * 5, {"circle"})
    assert (r["broken"], r["fixed"], r["uncertain"]) == (1, 1, 2)
    assert r["parts"] == {p: int(p == "style") for p in PARTS}
    assert r["kept_before"] == pytest.approx(3 / 4) and r["kept_after"] == pytest.approx(3 / 4)
    assert r["broken_prompts"] == [PROMPT.text]


def test_the_command_writes_its_table_from_cells_it_keeps(tmp_path, capsys):
    args = ["bench", "kept", "--quick", "--methods", "uce", "--concepts", "triangle", "--out", str(tmp_path)]
    assert main(args) == 0
    records = json.loads((tmp_path / "kept-quick.json").read_text())
    (cell,) = records["cells"]
    assert (cell["kind"], cell["name"], cell["method"]) == ("object", "triangle", "uce")
    for key in ("in_kind", "cross_kind"):
        r = cell[key]
        assert 0 <= r["kept_before"] <= 1 and 0 <= r["kept_after"] <= 1
        assert len(r["broken_prompts"]) == r["broken"] <= 4 and r["fixed"] <= 4
        assert sum(r["parts"].values()) >= r["broken"]  # each broken image lost at least one part
    table = (tmp_path / "kept-quick.md").read_text()
    assert "| triangle, uce | in-kind |" in table and "| object, uce | cross-kind |" in table
    capsys.readouterr()
    assert main(args) == 0  # again: the cell is read back, nothing is erased
    assert "[1/1] done before" in capsys.readouterr().out
    assert main(["bench", "kept", "--methods", "nope", "--out", str(tmp_path)]) == 2


def test_a_concepts_unedited_images_are_drawn_once_for_every_method(embedded, judge, monkeypatch):
    """Two methods' cells of one concept: the unedited images drawn for the first, read again for the second."""
    calls = []
    real = kept.generate_many
    monkeypatch.setattr(kept, "generate_many", lambda pipe, texts, *a: calls.append(texts) or real(pipe, texts, *a))
    parser = argparse.ArgumentParser()
    kept.add_arguments(parser)
    args = parser.parse_args(["--quick", "--methods", "uce,rece", "--concepts", "triangle"])
    state = (embedded, judge, {})
    first, second = (kept.cell(state, job.spec) for job in kept._jobs(args, ["uce", "rece"], SPLITS["tune"]))
    assert len(calls) == 3 and calls[0] == calls[1] == calls[2]  # before once, then after each erasure
    assert first[0]["in_kind"]["kept_before"] == second[0]["in_kind"]["kept_before"]


def test_set_reaches_every_cell_and_a_bad_setting_is_refused_before_any_runs(tmp_path):
    parser = argparse.ArgumentParser()
    kept.add_arguments(parser)
    args = parser.parse_args(["--split", "tune", "--methods", "text-map,fmn", "--set", "lr=0.002"])
    jobs = kept._jobs(args, ["text-map", "fmn"], SPLITS["tune"])
    assert len(jobs) == 16 and all(job.spec["settings"]["lr"] == 0.002 for job in jobs)  # 8 concepts, 2 methods
    # the kind's own settings stay beside --set's (FMN words a style as `bench quality` words it)
    assert all("template" in job.spec["settings"] for job in jobs if job.spec["kind"] == "style"
               and job.spec["method"] == "fmn")
    assert main(["bench", "kept", "--set", "keep_weight=-1", "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("table", sorted(p.relative_to(ROOT).as_posix()
                                         for p in (ROOT / "benchmarks" / "results").rglob("kept*.json")))
def test_a_committed_kept_table_is_what_its_json_renders(table, tmp_path):
    committed = ROOT / table
    copy = tmp_path / committed.name
    copy.write_text(committed.read_text())
    render(copy)
    assert copy.with_suffix(".md").read_text() == committed.with_suffix(".md").read_text()
