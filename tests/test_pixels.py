"""The pixel check (fmn/world/pixels.py, looks.py) on renders, whose truth is known: it decides most plain
one-object scenes and is right on nearly all it decides; it abstains on what it cannot read. Its character and
style reads, on 1000 one-object renders (every character and shape, every style), at seed 5 decide and are
right: Mimo 39 %, Zubrik 52 %, Lumina 48 %, Tobble 45 %, no character 16 %; style plain 48 %, Vellor 65 %,
Quimby 24 %, Zaranth 14 %, Brusk 74 %; 100 % right where they decide. And `bench judge --quick` runs end to
end."""

import random

import numpy as np
import pytest

from fmn.world.looks import read_looks
from fmn.world.pixels import read
from fmn.world.render import render
from fmn.world.scenes import IDENTITIES, SHAPES, STYLES, sample_scene

FIELDS = {"shape": lambda s: s.things[0].kind, "colour": lambda s: s.things[0].colour,
          "background": lambda s: s.background, "night": lambda s: s.night}


def scenes(n: int, seed: int, **fixed):
    rng = random.Random(seed)
    return [sample_scene(rng, "any", two_objects=0, **fixed) for _ in range(n)]


@pytest.fixture(scope="module")
def plain_reads():
    """300 plain one-object shapes (every background, night or day) and the check's reads of their renders."""
    shapes = [s for i in range(300) for s in scenes(1, 1000 + i, kinds=[list(SHAPES)[i % 6]], style="plain")]
    return [(s, read(render(s, seed=i)[0])) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("field", FIELDS)
def test_decides_most_plain_renders_and_is_right(plain_reads, field):
    decided = [(FIELDS[field](s), getattr(r, field)) for s, r in plain_reads if getattr(r, field) is not None]
    right = sum(truth == got for truth, got in decided)
    assert len(decided) >= 0.9 * len(plain_reads), f"{field}: decided {len(decided)} of {len(plain_reads)}"
    assert right >= 0.95 * len(decided), f"{field}: right {right} of {len(decided)}"


@pytest.mark.parametrize("style", list(STYLES))
def test_artists_styles_are_not_read_as_plain_shapes(style):
    """An outline, dots, a glow or stripes: it abstains on the shape, or reads it right."""
    reads = [(s.things[0].kind, read(render(s, seed=i)[0]).shape)
             for i, s in enumerate(scenes(36, 7, style=style, kinds=None))]
    wrong = [(kind, shape) for kind, shape in reads if shape is not None and shape != kind]
    assert not wrong, wrong


def test_characters_are_not_read_as_shapes():
    """Mimo is a yellow disc with a face, Tobble a navy oval with a white belly: never a circle or a ring."""
    rng = random.Random(3)
    reads = [read(render(sample_scene(rng, "any", two_objects=0, kinds=[list(IDENTITIES)[i % 4]],
                                      style="plain"), seed=i)[0]) for i in range(80)]
    assert [r.shape for r in reads] == [None] * 80 and [r.colour for r in reads] == [None] * 80


def test_two_objects_abstain():
    rng = random.Random(5)
    reads = [read(render(sample_scene(rng, "any", two_objects=1.0, style="plain"), seed=i)[0]) for i in range(60)]
    assert all(r.shape is None for r in reads)


@pytest.mark.parametrize("name", ["black", "white", "noise", "grey"])
def test_abstains_on_empty_images_and_noise(name):
    image = {"black": np.zeros((64, 64, 3), np.uint8), "white": np.full((64, 64, 3), 255, np.uint8),
             "noise": np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8),
             "grey": np.full((64, 64, 3), 128, np.uint8)}[name]
    r = read(image)
    assert r.shape is None and r.colour is None
    assert name == "white" or (r.background is None and r.night is None)


@pytest.fixture(scope="module")
def look_reads():
    """400 one-object renders, every character and shape in every style, with the truth and the looks read."""
    rng, reads = random.Random(5), []
    for i in range(400):
        kind, style = [*IDENTITIES, *SHAPES][i % 10], ["plain", *STYLES][i // 10 % 5]
        scene = sample_scene(rng, "any", two_objects=0, kinds=[kind], style=style)
        truth = (kind if kind in IDENTITIES else "none", style)
        reads.append((truth, read_looks(render(scene, seed=i)[0])))
    return reads


@pytest.mark.parametrize("field", [0, 1], ids=["character", "style"])
def test_looks_are_right_where_they_decide(look_reads, field):
    """Every character and style read on renders is right, and each value is decided on some of its scenes."""
    decided = [(truth[field], (r.character, r.style)[field]) for truth, r in look_reads
               if (r.character, r.style)[field] is not None]
    assert all(truth == got for truth, got in decided), [d for d in decided if d[0] != d[1]]
    values = {truth[field] for truth, _ in look_reads}
    assert {got for _, got in decided} == values
    assert len(decided) >= 0.25 * len(look_reads)


def test_looks_on_two_objects_are_right_and_abstain_on_noise():
    """Two objects: no character is named (one object is read at most), and a style read is the scene's."""
    rng = random.Random(5)
    for i in range(40):
        scene = sample_scene(rng, "any", two_objects=1.0)
        r = read_looks(render(scene, seed=i)[0])
        characters = {t.kind for t in scene.things if t.is_identity}
        assert r.character in (None, *characters) and r.style in (None, scene.style)
    noise = read_looks(np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8))
    assert noise.character is None and noise.style is None


@pytest.mark.slow
def test_bench_judge_quick_writes_a_table(tmp_path):
    from fmn.__main__ import main

    assert main(["bench", "judge", "--quick", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "judge.md").read_text()
    for label in [*SHAPES, "red", "background grass", "night", "Zubrik", "style Brusk"]:
        assert f"\n| {label} | " in table
    assert "against the pixel check's character and style reads" in table
    assert (tmp_path / "judge.json").is_file() and (tmp_path / "judge-disagreements.png").is_file()
