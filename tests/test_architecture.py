"""The package's shape, checked from its source: imports only run down the floors README's
"Architecture" section describes, and no code outside a method tells methods apart by name."""

import ast
from pathlib import Path

import pytest

from fmn.erase import METHODS, KeepSet, make_method
from fmn.erase.method import ErasureMethod, MethodConfig

PACKAGE = Path(__file__).resolve().parent.parent / "fmn"
# Lowest first: a module may import from its own floor and the floors below it, never above.
FLOORS = [
    ("fmn.world.scenes", "fmn.world.world", "fmn.world.judge", "fmn.world.pixels", "fmn.world.looks",
     "fmn.world.reading", "fmn.world.tokenizer", "fmn.world.render"),
    # load; run independent jobs here or on Ray; write files whole
    ("fmn.models", "fmn.tiny", "fmn.single_file", "fmn.sweep", "fmn.files"),
    # generate, trace, draw the maps and grids
    ("fmn.generate", "fmn.attention", "fmn.transformer_attention", "fmn.heatmaps", "fmn.panels", "fmn.diffusion"),
    ("fmn.patch", "fmn.export"),  # patches as adapters, the frozen reference; out to other tools and back in
    ("fmn.inversion",),
    ("fmn.erase",),  # erase: the loop and the methods
    ("fmn.attack", "fmn.evaluate", "fmn.collateral", "fmn.figure"),
    ("fmn.studio", "fmn.sessions"),  # one model shared by every caller; visitors' sessions on it
    ("fmn.__main__", "fmn.cli", "fmn.bench", "fmn.recipe"),  # command lines and tools
]


def floor(module: str) -> int:
    """The floor of the longest prefix that names the module."""
    matches = [(len(prefix), i) for i, names in enumerate(FLOORS) for prefix in names
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module} is on no floor: add it to FLOORS"
    return max(matches)[1]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text())


def imports(name: str, path: Path, tree: ast.AST) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found |= {target} if node.module else {f"{target}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {t for t in found if t == "fmn" or t.startswith("fmn.")}


def test_imports_only_run_down_the_floors():
    upward = [f"{name} (floor {floor(name)}) imports {target} (floor {floor(target)})"
              for name, path, tree in modules() if name != "fmn"
              for target in imports(name, path, tree) if floor(target) > floor(name)]
    assert not upward, upward


def test_no_erasure_reads_the_models_world():
    """World.json serves the judge and the benchmark: the methods, the loop and what they hold (keep.py) read
    nothing of it. Only `erase` and `--separate` read the embedded model's vocabulary, to refuse unknown words."""
    readers = [f"{name} imports {target}" for name, path, tree in modules()
               if name.startswith("fmn.erase.") and name != "fmn.erase.separate"
               for target in imports(name, path, tree)
               if target.startswith("fmn.world") or target == "fmn.models.world_of"]
    assert not readers, readers


def test_no_code_tells_methods_apart_by_name():
    """No `== "<method name>"` comparison, no `in ("uce", ...)`, no `hasattr(..., "solve")` anywhere in fmn/."""
    names = set(METHODS)
    found = []
    for name, _, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                constants = [c for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in names]
                if constants:
                    found.append(f"{name}:{node.lineno} compares with {constants[0].value!r}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("hasattr", "getattr") \
                    and any(isinstance(a, ast.Constant) and a.value in ("solve", "inversion_steps") for a in node.args):
                found.append(f"{name}:{node.lineno} asks for {node.args[1].value!r}")
    assert not found, found


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_declares_what_it_is(name):
    cls = METHODS[name]
    assert issubclass(cls, ErasureMethod) and cls.name == name and issubclass(cls.Config, MethodConfig)
    assert isinstance(cls.trains, bool) and isinstance(cls.on_transformers, bool)
    assert all(hasattr(cls, hook) for hook in (("targets", "references", "loss") if cls.trains else ("solve",)))


def test_esd_x_and_esd_u_are_two_methods_with_one_objective():
    x, u = METHODS["esd-x"], METHODS["esd-u"]
    assert x.loss is u.loss and x.Config is u.Config and x.targets is not u.targets
    assert "variant" not in {f for f in vars(x.Config()).keys()}


HELD = KeepSet(["square", "Mimo"], ["a green square on grass"], ["a red circle on grass"], ["disc"])


@pytest.mark.parametrize("name", list(METHODS))
def test_what_is_held_becomes_the_methods_preserve_and_an_empty_list_means_none(name):
    assert make_method(name, ["circle"], held=HELD).config.preserve == ["square", "Mimo"]
    assert make_method(name, ["circle"], held=HELD, preserve=[]).config.preserve == []
    assert make_method(name, ["circle"]).config.preserve == []  # nothing found: nothing in particular held


@pytest.mark.parametrize("name", [n for n, cls in METHODS.items() if "keep_prompts" in cls.Config.__dataclass_fields__])
def test_methods_that_read_whole_prompts_take_the_held_prompts(name):
    """The keep prompts and the concept in context come from what is held; a replacement lands on its guide
    (no push past it unless asked); text-map pushes every concept's later rows, the closed forms none unless named."""
    config = make_method(name, ["circle", "night"], replace_with="square", held=HELD).config
    assert config.prior == (["circle", "night"] if name == "text-map" else []) and config.push_after == 0
    assert config.keep_prompts == ["a green square on grass"] and config.in_context == ["a red circle on grass"]
    assert config.push == 0 and make_method(name, ["circle"], held=HELD).config.push > 0
    assert make_method(name, ["circle"], replace_with="square", push=1.5).config.push == 1.5
    assert make_method(name, ["circle"]).config.keep_prompts == make_method(name, ["circle"]).config.in_context == []
    assert make_method(name, ["circle"], held=HELD, keep_prompts=[]).config.keep_prompts == []
    assert make_method(name, ["circle"], prior=["circle"]).config.prior == ["circle"]
