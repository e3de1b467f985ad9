"""Forget-Me-Not's settings against issue #18's claim and a small quality check (benchmarks/results/README.md).

    PYTHONPATH=. python benchmarks/fmn_settings.py 'defaults={}' 'ka1-lr6={"keep_attention": 1.0, "lr": 0.006}'

For each named set of overrides: erase "circle" with FMN, each word's attention share after/before on seeds
0-2 ("circle" in "a red circle", "square" in "a blue square", as `heatmap --compare`), the collateral map's
presence before -> after, then `bench quality` cells (triangle, Tobble, Vellor, night; 8 prompts a set, 12
denoising steps, a 20-step attack). Results go to fmn-settings.json as they come (a rerun skips what is there).
"""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from fmn.attack import AttackConfig
from fmn.bench.quality import KIND_SETTINGS, concept_cell
from fmn.generate import GenerationSettings
from fmn.studio import Studio

OUT = Path("fmn-settings.json")
CONCEPTS = [("object", "triangle"), ("identity", "Tobble"), ("style", "Vellor"), ("scene", "night")]
CELL = {"split": "tune", "prompts": 8, "steps": 12, "attack": asdict(AttackConfig(steps=20, images=4, image_steps=12))}


def main(configs: dict[str, dict]) -> None:
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    studio = Studio(device="cpu")
    pipe, judge = studio.pipe, studio.pipe.world.judge
    pipe.set_progress_bar_config(disable=True)

    def keep(key, value):
        results[key] = value
        OUT.write_text(json.dumps(results, indent=1))
        print(key, value, flush=True)

    for kind, name in CONCEPTS:
        if f"unedited/{name}" not in results:
            keep(f"unedited/{name}",
                 concept_cell(pipe, judge, {"kind": kind, "name": name, "label": "unedited", **CELL})[0])
    for label, overrides in configs.items():
        if f"{label}/claims" not in results:
            start = time.time()
            patch = studio.erase("circle", "fmn", **overrides)
            seconds, ratio = time.time() - start, {}
            for prompt, word in (("a red circle", "circle"), ("a blue square", "square")):
                (_, before, after), = studio.compare_prompt(GenerationSettings(prompt), [patch], [0, 1, 2]).shares(word)
                ratio[word] = after / before
            presence = {e.concept: (e.presence_before, e.presence_after) for e in studio.collateral([patch]).effects}
            studio.remove_patch(patch)
            keep(f"{label}/claims", {"seconds": seconds, "share_after_over_before": ratio, "presence": presence})
        for kind, name in CONCEPTS:
            if f"{label}/{name}" in results:
                continue
            settings = KIND_SETTINGS.get(kind, {}).get("fmn", {}) | overrides
            record = concept_cell(pipe, judge, {"kind": kind, "name": name, "label": label, "method": "fmn",
                                                "settings": settings, **CELL})[0]
            base = results[f"unedited/{name}"]
            record["IRA_lost"], record["CRA_lost"] = base["IRA"] - record["IRA"], base["CRA"] - record["CRA"]
            keep(f"{label}/{name}", record)


if __name__ == "__main__":
    main({label: json.loads(overrides) for label, overrides in (arg.split("=", 1) for arg in sys.argv[1:])})
