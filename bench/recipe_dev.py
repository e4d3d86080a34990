"""Choose the quality-tuning recipe on the dev split. Quality-tunes the pretrained model of a finished pipeline
run with each recipe variant below (same QT set, rehearsal set, curation judges and training seed),
evaluates every tuned model against the pretrained one on the *dev* split with the ground-truth panel, and
picks by the rule below. The test split is never read here.

    .venv/bin/python bench/recipe_dev.py [--summary photogenic-workspace/summary.json] [--only NAME ...]
        [--preset demo]

The rule, fixed before any variant was scored: a variant meets a target when, on the dev split,
  1. appeal: wins >= 85% of pairs and the win rate's lower bound is above 50%;
  2. faithfulness: the interval of wins minus losses does not lie below zero;
  3. held-out faithfulness: the same on the held-out concept's prompts.
The pick meets the most targets; among those, the one with the larger held-out faithfulness
(wins minus losses), then the larger appeal win rate.

Writes bench/results/recipe_dev.md after every variant (a rerun reuses finished runs and evaluations).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from quality_tune_seeds import _net, _wtl

from photogenic.config import load_config
from photogenic.evaluate import EvaluateResult, evaluate
from photogenic.train.run import train

QT = "train.quality_tune"


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]
    what: str


# Every variant names its learning rate, so that the table stays the same runs whatever the preset becomes.
LR6 = f"{QT}.learning_rate=6e-4"
VARIANTS = (
    Variant("lr-6e-4", (LR6,), "decoder side (`DECODER_SIDE`), rehearsal 0.05, learning rate 6e-4: the preset before"),
    Variant("whole-unet", (f"{QT}.frozen_params=", LR6), "the whole U-Net trains, rehearsal 0.05, 6e-4"),
    Variant(
        "paper",
        (f"{QT}.frozen_params=", f"{QT}.rehearsal_fraction=0", LR6),
        "the paper's: whole U-Net, no rehearsal, 6e-4",
    ),
    Variant("no-rehearsal", (f"{QT}.rehearsal_fraction=0", LR6), "decoder side, no rehearsal, 6e-4"),
    Variant("rehearsal-0.1", (f"{QT}.rehearsal_fraction=0.1", LR6), "decoder side, rehearsal 0.1, 6e-4"),
    Variant("lr-3e-4", (f"{QT}.learning_rate=3e-4",), "decoder side, rehearsal 0.05, 3e-4: the preset since"),
    Variant("lr-1.2e-3", (f"{QT}.learning_rate=1.2e-3",), "decoder side, rehearsal 0.05, learning rate 1.2e-3"),
)


@dataclass(frozen=True)
class Scored:
    variant: Variant
    seconds: float | None
    result: EvaluateResult

    @property
    def targets(self) -> tuple[bool, bool, bool]:
        m = self.result.metrics
        return (
            m["appeal_win"] >= 0.85 and m["appeal_win_lo"] > 0.5,
            m["faithfulness_net_hi"] >= 0,
            m["faithfulness_held_out_net_hi"] >= 0,
        )

    def rank(self) -> tuple[int, float, float]:
        m = self.result.metrics
        return (sum(self.targets), m["faithfulness_held_out_net"], m["appeal_win"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summary", default="photogenic-workspace/summary.json")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--only", nargs="*", help="variant names, run in this order (default: all)")
    parser.add_argument("--out", default="bench/results/recipe_dev.md")
    args = parser.parse_args()
    summary = json.loads(Path(args.summary).read_text())
    stages = summary["stages"]
    data, pretrained = stages["curate"]["manifest_uri"], stages["pretrain"]["model_uri"]
    curation = stages["judges"]["curation"]["manifest_uri"]
    raters = stages["judges"]["evaluation"]["manifest_uri"]
    by_name = {v.name: v for v in VARIANTS}
    unknown = set(args.only or ()) - set(by_name)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; variants: {', '.join(by_name)}")
    scored: list[Scored] = []
    for variant in [by_name[n] for n in args.only] if args.only else VARIANTS:
        config = load_config(args.preset, overrides=list(variant.overrides))
        t0 = time.perf_counter()
        tuned = train("quality_tune", config, data, base=pretrained, judges=curation.rsplit("/", 1)[0], progress=False)
        seconds = None if tuned.reused else time.perf_counter() - t0
        result = evaluate(
            tuned.model_uri, pretrained, raters.rsplit("/", 1)[0], config, split="dev", curation_judges_uri=curation
        )
        scored.append(Scored(variant, seconds, result))
        print(f"{variant.name}: targets {scored[-1].targets} rank {scored[-1].rank()}", flush=True)
        Path(args.out).write_text("\n".join(_report(args, stages, scored)) + "\n")


def _report(args: argparse.Namespace, stages: dict, scored: list[Scored]) -> list[str]:
    m0 = scored[0].result.metrics
    lines = [
        "# Choosing the quality-tuning recipe on the dev split",
        "",
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, 2 CPU cores. Pretrained model "
        f"`{stages['pretrain']['fingerprint'][:12]}` ({args.preset} preset), QT set "
        f"`{stages['curate']['fingerprint'][:12]}`, the rehearsal set beside it, early stopping on the dev "
        "split's early-stopping prompts by the curation judges, `train.seed=0`. Each quality-tuned model (A) "
        f"against the pretrained one (B) on the **dev** split ({int(m0['appeal_n'])} pairs, "
        f"{int(m0['appeal_held_out_n'])} of the held-out concept), rated by the ground-truth panel. The test "
        "split is not read.",
        "",
        "Command: `.venv/bin/python bench/recipe_dev.py` after `make demo`. The rule (fixed before the runs; "
        "`bench/recipe_dev.py`): meet the most of the three targets (appeal >= 85% with lower bound > 50%; "
        "faithfulness and held-out faithfulness: interval of wins minus losses not below zero), then the "
        "larger held-out faithfulness, then the larger appeal.",
        "",
        "| variant | recipe | QT time | appeal win / tie / loss [95% CI of win] | faithfulness win - loss [95% CI] "
        "| held-out appeal win / tie / loss | held-out faithfulness win - loss [95% CI] | targets met "
        "| judges' appeal win | eval. judges vs panel: appeal / faithfulness |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in scored:
        m = s.result.metrics
        when = "reused" if s.seconds is None else f"{s.seconds:.0f} s"
        lines.append(
            f"| `{s.variant.name}` | {s.variant.what} | {when} | {_wtl(m, 'appeal')} | {_net(m, 'faithfulness')} "
            f"| {_wtl(m, 'appeal_held_out')} | {_net(m, 'faithfulness_held_out')} | {sum(s.targets)} of 3 "
            f"| {m['judge_appeal_win']:.1%} | {m['judge_panel_appeal_agreement']:.3f} / "
            f"{m['judge_panel_faithfulness_agreement']:.3f} |"
        )
    best = max(scored, key=Scored.rank)
    lines += ["", f"By the rule: `{best.variant.name}` ({sum(best.targets)} of 3 targets on dev)."]
    return lines


if __name__ == "__main__":
    main()
