"""Pairwise evaluation of two models, as in the paper's human study (section 4).

Both models draw an image for the same prompt from the same seed. Visual appeal is judged without the
prompt: the evaluation judges' appeal score, with a tie margin; text faithfulness with it: the concept
classifier checks each image against its prompt, and when both images are right or both wrong it is a
tie (the paper's rule). Wins, ties and losses are reported separately, with bootstrap 95% intervals
(resampling prompts, since the seeds of one prompt are not independent), overall, on held-out
concepts and per concept. Every report states how far the judges agree with the oracle on held-out
renders, and calls the result untrustworthy below `evaluate.min_judge_agreement`.

`--a` is the candidate and `--b` the reference: a "win" is a pair where A is better.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photogenic.config import Config, ConfigError, to_dict
from photogenic.judges import CONCEPTS, ClipJudge, Judge, load_judge
from photogenic.manifest import Manifest, ObjectRef, manifest_file, read_manifest, stage_output
from photogenic.panel import explain_all, panel_votes
from photogenic.progress import Progress
from photogenic.prompts import SPLITS, Prompt, Split, benchmark_prompts, load_prompts, sampling_seeds
from photogenic.report import report_html, side_by_side
from photogenic.storage import join_uri
from photogenic.world import BACKGROUNDS, COLORS, SHAPES

__all__ = [
    "Judged",
    "Prompt",
    "SPLITS",
    "agreement",
    "load_prompts",
    "outcome_tables",
    "panel_pairs",
    "sampling_seeds",
    "EvaluateResult",
    "benchmark_prompts",
    "compare",
    "evaluate",
    "judge_pairs",
    "outcome_table",
]

log = logging.getLogger(__name__)

_EVAL_VERSION = 3  # 2: wins-minus-losses intervals (the gate reads them); 3: the panel rates world models


def generate(pipe: Any, prompts: list[Prompt], seeds: list[int], config: Config, name: str = "") -> list[Any]:
    """One image per (prompt, seed), every prompt with every seed, in that order."""
    from photogenic.models.pipeline import draw

    jobs = [(p.text, s) for p in prompts for s in seeds]
    progress = Progress(f"evaluate: drawing {name or 'images'}", len(jobs), "image")
    images = draw(pipe, jobs, config.evaluate.sampling_steps, config.evaluate.guidance_scale, progress=progress)
    progress.close()
    return images


def _faithful(judge: Judge, scores: dict[str, np.ndarray], prompts: list[Prompt], seeds: int) -> np.ndarray:
    seen = judge.concepts_of(scores)
    asked = [p for p in prompts for _ in range(seeds)]
    return np.array([all(getattr(p, k) in (None, s[k]) for k in CONCEPTS) for s, p in zip(seen, asked, strict=True)])


def outcome_table(outcomes: np.ndarray, groups: np.ndarray, samples: int, seed: int = 0) -> dict[str, float]:
    """Win, tie and loss rates of outcomes in {+1, 0, -1}, and `net` (wins minus losses), each with a
    bootstrap 95% interval that resamples `groups` (prompts) with replacement.

    `net` has its own interval because "not worse" is a claim about the difference: the intervals of
    wins and of losses overlap long before the difference's interval leaves zero.
    """
    n = len(outcomes)
    rates = {"n": float(n)}
    if n == 0:
        return rates
    keys = np.unique(groups)
    members = [np.flatnonzero(groups == g) for g in keys]
    rng = np.random.default_rng(seed)
    boot = np.empty((samples, 4))
    for b in range(samples):
        pick = np.concatenate([members[i] for i in rng.integers(0, len(keys), len(keys))])
        boot[b] = _win_tie_loss_net(outcomes[pick])
    values = _win_tie_loss_net(outcomes)
    for i, (name, value) in enumerate(zip(("win", "tie", "loss", "net"), values, strict=True)):
        lo, hi = np.percentile(boot[:, i], [2.5, 97.5])
        rates.update({name: float(value), f"{name}_lo": float(lo), f"{name}_hi": float(hi)})
    return rates


def _win_tie_loss_net(outcomes: np.ndarray) -> tuple[float, float, float, float]:
    win, tie, loss = (outcomes > 0).mean(), (outcomes == 0).mean(), (outcomes < 0).mean()
    return win, tie, loss, win - loss


@dataclass(frozen=True)
class EvaluateResult:
    """The published evaluation."""

    manifest_uri: str
    report_uri: str
    metrics: dict[str, float]
    trustworthy: bool
    seconds: float
    reused: bool = False


def _outcomes(a: np.ndarray, b: np.ndarray, margin: float) -> np.ndarray:
    return np.where(a - b > margin, 1, np.where(b - a > margin, -1, 0))


def compare(
    appeal_a: np.ndarray,
    appeal_b: np.ndarray,
    faithful_a: np.ndarray,
    faithful_b: np.ndarray,
    prompts: list[Prompt],
    seeds: int,
    config: Config,
    tie_margin: float,
    faith_margin: float = 0.0,
) -> tuple[dict[str, dict[str, float]], list[dict[str, Any]]]:
    """Outcome tables (overall, held-out, per category, shape and colour) and per-pair rows. Faithfulness is
    either right/wrong per image (the paper's rule: both right or both wrong is a tie) or a score per image
    (CLIP score) compared with `faith_margin`."""
    appeal = _outcomes(appeal_a, appeal_b, tie_margin)
    faith = _outcomes(faithful_a.astype(float), faithful_b.astype(float), faith_margin)
    rows = _pair_rows(prompts, seeds, appeal_a, appeal_b, appeal, faithful_a, faithful_b, faith)
    return outcome_tables(appeal, faith, prompts, seeds, config), rows


def _pair_rows(
    prompts: list[Prompt],
    seeds: int,
    appeal_a: np.ndarray,
    appeal_b: np.ndarray,
    appeal: np.ndarray,
    faithful_a: np.ndarray,
    faithful_b: np.ndarray,
    faith: np.ndarray,
) -> list[dict[str, Any]]:
    """One row per pair (every prompt's `seeds` pairs in order): the prompt, both images' scores and the
    outcomes."""
    return [
        {
            "prompt": p.text,
            "category": p.category,
            "seed": int(s),
            "held_out": p.held_out,
            "appeal_a": float(appeal_a[i]),
            "appeal_b": float(appeal_b[i]),
            "appeal": int(appeal[i]),
            "faithful_a": faithful_a[i].item(),
            "faithful_b": faithful_b[i].item(),
            "faithfulness": int(faith[i]),
        }
        for i, (p, s) in enumerate((p, s) for p in prompts for s in range(seeds))
    ]


def outcome_tables(
    appeal: np.ndarray, faith: np.ndarray, prompts: list[Prompt], seeds: int, config: Config
) -> dict[str, dict[str, float]]:
    """Win/tie/loss tables of pair outcomes in {+1, 0, -1} (every prompt's `seeds` pairs in order): overall,
    on held-out and seen concepts, per prompt category and per prompted shape and colour."""
    asked = [p for p in prompts for _ in range(seeds)]
    groups = np.array([i for i in range(len(prompts)) for _ in range(seeds)])
    held = np.array([p.held_out for p in asked], dtype=bool)
    samples = config.evaluate.bootstrap_samples
    tables: dict[str, dict[str, float]] = {}

    def add(name: str, mask: np.ndarray) -> None:
        if mask.any():
            tables[f"appeal{name}"] = outcome_table(appeal[mask], groups[mask], samples)
            tables[f"faithfulness{name}"] = outcome_table(faith[mask], groups[mask], samples)

    add("", np.ones(len(asked), dtype=bool))
    add("/held_out", held)
    add("/seen", ~held)
    for category in sorted({p.category for p in prompts} - {""}):
        add(f"/category/{category}", np.array([p.category == category for p in asked]))
    for kind in ("shape", "color"):
        for value in CONCEPTS[kind]:
            add(f"/{kind}/{value}", np.array([getattr(p, kind) == value for p in asked]))
    return tables


@dataclass(frozen=True)
class Judged:
    """A rater's verdict on a set of pairs: the learned judges' or the ground-truth panel's."""

    tables: dict[str, dict[str, float]]
    rows: list[dict[str, Any]]
    metrics: dict[str, float]
    trustworthy: bool
    tie_margin: float

    @property
    def appeal(self) -> np.ndarray:
        return np.array([r["appeal"] for r in self.rows])

    @property
    def faithful(self) -> np.ndarray:
        """Per image, A's then B's: shows the prompt (or, for CLIP judges, the CLIP score)."""
        return np.array([r["faithful_a"] for r in self.rows] + [r["faithful_b"] for r in self.rows])


def judge_pairs(
    judge: Judge | ClipJudge,
    images_a: list[Any],
    images_b: list[Any],
    prompts: list[Prompt],
    seeds: int,
    config: Config,
) -> Judged:
    """Judge pairs of images (A's and B's for every prompt and seed, in that order): appeal without the
    prompt, faithfulness with it; tables, per-pair rows, flat metrics and the judges' validity."""
    scores = {"a": judge.score(images_a), "b": judge.score(images_b)}
    if isinstance(judge, ClipJudge):  # real images: CLIP score against the prompt, compared with a margin
        texts = [p.text for p in prompts for _ in range(seeds)]
        faithful = {"a": judge.clip_score(images_a, texts), "b": judge.clip_score(images_b, texts)}
        margin, faith_margin = config.evaluate.tie_margin, config.evaluate.clip_score_margin
    else:
        faithful = {k: _faithful(judge, scores[k], prompts, seeds) for k in scores}
        margin, faith_margin = calibrated_tie_margin(judge, config), 0.0
    tables, rows = compare(
        scores["a"]["appeal"],
        scores["b"]["appeal"],
        faithful["a"],
        faithful["b"],
        prompts,
        seeds,
        config,
        margin,
        faith_margin,
    )
    validity = judge.meta.get("metrics", {})
    agreement = min(validity.get("appeal_pairwise_agreement", 0.0), validity.get("concept_accuracy", 0.0))
    trustworthy = agreement >= config.evaluate.min_judge_agreement
    metrics = _table_metrics(tables)
    for name in ("a", "b"):
        metrics[f"mean_appeal_{name}"] = float(scores[name]["appeal"].mean())
        metrics[f"faithfulness_mean_{name}"] = float(faithful[name].mean())  # concept accuracy, or CLIP score
    return Judged(tables, rows, metrics, trustworthy, margin)


def panel_pairs(images_a: list[Any], images_b: list[Any], prompts: list[Prompt], seeds: int, config: Config) -> Judged:
    """The ground-truth panel's verdict on pairs of world images (`photogenic.panel`): every image explained
    as a scene, the scene's oracle appeal and concepts, and the simulated raters' majority votes. It is
    trustworthy when it could explain at least `panel.min_explained` of each model's images."""
    asked = [p for p in prompts for _ in range(seeds)]
    workers = config.data.workers
    with Progress("evaluate: the panel explaining images", len(images_a) + len(images_b), "image") as progress:
        found = {
            "a": explain_all(images_a, config.panel, workers, progress),
            "b": explain_all(images_b, config.panel, workers, progress),
        }
    appeal = {k: np.array([e.appeal for e in v]) for k, v in found.items()}
    shows = {
        k: np.array([e.shows(p.shape, p.color, p.background) for e, p in zip(v, asked, strict=True)])
        for k, v in found.items()
    }
    identical = np.array([_same_pixels(x, y) for x, y in zip(images_a, images_b, strict=True)])
    votes = panel_votes(appeal["a"], appeal["b"], shows["a"], shows["b"], config.panel, identical)
    tables = outcome_tables(votes.appeal, votes.faithfulness, prompts, seeds, config)
    rows = _pair_rows(
        prompts,
        seeds,
        appeal["a"],
        appeal["b"],
        votes.appeal,
        shows["a"],
        shows["b"],
        votes.faithfulness,
    )
    for row, found_a, found_b in zip(rows, found["a"], found["b"], strict=True):
        row.update(
            fit_error_a=found_a.fit_error,
            fit_error_b=found_b.fit_error,
            scene_a=_scene_words(found_a.scene),
            scene_b=_scene_words(found_b.scene),
        )
    metrics = _table_metrics(tables)
    explained = {}
    for name, ex in found.items():
        explained[name] = float(np.mean([e.explained for e in ex]))
        metrics[f"mean_appeal_{name}"] = float(appeal[name].mean())
        metrics[f"faithfulness_mean_{name}"] = float(shows[name].mean())
        metrics[f"panel_explained_{name}"] = explained[name]
        metrics[f"panel_fit_error_{name}"] = float(np.median([e.fit_error for e in ex]))
    trustworthy = min(explained.values()) >= config.panel.min_explained
    return Judged(tables, rows, metrics, trustworthy, config.panel.rater_tie_margin)


def _same_pixels(a: Any, b: Any) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def _scene_words(scene: Any) -> str:
    return f"{scene.color} {scene.shape} on {scene.background}"


def agreement(proxy: Judged, truth: Judged) -> dict[str, float]:
    """How far a proxy's verdicts agree with the rater of record's on the same pairs: `appeal` over the
    pairs the rater of record decides (the proxy must pick the same side; its tie counts as disagreeing),
    or over all pairs when it decides none (then the proxy must tie too); `faithfulness` per image (shows
    the prompt or not)."""
    decided = truth.appeal != 0
    if not decided.any():
        decided = np.ones_like(decided, dtype=bool)
    appeal = float(np.mean(proxy.appeal[decided] == truth.appeal[decided]))
    faithfulness = float(np.mean(proxy.faithful.astype(bool) == truth.faithful.astype(bool)))
    return {"appeal": appeal, "faithfulness": faithfulness}


def calibrated_tie_margin(judge: Judge, config: Config) -> float:
    """The larger of `evaluate.tie_margin` and the judge's own: the score gap beyond which the judge
    orders held-out renders as the oracle does 95% of the time (measured when it was trained)."""
    return max(config.evaluate.tie_margin, float(judge.meta.get("metrics", {}).get("appeal_margin_95", 0.0)))


def evaluate(
    a: str,
    b: str,
    judges_uri: str,
    config: Config,
    out: str | None = None,
    run: Any = None,
    prompts_file: str | Path | None = None,
    split: Split = "test",
    curation_judges_uri: str | None = None,
) -> EvaluateResult:
    """Compare model A (the candidate) with model B (the reference) pairwise (the function behind
    `photogenic evaluate`).

    World models are rated by the ground-truth panel (`photogenic.panel`); the learned judges' verdict is
    reported beside it, with their agreement with the panel on these very pairs. Real models are rated by
    the imported judges (CLIP score and an aesthetic predictor), and their pairs can go to people
    (`export_pairs`).

    Args:
        a, b: model URIs (exported diffusers folders with a Photogenic manifest).
        judges_uri: the *evaluation* judge set (never the curation one).
        config: the resolved config (`evaluate` and `panel` sections).
        out: where to publish; default `<store>/evaluations/<request fingerprint>`.
        run: an optional tracking Run for the metrics and the report.
        prompts_file: a user's prompt set (`load_prompts`) instead of the benchmark; its sampling seeds are
            the test split's.
        split: the benchmark split: `test` (reported results, the gate) or `dev` (recipe choice).
        curation_judges_uri: the curation judge set, to report how far the two judge sets agree.
    """
    t0 = time.perf_counter()
    judge_manifest = read_manifest(manifest_file(judges_uri), config.storage)
    if judge_manifest.meta.get("purpose") != "evaluation":
        raise ConfigError(
            f"{judges_uri} is a {judge_manifest.meta.get('purpose')!r} judge set; evaluation needs the "
            "evaluation judges (trained on renders curation never saw)"
        )
    world = judge_manifest.meta.get("kind") != "clip"
    prompts = load_prompts(prompts_file, config) if prompts_file else benchmark_prompts(config, split)
    split_name = "custom" if prompts_file else split
    if world:
        _check_world_prompts(prompts, prompts_file)
    curation = read_manifest(manifest_file(curation_judges_uri), config.storage) if curation_judges_uri else None
    versions = [read_manifest(join_uri(m, "manifest.json"), config.storage).fingerprint for m in (a, b)]
    output = stage_output(
        "evaluate",
        {
            "version": _EVAL_VERSION,
            "a": versions[0],
            "b": versions[1],
            "judges": judge_manifest.fingerprint,
            "curation_judges": curation.fingerprint if curation else None,
            "evaluate": to_dict(config.evaluate),
            "panel": to_dict(config.panel) if world else None,
            "split": split_name,
            "prompts": [(p.text, p.category) for p in prompts],
            "holdout": list(config.curate.holdout_concepts),
        },
        config,
        out,
        "evaluations/{request}",
    )
    store, request, manifest_uri, previous = output.store, output.request, output.manifest_uri, output.previous
    if previous is not None:
        metrics = dict(previous.meta["metrics"])
        result = EvaluateResult(
            manifest_uri, store.uri("report.html"), metrics, bool(previous.meta["trustworthy"]), 0.0, True
        )
        _log(run, result, store)
        return result

    from photogenic.models.io import load_model_pipeline

    judge = load_judge(judges_uri, config)
    seeds = sampling_seeds(config, split_name)
    images = {}
    for name, uri in (("a", a), ("b", b)):
        images[name] = generate(load_model_pipeline(uri, config), prompts, seeds, config, f"model {name.upper()}")
    judged = judge_pairs(judge, images["a"], images["b"], prompts, len(seeds), config)
    validity = judge.meta.get("metrics", {})
    proxies = {"judges": judged}
    if curation is not None:
        proxies["curation judges"] = judge_pairs(
            load_judge(curation_judges_uri, config), images["a"], images["b"], prompts, len(seeds), config
        )
    if world:
        record = panel_pairs(images["a"], images["b"], prompts, len(seeds), config)
        metrics = dict(record.metrics)
        metrics.update({f"judge_{k}": v for k, v in judged.metrics.items()})
        agreements = {name: agreement(proxy, record) for name, proxy in proxies.items()}
        judges_valid = min(agreements["judges"].values()) >= config.evaluate.min_panel_agreement
        for name, values in agreements.items():
            prefix = "judge" if name == "judges" else "curation_judge"
            metrics.update({f"{prefix}_panel_{k}_agreement": v for k, v in values.items()})
        metrics["judges_valid"] = float(judges_valid)
    else:
        record, agreements = judged, {}
        metrics = dict(judged.metrics)
    if curation is not None:
        mutual = agreement(proxies["curation judges"], judged)
        metrics.update({f"curation_vs_evaluation_judges_{k}_agreement": v for k, v in mutual.items()})
    metrics.update({f"judge_{k}": float(v) for k, v in validity.items()})
    trustworthy = record.trustworthy
    metrics.update(tie_margin=record.tie_margin, trustworthy=float(trustworthy))
    rater = "panel" if world else "judges"
    with tempfile.TemporaryDirectory() as tmp:
        grid = side_by_side(images["a"], images["b"], prompts, seeds, rows=12)
        grid.save(Path(tmp, "side_by_side.png"))
        doc = {
            "a": a,
            "b": b,
            "split": split_name,
            "rater_of_record": rater,
            "tie_margin": record.tie_margin,
            "tables": record.tables,
            "pairs": record.rows,
            "judge_tables": judged.tables if world else {},
            "judge_pairs": judged.rows if world else [],
            "judges": validity,
            "agreement": agreements,
        }
        Path(tmp, "results.json").write_text(json.dumps(doc, indent=1))
        Path(tmp, "report.html").write_text(
            report_html(
                a,
                b,
                record,
                judged if world else None,
                validity,
                agreements,
                metrics,
                config,
                grid,
                _funnel_of(a, config),
                split_name,
            )
        )
        refs = [
            ObjectRef.of(store.put_file(n, Path(tmp, n))) for n in ("results.json", "report.html", "side_by_side.png")
        ]
        for name in ("a", "b"):  # every image, for human raters (`export_pairs`)
            for i, image in enumerate(images[name]):
                image.save(Path(tmp, "image.png"))
                refs.append(ObjectRef.of(store.put_file(f"images/{name}-{i:05d}.png", Path(tmp, "image.png"))))
    manifest = Manifest(
        kind="evaluation",
        root=store.root,
        objects=tuple(refs),
        config=to_dict(config),
        meta={"request": request, "a": a, "b": b, "metrics": metrics, "trustworthy": trustworthy, "split": split_name},
    )
    output.publish(manifest)
    result = EvaluateResult(manifest_uri, store.uri("report.html"), metrics, trustworthy, time.perf_counter() - t0)
    log.info(
        "evaluate (%s split, rated by the %s): appeal win/tie/loss %.2f/%.2f/%.2f, faithfulness %.2f/%.2f/%.2f%s",
        split_name,
        rater,
        *(metrics[f"appeal_{k}"] for k in ("win", "tie", "loss")),
        *(metrics[f"faithfulness_{k}"] for k in ("win", "tie", "loss")),
        "" if trustworthy else " (NOT trustworthy)",
    )
    if world:
        log.info(
            "evaluate: the judges agree with the panel on %.2f of decided appeal pairs, %.2f of faithfulness "
            "verdicts%s",
            metrics["judge_panel_appeal_agreement"],
            metrics["judge_panel_faithfulness_agreement"],
            "" if judges_valid else f" (below {config.evaluate.min_panel_agreement}: not valid proxies here)",
        )
    _log(run, result, store)
    return result


def _check_world_prompts(prompts: list[Prompt], source: Any) -> None:
    """World models are rated on what a prompt names: a prompt that names no shape, colour or background
    could never be right or wrong."""
    for i, p in enumerate(prompts):
        if p.shape is None and p.color is None and p.background is None:
            where = f"--prompts {source}, prompt {i + 1}" if source else f"benchmark prompt {i + 1}"
            raise ConfigError(
                f"{where} ({p.text!r}) names no shape, colour or background of the world; world models are "
                f"rated on those ({', '.join(SHAPES)}; {', '.join(COLORS)}; {', '.join(BACKGROUNDS)})"
            )


def _table_metrics(tables: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat metric names that compare directly across runs in the MLflow UI."""
    out: dict[str, float] = {}
    for table in ("appeal", "faithfulness", "appeal/held_out", "faithfulness/held_out"):
        for k, v in tables.get(table, {}).items():
            out[f"{table.replace('/', '_')}_{k}"] = v
    return out


def _funnel_of(model_uri: str, config: Config) -> list[tuple[str, int]]:
    """The curation funnel behind a quality-tuned model, when its training data was curated."""
    try:
        model = read_manifest(join_uri(model_uri, "manifest.json"), config.storage)
        data_uri = model.meta.get("data_uri")
        if not data_uri:
            return []
        return [tuple(x) for x in read_manifest(data_uri, config.storage).meta.get("funnel", [])]
    except Exception:  # the funnel is context for the report, never a reason to fail it
        return []


def _log(run: Any, result: EvaluateResult, store: Any) -> None:
    """Metrics, the report, the side-by-side grid (an image the UI compares across runs) and every comparison
    table (an MLflow table: one row per comparison, overall, seen, held out, per category and concept)."""
    if run is None:
        return
    run.log_metrics({f"eval/{k}": v for k, v in result.metrics.items()})
    run.set_tags({"photogenic.eval.trustworthy": str(result.trustworthy).lower()})
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("report.html", "side_by_side.png", "results.json"):
            store.get_file(name, Path(tmp, name))
            run.log_artifact(Path(tmp, name), "evaluation")
        from PIL import Image

        with Image.open(Path(tmp, "side_by_side.png")) as grid:
            run.log_image_key(grid.convert("RGB"), "eval/side_by_side")
        tables = json.loads(Path(tmp, "results.json").read_text())["tables"]
    run.log_table(comparison_table(tables), "evaluation/comparisons.json")


def comparison_table(tables: dict[str, dict[str, float]]) -> dict[str, list[Any]]:
    """The rater of record's tables as columns: comparison, n, and each outcome with its 95% interval."""
    rows = [(name, t) for name, t in sorted(tables.items()) if "win" in t]
    columns: dict[str, list[Any]] = {"comparison": [n for n, _ in rows], "n": [int(t["n"]) for _, t in rows]}
    for key in ("win", "tie", "loss", "net"):
        for suffix in ("", "_lo", "_hi"):
            columns[key + suffix] = [t.get(key + suffix) for _, t in rows]
    return columns
