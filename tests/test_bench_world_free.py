"""`python -m fmn bench world-free`: erasing circle on the embedded model without its world.json, per erasure seed."""

import json

from fmn.__main__ import main
from fmn.bench import world_free
from fmn.models import load_pipeline, world_of

from conftest import ROOT


def test_a_miss_is_the_concept_left_or_a_kept_label_lost_by_more_than_two_in_eight_of_the_certain_images():
    circle, square, green = ("a red circle", "circle"), ("a green square", "square"), ("a green square", "green")
    unedited = {circle: (8, 8), square: (7, 8), green: (6, 6)}
    assert world_free.misses(unedited, {circle: (1, 8), square: (5, 8), green: (3, 4)}) == []  # 6/6 less 2/8 = 3/4
    assert world_free.misses(unedited, {circle: (1, 4), square: (7, 8), green: (2, 3)}) == [circle, green]
    assert world_free.misses(unedited, {circle: (0, 8), square: (0, 0), green: (6, 6)}) == [square]  # none certain


def test_world_free_erases_on_a_copy_without_world_json_once_per_seed_and_writes_its_table(tmp_path, capsys,
                                                                                            monkeypatch):
    monkeypatch.setattr(world_free, "IMAGES", 1)
    monkeypatch.setattr(world_free, "STEPS", 2)
    seen = []
    counts = world_free.counts
    monkeypatch.setattr(world_free, "counts", lambda pipe, judge: seen.append(world_of(pipe)) or counts(pipe, judge))
    assert main(["bench", "world-free", "--seeds", "3,4", "--set", "steps=2", "--out", str(tmp_path)]) == 0
    records = json.loads((tmp_path / "world-free.json").read_text())
    assert [(r["method"], r["seed"]) for r in records["rows"]] == [("text-map", 3), ("text-map", 4)]
    assert records["settings"]["set"] == {"steps": 2} and len(records["labels"]) == len(records["unedited"]) == 10
    assert records["settings"]["judge"] == world_of(load_pipeline(device="cpu")).judge.fingerprint
    assert seen == [None, None, None]  # unedited, then each seed: the model has no world
    table = (tmp_path / "world-free.md").read_text()
    assert table in capsys.readouterr().out and "| unedited | — |" in table and "Met on" in table


def test_world_free_refuses_bad_seeds_an_unknown_method_and_a_bad_setting(capsys):
    assert main(["bench", "world-free", "--seeds", "0,one"]) == 2
    assert "--seeds 0,one: write erasure seeds as whole numbers" in capsys.readouterr().err
    assert main(["bench", "world-free", "--methods", "dreambooth"]) == 2
    assert "Unknown method dreambooth" in capsys.readouterr().err
    assert main(["bench", "world-free", "--set", "padding_rows=-5"]) == 2
    assert "padding_rows -5" in capsys.readouterr().err


def test_the_committed_tables_are_what_their_json_writes():
    """Each committed world-free table, written again from its JSON: the figures the README quotes."""
    tables = sorted((ROOT / "benchmarks" / "results" / "world-free").glob("*/world-free.json"))
    assert tables
    for path in tables:
        records = json.loads(path.read_text())
        unedited = {tuple(label): tuple(n) for label, n in zip(records["labels"], records["unedited"])}
        rows = [row | {"counts": [tuple(n) for n in row["counts"]]} for row in records["rows"]]
        for row in rows:
            after = dict(zip(unedited, row["counts"]))
            assert [list(k) for k in world_free.misses(unedited, after)] == row["misses"], path
        assert world_free.markdown(unedited, rows, records["settings"]) == path.with_suffix(".md").read_text()
