"""Is the rater panel right? The scene estimator (`photogenic.panel.explain`) on held-out world renders,
whose true scenes are known: per-parameter accuracy, the fit error's distribution, the explained
scenes' appeal against the oracle's, and the simulated panel's votes against the oracle's verdicts.

    .venv/bin/python bench/panel_validity.py [--renders 1000] [--seed 4243] [--preset demo]

Writes bench/results/panel_validity.md. The world seed is none that judges, curation or the haystack
use (their seeds are the world's plus 0, 101, 202 and 7,919); the photogenic share is the judges'.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from photogenic.config import load_config
from photogenic.panel import explain, panel_votes
from photogenic.world import oracle_appeal, render_scene, scene_at

_NUMERIC = ("cx", "cy", "radius", "rotation", "exposure", "saturation", "shading", "depth", "blur", "noise")


def _clean(scene) -> bool:
    return not (scene.clutter or scene.text or scene.blur or scene.noise or scene.jpeg_quality < 100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--renders", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=4243)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--out", default="bench/results/panel_validity.md")
    args = parser.parse_args()
    config = load_config(args.preset)
    world = dataclasses.replace(
        config.world, seed=args.seed, photogenic_rate=config.judges.photogenic_rate, duplicate_rate=0.0
    )
    t0 = time.perf_counter()
    truth, found = [], []
    for index in range(args.renders):
        scene = scene_at(world, index)
        truth.append(scene)
        found.append(explain(render_scene(scene, world.image_size), config.panel))
    seconds = time.perf_counter() - t0
    lines = _report(truth, found, config, args, seconds)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _report(truth, found, config, args, seconds) -> list[str]:
    est = [f.scene for f in found]
    # the appeal of the explained scene itself, without the unexplained-image defect

    clean = np.array([_clean(t) for t in truth])
    fit = np.array([f.fit_error for f in found])
    true_appeal = np.array([oracle_appeal(t)[0] for t in truth])
    raw_appeal = np.array([oracle_appeal(e)[0] for e in est])
    lines = [
        "# Rater panel: the scene estimator against the truth",
        "",
        f"{len(truth)} held-out world renders (world seed {args.seed}, preset `{args.preset}`, photogenic share "
        f"{config.judges.photogenic_rate}; {clean.sum()} clean: no clutter, text, blur, noise or compression), "
        f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {seconds / len(truth) * 1000:.0f} ms an image "
        "on one core.",
        "",
        f"Command: `.venv/bin/python bench/panel_validity.py --renders {len(truth)} --seed {args.seed}`",
        "",
        "## What each scene parameter is estimated as",
        "",
        "| parameter | all renders | clean renders |",
        "|---|---|---|",
    ]
    for name in ("shape", "color", "background"):
        hit = np.array([getattr(t, name) == getattr(e, name) for t, e in zip(truth, est, strict=True)])
        lines.append(f"| {name} (accuracy) | {hit.mean():.3f} | {hit[clean].mean():.3f} |")
    for name in _NUMERIC:
        if name == "rotation":
            continue  # symmetric shapes make rotation ambiguous; the oracle does not score it
        err = np.array([abs(getattr(t, name) - getattr(e, name)) for t, e in zip(truth, est, strict=True)])
        lines.append(f"| {name} (mean abs. error) | {err.mean():.3f} | {err[clean].mean():.3f} |")
    for name, has in (
        ("text overlay", lambda s: bool(s.text)),
        ("blur > 0", lambda s: s.blur > 0),
        ("noise > 0", lambda s: s.noise > 0),
        ("JPEG compressed", lambda s: s.jpeg_quality < 100),
    ):
        t = np.array([has(s) for s in truth])
        e = np.array([has(s) for s in est])
        lines.append(
            f"| {name} (detected / false alarms) | {np.mean(e[t]):.3f} of {t.sum()} / {np.mean(e[~t]):.3f} of "
            f"{(~t).sum()} | |"
        )
    clutter = np.array([(t.clutter, e.clutter) for t, e in zip(truth, est, strict=True)])
    lines.append(
        f"| clutter count (exact / within 1) | {np.mean(clutter[:, 0] == clutter[:, 1]):.3f} / "
        f"{np.mean(np.abs(clutter[:, 0] - clutter[:, 1]) <= 1):.3f} | |"
    )
    lines += ["", "## Fit error (RMS, smoothed, 0-1 units)", "", "| percentile | all | clean |", "|---|---|---|"]
    for q in (50, 90, 95, 98, 99, 100):
        lines.append(f"| {q} | {np.percentile(fit, q):.3f} | {np.percentile(fit[clean], q):.3f} |")
    bar = config.panel.max_fit_error
    explained = np.array([f.explained for f in found])
    lines += [
        "",
        f"With `panel.max_fit_error` = {bar}, {np.mean(fit > bar):.1%} of these renders (all true renders of "
        f"a scene) are above the bar, {np.mean(fit[clean] > bar):.1%} of the clean ones; counting the scenes "
        f"outside what the world draws too, {1 - explained.mean():.1%} count as unexplained "
        f"({1 - explained[clean].mean():.1%} of the clean ones): the panel's error rate on true renders.",
        "",
        "## Appeal of the explained scene against the oracle's appeal of the true scene",
        "",
    ]
    margin = config.evaluate.tie_margin
    rng = np.random.default_rng(0)
    i, k = rng.integers(0, len(truth), size=(2, 20_000))
    d_true = true_appeal[i] - true_appeal[k]
    decided = np.abs(d_true) > margin
    agree = np.mean(np.sign(raw_appeal[i] - raw_appeal[k])[decided] == np.sign(d_true[decided]))
    gap = np.abs(true_appeal - raw_appeal)
    lines += [
        f"- Spearman correlation {spearmanr(true_appeal, raw_appeal).correlation:.3f}; mean absolute error "
        f"{gap.mean():.3f} (clean renders {gap[clean].mean():.3f}).",
        f"- Pairwise agreement with the oracle (random pairs whose true appeal differs by more than {margin}): "
        f"{agree:.3f}.",
    ]
    appeal = np.array([f.appeal for f in found])  # with the defect of an unexplained image: what the panel scores
    shows = np.array([f.shows(t.shape, t.color, t.background) for f, t in zip(found, truth, strict=True)])
    guessed = np.array(
        [
            f.scene.shape == t.shape and f.scene.color == t.color and f.scene.background == t.background
            for f, t in zip(found, truth, strict=True)
        ]
    )
    votes = panel_votes(appeal[i], appeal[k], shows[i], shows[k], config.panel)
    truth_outcome = np.where(d_true > margin, 1, np.where(d_true < -margin, -1, 0))
    lines += [
        f"- The panel ({config.panel.appeal_raters} raters, perception noise {config.panel.appeal_noise}, "
        f"tie margin {config.panel.rater_tie_margin}) on the same pairs: it picks the oracle's better image in "
        f"{np.mean(votes.appeal[decided] == truth_outcome[decided]):.3f} of the decided pairs, calls "
        f"{np.mean(votes.appeal[decided] == 0):.3f} of them a tie, and the worse image in "
        f"{np.mean(votes.appeal[decided] == -truth_outcome[decided]):.3f}.",
        "",
        "## Faithfulness",
        "",
        f"- The explained scene has the render's own shape, colour and background: {guessed.mean():.3f} "
        f"(clean renders {guessed[clean].mean():.3f}); counting only explained images, as the panel does "
        f"(an unexplained image shows nothing): {shows.mean():.3f} (clean renders {shows[clean].mean():.3f}).",
    ]
    return lines


if __name__ == "__main__":
    main()
