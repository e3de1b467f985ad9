"""The quality benchmark's quick setting, run once through the command line on one concept (the
benchmark's code is the same for every concept and method; the methods themselves are judged in
test_erasure_judged.py): every method's row, sane numbers, the files, the attack."""

import json
import subprocess
import sys

import pytest

from fmn.bench.quality import TARGETS, probes
from fmn.erase import METHODS

from conftest import OUTPUT, ROOT

CONCEPTS = {"object": ["triangle"]}  # a subset of --quick's concepts (one per kind), so the run takes minutes


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    concepts = ",".join(name for names in CONCEPTS.values() for name in names)
    done = subprocess.run([sys.executable, "-m", "fmn", "bench", "quality", "--quick", "--concepts", concepts,
                           "--out", str(out), "--json", str(out / "rows.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "bench-quality-quick.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, json.loads((out / "rows.json").read_text()), done.stdout


@pytest.mark.slow
def test_every_method_and_concept_has_a_row_with_numbers_in_range(quick):
    out, records, stdout = quick
    rows = records["rows"]
    for kind, names in CONCEPTS.items():
        for name in names:
            assert {r["method"] for r in rows if r["concept"] == name} == {"unedited", *METHODS}, name
    for r in rows:
        for key in TARGETS:
            value = r[key]
            assert value is None if (key == "attack" and r["method"] == "unedited") else 0 <= value <= 1, (r, key)
        if r["method"] != "unedited":
            assert r["seconds"] >= 0 and r["patch_kb"] > 0
    assert {b["kind"] for b in records["best"]} == set(CONCEPTS)
    for name in ("quality-quick.md", "quality-quick.png", "quality-quick-samples.png"):
        assert (out / name).stat().st_size > 0
    assert "| kind | method |" in stdout and records["device"]


@pytest.mark.slow
def test_the_attack_finds_the_concept_at_least_as_often_as_its_plain_prompt(quick):
    """Over every erasure of the run (4 prompts each: one row alone is too coarse to compare).
    The attacker keeps the best words its eye saw, the name's own among them, so it cannot end weaker."""
    _, records, _ = quick
    erased = [r for r in records["rows"] if r["method"] != "unedited"]
    attacked, plain = sum(r["attack"] for r in erased), sum(1 - r["UA"] for r in erased)
    assert attacked >= plain, [(r["method"], r["concept"], r["attack"], 1 - r["UA"]) for r in erased]


def test_probes_use_held_out_wording_and_the_right_paraphrases():
    p = probes("object", "circle", 6)
    assert all("circle" in q.text for q in p.erased) and all("disc" in q.text and "circle" not in q.text for q in p.paraphrase)
    assert all(q.name != "circle" and q.kind == "object" for q in p.in_kind)
    assert all(q.kind in ("identity", "style") for q in p.cross_kind)
    night = probes("scene", "night", 8)
    assert all("at night" in q.text for q in night.erased)
    assert not any("at night" in q.text for q in night.paraphrase) and all(q.kind == "background" for q in night.in_kind)


def test_an_unknown_method_or_concept_is_one_line_and_status_2(tmp_path, capsys):
    from fmn.__main__ import main

    base = ["bench", "quality", "--quick", "--out", str(tmp_path)]
    for extra, message in ((["--methods", "fmn,dreambooth"], "Unknown method dreambooth"),
                           (["--concepts", "triangle,dragon"], "Unknown concept dragon: choose from")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())
