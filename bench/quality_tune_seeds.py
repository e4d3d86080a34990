"""Does the result survive the training seed? Quality-tunes the pretrained model of a finished pipeline run
with each training seed (same QT set, rehearsal set, curation judges and recipe), evaluates every tuned
model against the pretrained one on the test split, and tabulates each seed's verdict by the
ground-truth panel, with the learned judges' beside it.

    .venv/bin/python bench/quality_tune_seeds.py [--summary photogenic-workspace/summary.json] [--seeds 0 1 2]
        [--preset demo] [overrides ...]

A seed whose run already finished (the pipeline's own, with the same recipe, or an earlier call's) is
reused, not retrained. Writes bench/results/quality_tune_seeds.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from photogenic.config import DECODER_SIDE, load_config
from photogenic.evaluate import evaluate
from photogenic.train.run import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", default="photogenic-workspace/summary.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--out", default="bench/results/quality_tune_seeds.md")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    summary = json.loads(Path(args.summary).read_text())
    stages = summary["stages"]
    data, pretrained = stages["curate"]["manifest_uri"], stages["pretrain"]["model_uri"]
    curation, raters = stages["judges"]["curation"]["manifest_uri"], stages["judges"]["evaluation"]["manifest_uri"]
    base = load_config(args.preset, overrides=args.overrides)
    rows = []
    for seed in args.seeds:
        config = load_config(args.preset, overrides=[*args.overrides, f"train.seed={seed}"])
        t0 = time.perf_counter()
        tuned = train("quality_tune", config, data, base=pretrained, judges=curation.rsplit("/", 1)[0], progress=False)
        rows.append((seed, tuned.model_uri, None if tuned.reused else time.perf_counter() - t0))
    results = []
    for seed, model, seconds in rows:
        result = evaluate(model, pretrained, raters.rsplit("/", 1)[0], base, curation_judges_uri=curation)
        results.append((seed, model, seconds, result))
        print(f"seed {seed}: {_cells(result.metrics)}", flush=True)
    Path(args.out).write_text("\n".join(_report(args, summary, results)) + "\n")


def _wtl(m: dict[str, float], name: str) -> str:
    return (
        f"{m[f'{name}_win']:.1%} / {m[f'{name}_tie']:.1%} / {m[f'{name}_loss']:.1%} "
        f"[{m[f'{name}_win_lo']:.1%}, {m[f'{name}_win_hi']:.1%}]"
    )


def _net(m: dict[str, float], name: str) -> str:
    return f"{m[f'{name}_net']:+.1%} [{m[f'{name}_net_lo']:+.1%}, {m[f'{name}_net_hi']:+.1%}]"


def _cells(m: dict[str, float]) -> str:
    return " | ".join(
        [
            _wtl(m, "appeal"),
            _net(m, "faithfulness"),
            _wtl(m, "appeal_held_out"),
            _net(m, "faithfulness_held_out"),
            f"{m['panel_explained_a']:.0%} / {m['panel_explained_b']:.0%}",
            _wtl(m, "judge_appeal"),
            f"{m['judge_panel_appeal_agreement']:.3f} / {m['judge_panel_faithfulness_agreement']:.3f}",
            f"{m['curation_judge_panel_appeal_agreement']:.3f} / "
            f"{m['curation_vs_evaluation_judges_appeal_agreement']:.3f}",
        ]
    )


def _report(args, summary, results) -> list[str]:
    stages = summary["stages"]
    qt = load_config(args.preset, overrides=args.overrides).train.quality_tune
    lines = [
        "# Quality-tuning seeds: the test split, rated by the ground-truth panel",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, 2 CPU cores. Pretrained model "
        f"`{stages['pretrain']['fingerprint'][:12]}` ({args.preset} preset, {stages['pretrain']['steps']} steps), "
        f"QT set `{stages['curate']['fingerprint'][:12]}` ({stages['curate']['funnel'][-1][1]} images), the "
        "rehearsal set beside it (no held-out concept), early stopping on the dev split by the curation judges. "
        "Each quality-tuned model (A) against the pretrained one (B) on the test split "
        f"({int(results[0][3].metrics['appeal_n'])} pairs, "
        f"{int(results[0][3].metrics['appeal_held_out_n'])} of the held-out concept). Recipe: learning rate "
        f"{qt.learning_rate:g}, rehearsal share {qt.rehearsal_fraction:g}, "
        f"{'decoder side (`DECODER_SIDE`)' if qt.frozen_params == DECODER_SIDE else repr(qt.frozen_params)} "
        f"frozen, cap {qt.steps} steps.",
        "",
        f"Command: `.venv/bin/python bench/quality_tune_seeds.py --seeds {' '.join(map(str, args.seeds))}"
        f"{''.join(' ' + o for o in args.overrides)}` after `make demo`.",
        "",
        "| train.seed | QT time | appeal win / tie / loss [95% CI of win] | faithfulness win - loss [95% CI] "
        "| held-out appeal win / tie / loss | held-out faithfulness win - loss | panel explained A / B "
        "| judges' appeal win / tie / loss | eval. judges vs panel: appeal / faithfulness "
        "| curation judges vs panel / vs eval. judges (appeal) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, _, seconds, result in results:
        when = "reused" if seconds is None else f"{seconds:.0f} s"
        lines.append(f"| {seed} | {when} | {_cells(result.metrics)} |")
    wins = np.array([r.metrics["appeal_win"] for *_, r in results])
    lines += [
        "",
        f"Appeal win rate over the {len(results)} seeds: mean {wins.mean():.1%}, range {wins.min():.1%} - "
        f"{wins.max():.1%}; every seed's lower bound "
        f"{'above' if min(r.metrics['appeal_win_lo'] for *_, r in results) > 0.5 else 'NOT above'} 50%.",
    ]
    return lines


if __name__ == "__main__":
    main()
