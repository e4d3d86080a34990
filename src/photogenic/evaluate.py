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

import base64
import html
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photogenic.config import Config, ConfigError, fingerprint, to_dict
from photogenic.judges import CONCEPTS, ClipJudge, Judge, load_judge
from photogenic.manifest import Manifest, ObjectRef, manifest_file, publish, read_manifest, reusable
from photogenic.storage import join_uri, open_store
from photogenic.world import BACKGROUNDS, COLORS, SHAPES, caption_for

__all__ = [
    "Prompt",
    "EvaluateResult",
    "benchmark_prompts",
    "compare",
    "evaluate",
    "export_pairs",
    "import_votes",
    "judge_pairs",
    "outcome_table",
]

log = logging.getLogger(__name__)

_EVAL_VERSION = 2  # 2: wins-minus-losses intervals (the gate reads them)
_PARAPHRASES = (  # wordings that no training caption uses
    "{ac} {s} shown in front of {ab} background",
    "picture of {ac} {s}, {b} all around it",
)


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt and the concepts it asks for."""

    text: str
    shape: str
    color: str
    background: str
    paraphrase: bool
    held_out: bool


def benchmark_prompts(config: Config) -> list[Prompt]:
    """The benchmark, kept apart from training: every (shape, colour) pair once in the clean wording,
    with a background drawn by its own seed, plus as many again in paraphrases. Prompts that name a
    concept held out of the QT set are flagged."""
    rng = np.random.default_rng([config.world.seed, 31_337])
    held = set(config.curate.holdout_concepts)
    prompts = []
    backgrounds = list(BACKGROUNDS)
    for shape in SHAPES:
        for color in COLORS:
            background = str(rng.choice(backgrounds))
            prompts.append(
                Prompt(
                    caption_for(shape, color, background), shape, color, background, False, bool({shape, color} & held)
                )
            )
    for shape in SHAPES:
        for color in COLORS:
            background = str(rng.choice(backgrounds))
            template = _PARAPHRASES[int(rng.integers(len(_PARAPHRASES)))]
            a = caption_for(shape, color, background).split(" on ")  # "a red circle", "a sky background"
            text = template.format(ac=a[0].rsplit(" ", 1)[0], s=shape, ab=a[1].rsplit(" ", 1)[0], b=background)
            prompts.append(Prompt(text, shape, color, background, True, bool({shape, color} & held)))
    return prompts


def generate(pipe: Any, prompts: list[Prompt], seeds: list[int], config: Config) -> list[Any]:
    """One image per (prompt, seed), every prompt with every seed, in that order."""
    from photogenic.models.pipeline import draw

    jobs = [(p.text, s) for p in prompts for s in seeds]
    return draw(pipe, jobs, config.evaluate.sampling_steps, config.evaluate.guidance_scale)


def _faithful(judge: Judge, scores: dict[str, np.ndarray], prompts: list[Prompt], seeds: int) -> np.ndarray:
    seen = judge.concepts_of(scores)
    asked = [p for p in prompts for _ in range(seeds)]
    return np.array([all(s[k] == getattr(p, k) for k in CONCEPTS) for s, p in zip(seen, asked, strict=True)])


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
    """Outcome tables (overall, held-out, per shape and colour) and per-pair rows. Faithfulness is either
    right/wrong per image (the paper's rule: both right or both wrong is a tie) or a score per image
    (CLIP score) compared with `faith_margin`."""
    appeal = _outcomes(appeal_a, appeal_b, tie_margin)
    faith = _outcomes(faithful_a.astype(float), faithful_b.astype(float), faith_margin)
    asked = [p for p in prompts for _ in range(seeds)]
    groups = np.array([i for i in range(len(prompts)) for _ in range(seeds)])
    held = np.array([p.held_out for p in asked])
    samples = config.evaluate.bootstrap_samples
    tables: dict[str, dict[str, float]] = {}

    def add(name: str, mask: np.ndarray) -> None:
        if mask.any():
            tables[f"appeal{name}"] = outcome_table(appeal[mask], groups[mask], samples)
            tables[f"faithfulness{name}"] = outcome_table(faith[mask], groups[mask], samples)

    add("", np.ones(len(asked), dtype=bool))
    add("/held_out", held)
    add("/seen", ~held)
    for kind in ("shape", "color"):
        for value in CONCEPTS[kind]:
            add(f"/{kind}/{value}", np.array([getattr(p, kind) == value for p in asked]))
    rows = [
        {
            "prompt": p.text,
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
    return tables, rows


@dataclass(frozen=True)
class Judged:
    """The judges' verdict on a set of pairs."""

    tables: dict[str, dict[str, float]]
    rows: list[dict[str, Any]]
    metrics: dict[str, float]
    trustworthy: bool
    tie_margin: float


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
    return Judged(tables, rows, _metrics(tables, scores, faithful, validity, margin, trustworthy), trustworthy, margin)


def _seed_list(config: Config) -> list[int]:
    return list(range(config.evaluate.seeds_per_prompt))


def calibrated_tie_margin(judge: Judge, config: Config) -> float:
    """The larger of `evaluate.tie_margin` and the judge's own: the score gap beyond which the judge
    orders held-out renders as the oracle does 95% of the time (measured when it was trained)."""
    return max(config.evaluate.tie_margin, float(judge.meta.get("metrics", {}).get("appeal_margin_95", 0.0)))


def evaluate(
    a: str, b: str, judges_uri: str, config: Config, out: str | None = None, run: Any = None
) -> EvaluateResult:
    """Compare model A (the candidate) with model B (the reference) on the benchmark (the function behind
    `photogenic evaluate`).

    Args:
        a, b: model URIs (exported diffusers folders with a Photogenic manifest).
        judges_uri: the *evaluation* judge set (never the curation one).
        config: the resolved config (`evaluate` section).
        out: where to publish; default `<store>/evaluations/<request fingerprint>`.
        run: an optional tracking Run for the metrics and the report.
    """
    t0 = time.perf_counter()
    judge_manifest = read_manifest(manifest_file(judges_uri))
    if judge_manifest.meta.get("purpose") != "evaluation":
        raise ConfigError(
            f"{judges_uri} is a {judge_manifest.meta.get('purpose')!r} judge set; evaluation needs the "
            "evaluation judges (trained on renders curation never saw)"
        )
    versions = [read_manifest(join_uri(m, "manifest.json"), config.storage).fingerprint for m in (a, b)]
    request = fingerprint(
        {
            "version": _EVAL_VERSION,
            "a": versions[0],
            "b": versions[1],
            "judges": judge_manifest.fingerprint,
            "evaluate": to_dict(config.evaluate),
            "holdout": list(config.curate.holdout_concepts),
        }
    )
    out = out or join_uri(config.store_root(), "evaluations", request[:16])
    store = open_store(out, config.storage)
    manifest_uri = store.uri("manifest.json")
    previous = reusable(manifest_uri, request, config.storage)
    if previous is not None:
        log.info("evaluate: reusing %s", store.root)
        metrics = dict(previous.meta["metrics"])
        result = EvaluateResult(
            manifest_uri, store.uri("report.html"), metrics, bool(previous.meta["trustworthy"]), 0.0, True
        )
        _log(run, result, None)
        return result

    from photogenic.train.trainer import load_model_pipeline

    judge = load_judge(judges_uri, config)
    prompts = benchmark_prompts(config)
    seeds = _seed_list(config)
    images = {}
    for name, uri in (("a", a), ("b", b)):
        images[name] = generate(load_model_pipeline(uri, config), prompts, seeds, config)
    judged = judge_pairs(judge, images["a"], images["b"], prompts, len(seeds), config)
    tables, rows, metrics, trustworthy = judged.tables, judged.rows, judged.metrics, judged.trustworthy
    margin, validity = judged.tie_margin, judge.meta.get("metrics", {})
    with tempfile.TemporaryDirectory() as tmp:
        grid = side_by_side(images["a"], images["b"], prompts, seeds, rows=12)
        grid.save(Path(tmp, "side_by_side.png"))
        doc = {"a": a, "b": b, "tie_margin": margin, "tables": tables, "pairs": rows, "judges": validity}
        Path(tmp, "results.json").write_text(json.dumps(doc, indent=1))
        Path(tmp, "report.html").write_text(
            report_html(a, b, tables, validity, trustworthy, margin, config, grid, _funnel_of(a, config))
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
        meta={"request": request, "a": a, "b": b, "metrics": metrics, "trustworthy": trustworthy},
    )
    publish(manifest, manifest_uri, config.storage)
    result = EvaluateResult(manifest_uri, store.uri("report.html"), metrics, trustworthy, time.perf_counter() - t0)
    log.info(
        "evaluate: appeal win/tie/loss %.2f/%.2f/%.2f, faithfulness %.2f/%.2f/%.2f%s",
        *(metrics[f"appeal_{k}"] for k in ("win", "tie", "loss")),
        *(metrics[f"faithfulness_{k}"] for k in ("win", "tie", "loss")),
        "" if trustworthy else " (judges below the agreement bar: NOT trustworthy)",
    )
    _log(run, result, store)
    return result


def _metrics(
    tables: dict[str, dict[str, float]],
    scores: dict[str, dict[str, np.ndarray]],
    faithful: dict[str, np.ndarray],
    validity: dict[str, float],
    margin: float,
    trustworthy: bool,
) -> dict[str, float]:
    """Flat metric names that compare directly across runs in the MLflow UI."""
    out: dict[str, float] = {}
    for table in ("appeal", "faithfulness", "appeal/held_out", "faithfulness/held_out"):
        for k, v in tables.get(table, {}).items():
            out[f"{table.replace('/', '_')}_{k}"] = v
    for name in ("a", "b"):
        out[f"mean_appeal_{name}"] = float(scores[name]["appeal"].mean())
        out[f"faithfulness_mean_{name}"] = float(faithful[name].mean())  # concept accuracy, or CLIP score
    out.update({f"judge_{k}": float(v) for k, v in validity.items()})
    out.update(tie_margin=margin, trustworthy=float(trustworthy))
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


def side_by_side(a: list[Any], b: list[Any], prompts: list[Prompt], seeds: list[int], rows: int = 12) -> Any:
    """A grid of `rows` prompts spread over the benchmark (first seed): A on the left, B on the right."""
    from PIL import Image, ImageDraw, ImageFont

    size, scale, label = a[0].width, 4, 190
    cell = size * scale
    sheet = Image.new("RGB", (label + 2 * cell + 12, 16 + rows * (cell + 4)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=11)
    draw.text((label, 2), "A (candidate)", fill=(0, 0, 0), font=font)
    draw.text((label + cell + 8, 2), "B (reference)", fill=(0, 0, 0), font=font)
    for r in range(rows):
        i = (r * 13) % len(prompts)  # a stride coprime to the colour and shape counts: varied rows
        j = i * len(seeds)
        y = 16 + r * (cell + 4)
        sheet.paste(a[j].resize((cell, cell), Image.NEAREST), (label, y))
        sheet.paste(b[j].resize((cell, cell), Image.NEAREST), (label + cell + 8, y))
        draw.text((4, y + cell // 2 - 6), prompts[i].text[:34], fill=(20, 20, 20), font=font)
    return sheet


def _png_tag(image: Any) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table_html(tables: dict[str, dict[str, float]], names: list[str]) -> str:
    head = "<tr><th>comparison</th><th>n</th><th>win</th><th>tie</th><th>loss</th><th>win - loss</th></tr>"
    body = []
    for name in names:
        t = tables.get(name)
        if not t or "win" not in t:
            continue
        keys = ("win", "tie", "loss", "net") if "net" in t else ("win", "tie", "loss")
        cells = "".join(f"<td>{t[k]:.1%} [{t[k + '_lo']:.1%}, {t[k + '_hi']:.1%}]</td>" for k in keys)
        body.append(f"<tr><td>{html.escape(name)}</td><td>{int(t['n'])}</td>{cells}</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def report_html(
    a: str,
    b: str,
    tables: dict[str, dict[str, float]],
    validity: dict[str, float],
    trustworthy: bool,
    margin: float,
    config: Config,
    grid: Any,
    funnel: list[tuple[str, int]],
) -> str:
    """The evaluation report: verdict on the judges, the tables, the funnel and the side-by-side grid."""
    css = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px}"
    )
    bar = config.evaluate.min_judge_agreement
    if not validity:
        verdict = (
            "<p style='color:#b00'><b>NOT VALIDATED:</b> imported real-image judges have no oracle to agree with; "
            "export the pairs for human raters (`export_pairs`) and compare their votes.</p>"
        )
    elif trustworthy:
        verdict = f"<p style='color:#070'>Judges agree with the oracle on held-out renders (bar {bar}).</p>"
    else:
        verdict = (
            "<p style='color:#b00'><b>NOT TRUSTWORTHY:</b> the judges agree with the oracle less than "
            f"{bar} on held-out renders.</p>"
        )
    judge_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in sorted(validity.items()))
    main = ["appeal", "faithfulness", "appeal/seen", "faithfulness/seen", "appeal/held_out", "faithfulness/held_out"]
    per = sorted(k for k in tables if k.count("/") == 2)
    funnel_html = (
        "<h2>Curation funnel</h2><table>"
        + "".join(f"<tr><td>{html.escape(n)}</td><td>{k}</td></tr>" for n, k in funnel)
        + "</table>"
        if funnel
        else ""
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Photogenic evaluation</title>"
        f"<style>{css}</style></head><body><h1>A vs B</h1>"
        f"<p>A (candidate): <code>{html.escape(a)}</code><br>B (reference): <code>{html.escape(b)}</code></p>"
        f"<p>Same prompt and seed for both; appeal judged without the prompt (tie margin {margin:.3f}); faithfulness "
        f"against the prompt, both right or both wrong is a tie. Intervals: bootstrap 95% over prompts.</p>"
        f"{verdict}<h2>Results (A's wins)</h2>{_table_html(tables, main)}<h2>Side by side</h2>{_png_tag(grid)}"
        f"<h2>Judge validity (held-out renders)</h2><table>{judge_rows}</table>{funnel_html}"
        f"<h2>Per concept</h2>{_table_html(tables, per)}</body></html>"
    )


def _log(run: Any, result: EvaluateResult, store: Any) -> None:
    if run is None:
        return
    run.log_metrics({f"eval/{k}": v for k, v in result.metrics.items()})
    run.set_tags({"photogenic.eval.trustworthy": str(result.trustworthy).lower()})
    if store is not None:
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("report.html", "side_by_side.png", "results.json"):
                store.get_file(name, Path(tmp, name))
                run.log_artifact(Path(tmp, name), "evaluation")


def export_pairs(evaluation_uri: str, out_dir: str | Path, config: Config, seed: int = 0) -> Path:
    """For human raters: `pairs.json` (each pair's prompt and two images, left and right in random order)
    and `rate.html` to look at them. The key to the sides stays in `pairs.json` under `_sides`, which a
    rater's form never shows. Returns the folder."""
    manifest = read_manifest(manifest_file(evaluation_uri), config.storage)
    store = manifest.store(config.storage)
    doc = json.loads(store.get_bytes("results.json", sha256=manifest.ref("results.json").sha256))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs, sides, cells = [], {}, []
    for i, row in enumerate(doc["pairs"]):
        flip = bool(rng.integers(2))
        names = ("b", "a") if flip else ("a", "b")
        files = []
        for side, name in zip(("left", "right"), names, strict=True):
            file = f"images/{i:05d}-{side}.png"
            store.get_file(
                f"images/{name}-{i:05d}.png", out / file, sha256=manifest.ref(f"images/{name}-{i:05d}.png").sha256
            )
            files.append(file)
        pairs.append({"pair": i, "prompt": row["prompt"], "left": files[0], "right": files[1]})
        sides[str(i)] = {"left": names[0], "right": names[1]}
        cells.append(
            f"<tr><td>{i}</td><td>{html.escape(row['prompt'])}</td><td><img src='{files[0]}' width=96></td>"
            f"<td><img src='{files[1]}' width=96></td></tr>"
        )
    (out / "pairs.json").write_text(
        json.dumps({"pairs": pairs, "_sides": sides, "evaluation": evaluation_uri}, indent=1)
    )
    instructions = (
        "For each pair give two votes: appeal (which image is more beautiful, ignoring the prompt: left, right "
        "or tie) and faithfulness (which image shows the prompt: left, right, both or neither). Save them as "
        'a JSON list of {"pair": N, "appeal": "left|right|tie", "faithfulness": "left|right|both|neither"}.'
    )
    (out / "rate.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Rate pairs</title></head><body>"
        f"<p>{html.escape(instructions)}</p><table><tr><th>pair</th><th>prompt</th><th>left</th><th>right</th></tr>"
        f"{''.join(cells)}</table></body></html>"
    )
    return out


def import_votes(pairs_json: str | Path, votes: list[dict[str, Any]], config: Config) -> dict[str, dict[str, float]]:
    """Human votes into the same win/tie/loss tables as the judges' (A's wins, intervals over prompts).

    Raises:
        ConfigError: a vote names an unknown pair or an unknown choice.
    """
    doc = json.loads(Path(pairs_json).read_text())
    sides, prompts = doc["_sides"], {p["pair"]: p["prompt"] for p in doc["pairs"]}
    appeal, faith, groups = [], [], []
    for v in votes:
        pair = v.get("pair")
        if str(pair) not in sides:
            raise ConfigError(f"vote for unknown pair {pair!r} (pairs 0..{len(sides) - 1})")
        side = sides[str(pair)]
        a_is = "left" if side["left"] == "a" else "right"
        choice = v.get("appeal")
        if choice not in ("left", "right", "tie"):
            raise ConfigError(f"pair {pair}: appeal vote {choice!r} is not left, right or tie")
        appeal.append(0 if choice == "tie" else (1 if choice == a_is else -1))
        choice = v.get("faithfulness")
        if choice not in ("left", "right", "both", "neither"):
            raise ConfigError(f"pair {pair}: faithfulness vote {choice!r} is not left, right, both or neither")
        faith.append(0 if choice in ("both", "neither") else (1 if choice == a_is else -1))
        groups.append(prompts[pair])
    g = np.unique(np.array(groups), return_inverse=True)[1]
    samples = config.evaluate.bootstrap_samples
    return {
        "appeal": outcome_table(np.array(appeal), g, samples),
        "faithfulness": outcome_table(np.array(faith), g, samples),
    }
