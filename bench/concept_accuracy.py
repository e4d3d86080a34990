"""Does a model draw what it is asked for? Concept accuracy of a model on the benchmark's dev prompts, under the
evaluation judges (shape, colour and background, each and all three), next to the judges' own accuracy
on held-out renders.

    .venv/bin/python bench/concept_accuracy.py --model URI --judges URI [--preset demo] [--label TEXT]

Appends a row to bench/results/concept_accuracy.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from photogenic.config import load_config
from photogenic.evaluate import benchmark_prompts, generate, sampling_seeds
from photogenic.judges import CONCEPTS, load_judge
from photogenic.models.io import load_model_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--judges", required=True, help="the evaluation judge set")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--label", default="", help="what this model is, for the results table")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.preset, overrides=args.overrides)
    judge = load_judge(args.judges, config)
    prompts = benchmark_prompts(config, "dev")  # it informs recipe choices: the dev split, never the test's
    seeds = sampling_seeds(config, "dev")
    t0 = time.perf_counter()
    images = generate(load_model_pipeline(args.model, config), prompts, seeds, config)
    seconds = time.perf_counter() - t0
    seen = judge.concepts_of(judge.score(images))
    asked = [p for p in prompts for _ in seeds]
    acc = {k: float(np.mean([s[k] == getattr(p, k) for s, p in zip(seen, asked, strict=True)])) for k in CONCEPTS}
    acc["all"] = float(
        np.mean([all(s[k] == getattr(p, k) for k in CONCEPTS) for s, p in zip(seen, asked, strict=True)])
    )
    by_shape = {
        shape: float(np.mean([s["shape"] == shape for s, p in zip(seen, asked, strict=True) if p.shape == shape]))
        for shape in sorted({p.shape for p in asked})
    }
    print("shape accuracy per prompted shape:", ", ".join(f"{k} {v:.2f}" for k, v in by_shape.items()))
    drawn = {shape: float(np.mean([s["shape"] == shape for s in seen])) for shape in by_shape}
    print("share of images judged to show each shape:", ", ".join(f"{k} {v:.2f}" for k, v in drawn.items()))
    validity = judge.meta["metrics"]
    out = Path(__file__).parent / "results" / "concept_accuracy.md"
    if not out.exists():
        out.write_text(
            "# Concept accuracy of generated images\n\n"
            "Benchmark prompts (every shape x colour, clean and paraphrased), "
            f"{config.evaluate.seeds_per_prompt} seeds each, judged by the evaluation judges. "
            "Chance: shape 1/6, colour 1/8, background 1/6. The judges' own accuracy on held-out renders is "
            "given for comparison (a ceiling on what they can confirm).\n\n"
            "| date | label | model | images | shape | colour | background | all three | judge shape / all on renders "
            "| machine |\n|---|---|---|---|---|---|---|---|---|---|\n"
        )
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {args.label} | `{args.model}` | {len(images)} ({seconds:.0f}s) | "
        f"{acc['shape']:.3f} | {acc['color']:.3f} | {acc['background']:.3f} | {acc['all']:.3f} | "
        f"{validity['shape_accuracy']:.3f} / {validity['concept_accuracy']:.3f} | {platform.machine()} |\n"
    )
    with out.open("a") as f:
        f.write(row)
    print(row.strip())


if __name__ == "__main__":
    main()
