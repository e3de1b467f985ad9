"""The quality benchmark's quick setting, run once through the command line on one concept (the
benchmark's code is the same for every concept and method; the methods themselves are judged in
test_erasure_judged.py): every method's row, sane numbers, the files, the attack."""

import json
import subprocess
import sys

import pytest

from fmn.__main__ import main
from fmn.bench.protocol import Prompt, found, kept_whole, mass_probes, probes
from fmn.bench.quality import (
    DEFAULT_METHODS,
    MASS,
    Row,
    best_overall,
    best_per_kind,
    given_settings,
    markdown,
    method_settings,
    render,
)
from fmn.world.judge import COLOUR_NAMES, SUBJECTS, Verdict
from fmn.world.scenes import COLOURS, Scene, Thing

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
            assert {r["method"] for r in rows if r["concept"] == name} == {"unedited", *DEFAULT_METHODS}, name
    for r in rows:
        unedited = r["method"] == "unedited"
        for key in ("UA", "IRA", "CRA", "leak", "attack"):
            value = r[key]
            assert value is None if (key == "attack" and unedited) else 0 <= value <= 1, (r, key)
        base = next(b for b in rows if b["concept"] == r["concept"] and b["method"] == "unedited")
        for key in ("IRA", "CRA"):  # points lost: against the unedited row of the same concept
            assert (r[f"{key}_lost"] is None if unedited
                    else abs(r[f"{key}_lost"] - (base[key] - r[key])) < 1e-9), (r, key)
        if not unedited:
            assert r["seconds"] >= 0 and r["patch_kb"] > 0
    assert {b["kind"] for b in records["best"]} == set(CONCEPTS)
    for name in ("quality-quick.md", "quality-quick.png", "quality-quick-samples.png"):
        assert (out / name).stat().st_size > 0
    assert "| kind | method |" in stdout and records["device"]
    table = (out / "quality-quick.md").read_text()
    # the tables again, from the JSON
    assert main(["bench", "quality", "--render", str(out / "quality-quick.json")]) == 0
    assert (out / "quality-quick.md").read_text() == table and "Overall, every concept" in table


@pytest.mark.slow
def test_the_attack_finds_the_concept_at_least_as_often_as_its_plain_prompt(quick):
    """Over every erasure of the run (4 prompts each: one row alone is too coarse to compare).
    The attacker keeps the best words its eye saw, the name's own among them, so it cannot end weaker."""
    _, records, _ = quick
    erased = [r for r in records["rows"] if r["method"] != "unedited"]
    attacked, plain = sum(r["attack"] for r in erased), sum(1 - r["UA"] for r in erased)
    assert attacked >= plain, [(r["method"], r["concept"], r["attack"], 1 - r["UA"]) for r in erased]


def test_a_target_met_exactly_is_met():
    """CRA lost 0 and 10 points on two objects: a mean of 5 points meets the 5-point target (5.000000000000004 in
    floats)."""
    rows = [Row("rece", "object", c, 1.0, 0.8, 0.7, 0.0, 0.0, 0.05, 0.8 - 0.7, 0.2, None, None)
            for c in ("triangle", "heart")]
    rows[0].CRA_lost = 0.0
    met = best_per_kind(rows)[0]["met"]
    assert met["CRA_lost"] and met["IRA_lost"] and met["UA"], met
    rows[1].CRA_lost = 0.15  # 7.5 points on the mean: missed
    assert not best_per_kind(rows)[0]["met"]["CRA_lost"]


def test_the_table_gives_every_method_per_kind_with_the_best_in_bold():
    """Two methods on two kinds: four lines of means against the targets; the kind's best (UA less the points
    lost) in bold, whichever comes first."""
    def row(method, kind, concept, ua, lost):
        return Row(method, kind, concept, ua, 0.5, 0.5, 0.0, 0.1, lost, lost, 10.0, None, None, swap=0.9)

    rows = [row("uce", "object", "circle", 0.80, 0.02), row("text-map", "object", "circle", 0.99, 0.10),
            row("uce", "style", "Vellor", 0.97, 0.01), row("text-map", "style", "Vellor", 0.90, 0.20)]
    table = markdown(rows, "cpu", {})
    assert "| object | uce | 80% ✗ | 2 pts ✓ | 2 pts ✓ | 0% ✓ | 10% ✓ | 90% ✗ |" in table
    assert "| object | **text-map** | 99% ✓ | 10 pts ✗ | 10 pts ✗ |" in table
    assert "| style | **uce** | 97% ✓ |" in table and "| style | text-map | 90% ✗ |" in table
    assert [(b["kind"], b["method"]) for b in best_per_kind(rows)] == [("object", "text-map"), ("style", "uce")]


def test_probes_use_held_out_wording_and_the_right_paraphrases():
    p = probes("object", "circle", 6)
    assert (all("circle" in q.text for q in p.erased)
            and all("disc" in q.text and "circle" not in q.text for q in p.paraphrase))
    assert all(q.name != "circle" and q.kind == "object" for q in p.in_kind)
    assert all(q.kind in ("identity", "style") for q in p.cross_kind)
    coloured = lambda q: any(f"{c} circle" in q.text for c in COLOURS)  # noqa: E731
    assert [coloured(q) for q in p.erased] == [True, True, True, False, True, True]  # one in four as a user types it
    assert all(coloured(q) for q in probes("object", "circle", 6, bare=False).erased)
    night = probes("scene", "night", 8)
    assert all("at night" in q.text for q in night.erased)
    assert (not any("at night" in q.text for q in night.paraphrase)
            and all(q.kind == "background" for q in night.in_kind))


def test_a_kept_prompt_counts_only_if_everything_it_asks_for_is_there():
    """A colour shift (the square drawn blue when a green one was asked for) is a loss, though the square is found."""
    scene = Scene([Thing("square", "green", 32, 32, 20)], style="Quimby", background="sand")
    prompt = Prompt("a green square on sand in the style of Quimby", "object", "square", scene)

    def verdict(**changes):
        seen = dict(subjects={"square": 0.9}, colours={"green": 0.8}, style={"plain": 0.1, "Quimby": 0.9},
                    background={"plain": 0.1, "sand": 0.9}, night=0.0) | changes
        for table in ("subjects", "colours"):
            seen[table] = {k: seen[table].get(k, 0.0) for k in (SUBJECTS if table == "subjects" else COLOUR_NAMES)}
        return Verdict(**seen)

    assert kept_whole(verdict(), prompt, {"circle"})
    assert found(verdict(colours={"blue": 0.9}), prompt)  # the name alone misses the shift
    for shifted in (dict(colours={"blue": 0.9}), dict(style={"plain": 0.9, "Quimby": 0.1}),
                    dict(background={"plain": 0.1, "sand": 0.2, "grass": 0.7}), dict(night=0.9), dict(subjects={})):
        assert not kept_whole(verdict(**shifted), prompt, {"circle"}), shifted
    # what belongs to an erased concept is not asked for: erasing Quimby, a plain square is kept whole
    assert kept_whole(verdict(style={"plain": 0.9, "Quimby": 0.1}), prompt, {"Quimby"})


def test_mass_probes_keep_every_other_concept_in_scenes_without_the_erased_ones():
    erased, kept = mass_probes(MASS, 6)
    assert list(erased) == MASS and all(len(ps) == 6 for ps in [*erased.values(), *kept.values()])
    assert set(kept) == {"circle", "square", "ring", "Mimo", "Zubrik", "Quimby", "Zaranth", *COLOURS,
                         "grass", "sand", "water"}
    for name, prompts in kept.items():
        for p in prompts:
            assert p.name == name and name in p.text, p
            assert not ({t.kind for t in p.scene.things} & set(MASS) or p.scene.style in MASS or p.scene.night), p
    assert erased["Tobble"][0].text == probes("identity", "Tobble", 6).erased[0].text


def test_mass_erasure_writes_its_table(tmp_path):
    """The --mass section end to end with the closed form on 2 prompts a set (its figures are the benchmark's)."""
    done = subprocess.run([sys.executable, "-m", "fmn", "bench", "quality", "--quick", "--mass", "--methods", "uce",
                           "--prompts", "2", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    records = json.loads((tmp_path / "quality-mass-quick.json").read_text())
    (run,) = records["runs"]
    assert run["method"] == "uce" and set(run["UA"]) == set(MASS) and set(run["kept"]) == set(records["kept"])
    assert all(abs(run["kept_lost"][c] - (records["unedited"]["kept"][c] - run["kept"][c])) < 1e-9 for c in run["kept"])
    table = (tmp_path / "quality-mass-quick.md").read_text()
    assert "| uce |" in table and "Kept: presence" in table and "| Zaranth |" in table


def test_the_default_method_is_the_one_the_committed_table_ranks_first():
    """The best becomes the default, chosen on the tune split: its table (benchmarks/results/quality-tune.json),
    ranked by the benchmark's rule, puts the default first; a rerun that ranks another first must move the default."""
    from fmn.erase import DEFAULT_METHOD

    table = json.loads((ROOT / "benchmarks" / "results" / "quality-tune.json").read_text())
    ranked = best_overall([Row(**row) for row in table["rows"]])
    assert {m for m, _ in ranked} >= set(DEFAULT_METHODS) and ranked[0][0] == DEFAULT_METHOD, ranked


@pytest.mark.parametrize("table", sorted(p.relative_to(ROOT / "benchmarks" / "results").as_posix()
                                         for p in (ROOT / "benchmarks" / "results").rglob("quality*.json")
                                         if "rows" in json.loads(p.read_text())))
def test_every_committed_table_is_what_its_json_renders(table, tmp_path):
    """A committed table is written by the benchmark from its rows (`--render`), never edited by hand."""
    committed = ROOT / "benchmarks" / "results" / table
    copy = tmp_path / committed.name
    copy.write_text(committed.read_text())
    render(copy)
    assert copy.with_suffix(".md").read_text() == committed.with_suffix(".md").read_text()


def test_a_setting_given_reaches_every_erasure_of_the_run(tmp_path):
    """--set: how a table's row at another setting is re-run; its cells are their own (the setting is in their spec)."""
    assert given_settings(["push_after=0", 'prior=["circle"]', "guide=square"], ["uce", "text-map"]) == {
        "push_after": 0, "prior": ["circle"], "guide": "square"}
    args = ["bench", "quality", "--methods", "uce", "--concepts", "triangle", "--prompts", "1", "--steps", "2",
            "--attack-steps", "1", "--out", str(tmp_path)]
    assert main([*args, "--set", "push=0"]) == 0
    cell = json.loads((tmp_path / "quality-cells" / "triangle-uce.json").read_text())
    records = json.loads((tmp_path / "quality-triangle.json").read_text())
    assert cell["spec"]["settings"] == {"push": 0} and records["settings"]["set"] == {"push": 0}
    assert main(args) == 0  # the plain run beside it: its uce cell runs again, at the default push
    assert json.loads((tmp_path / "quality-cells" / "triangle-uce.json").read_text())["spec"]["settings"] == {}


def test_a_setting_given_for_one_method_reaches_only_that_methods_erasures():
    """--set METHOD.KEY=VALUE: how a table of several methods re-runs one of them at another setting."""
    given = given_settings(["text-map.frozen_share=0", "push_after=0.5"], ["uce", "text-map"])
    assert method_settings("text-map", "object", False, given) == {"push_after": 0.5, "frozen_share": 0}
    assert method_settings("uce", "object", False, given) == {"push_after": 0.5}
    with pytest.raises(ValueError, match="rece is not among"):
        given_settings(["rece.push=1"], ["uce", "text-map"])
    with pytest.raises(ValueError, match="uce has no setting frozen_share"):
        given_settings(["frozen_share=0"], ["uce", "text-map"])


def test_an_erasure_from_images_is_a_cell_of_its_own_beside_the_same_unedited_cell():
    """--from-images: the erasure's spec names its images (a name-only cell is never read for it, nor it for one);
    the unedited cell is the very same, read from the store by both runs."""
    import argparse

    from fmn.bench.protocol import UPLOAD_SEED
    from fmn.bench.quality import add_arguments, concept_jobs

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    concepts = {"object": ["triangle"]}
    by_name, from_images = (concept_jobs(parser.parse_args(extra), ["text-map"], concepts, {}, {"split": "tune"})
                            for extra in ([], ["--from-images"]))
    assert by_name[0] == from_images[0] and by_name[0].key == "triangle-unedited"
    assert "images" not in by_name[1].spec and by_name[1].key == "triangle-text-map"
    assert from_images[1].key == "triangle-text-map-from-images"
    assert from_images[1].spec["images"] == {"count": 8, "first_seed": UPLOAD_SEED}
    assert {k: v for k, v in from_images[1].spec.items() if k not in ("images", "label")} == {
        k: v for k, v in by_name[1].spec.items() if k != "label"}


def test_an_erasure_from_unnamed_images_erases_the_placeholder_and_is_read_on_the_concepts_prompts(tmp_path,
                                                                                                   monkeypatch):
    """--name-withheld: the erasure is given the images and PLACEHOLDER, never the concept's name; the sets are the
    concept's (the same unedited cell); the rows and files say so."""
    import fmn.bench.quality as quality

    erased = []
    real_erase = quality.erase
    monkeypatch.setattr(quality, "erase", lambda pipe, concepts, *a, **k: erased.append((concepts, a[1] is not None))
                        or real_erase(pipe, concepts, *a, **k))
    args = ["bench", "quality", "--methods", "uce", "--concepts", "triangle", "--prompts", "1", "--steps", "2",
            "--attack-steps", "1", "--from-images", "1", "--out", str(tmp_path)]
    assert main([*args, "--name-withheld"]) == 0
    assert erased == [([quality.PLACEHOLDER], True)]
    records = json.loads((tmp_path / "quality-from-unnamed-images-triangle.json").read_text())
    assert [r["method"] for r in records["rows"]] == ["unedited", "uce from unnamed images"]
    assert records["settings"]["name"] == "withheld"
    assert main(args) == 0  # by name beside it: the unedited cell read back, the erasure run with the name
    assert erased[1:] == [(["triangle"], True)]
    assert {p.name for p in (tmp_path / "quality-cells").glob("*.json")} == {
        "triangle-unedited.json", "triangle-uce-from-images.json", "triangle-uce-from-unnamed-images.json"}
    assert main(["bench", "quality", "--name-withheld", "--out", str(tmp_path)]) == 2  # without --from-images


def test_an_unknown_method_or_concept_is_one_line_and_status_2(tmp_path, capsys):
    base = ["bench", "quality", "--quick", "--out", str(tmp_path)]
    for extra, message in ((["--methods", "fmn,dreambooth"], "Unknown method dreambooth"),
                           (["--concepts", "triangle,dragon"], "Unknown concept dragon: choose from"),
                           (["--mass", "--concepts", "triangle"], "--mass erases its own list"),
                           (["--methods", "uce", "--set", "passes=3"], "--set: uce has no setting passes"),
                           (["--methods", "text-map", "--set", "push_after=20"],
                            "--set: push_after 20 is out of range"),
                           (["--set", "push_after"], "write KEY=VALUE"),
                           (["--from-images", "0"], "--from-images 0: give 1 to 20 images"),
                           (["--mass", "--from-images"], "leave --concepts and --from-images out")):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_settings_are_ranked_on_their_means_over_the_erasure_seeds(tmp_path, capsys):
    """bench seeds: each setting's tables (one per erasure seed) pooled and ranked by the default's rule, each seed's
    means beside; a table of another split or of other concepts is refused."""
    seeds = [ROOT / "benchmarks" / "results" / "text-map-seed" / str(s) / "quality-tune.json" for s in (0, 1, 2)]
    worse = []
    for path in seeds:  # a setting that erases 3 images of 20 fewer on every concept of every seed
        records = json.loads(path.read_text())
        for row in records["rows"]:
            if row["method"] != "unedited":
                row["UA"] -= 0.15
        worse.append(tmp_path / f"worse-{path.parent.name}.json")
        worse[-1].write_text(json.dumps(records))
    out = tmp_path / "seeds.md"
    args = ["bench", "seeds", "--table", "worse", *map(str, worse), "--table", "default", *map(str, seeds)]
    assert main([*args, "--out", str(out)]) == 0
    lines = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split(" | ")[0] for line in lines] == ["| default", "| worse"]
    means = [best_overall([Row(**r) for r in json.loads(p.read_text())["rows"]])[0][1] for p in seeds]
    assert f"{sum(m['UA'] for m in means) / 3:.0%}" == lines[0].split(" | ")[2]
    assert lines[0].split(" | ")[-1].startswith(f"{means[0]['UA']:.0%} / {means[0]['attack']:.0%}")
    report = ROOT / "benchmarks" / "results" / "quality.json"
    assert main(["bench", "seeds", "--table", "default", *map(str, seeds), "--table", "report", str(report)]) == 2
    assert "not of the first setting's split" in capsys.readouterr().err
