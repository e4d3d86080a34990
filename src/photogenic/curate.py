"""The curation funnel (paper, section 3.3): find the few photogenic needles in the haystack.

1. Automatic filters that see only pixels and captions, never the oracle: size and aspect, text overlay
   (the OCR filter), noise, sharpness, exposure, a learned aesthetic score, caption-image agreement (the
   CLIP-score filter), then concept balancing. The learned ones come from the *curation* judge set,
   trained on a separately rendered rating set (`photogenic.judges`).
2. Two review rounds: generalists for recall, specialists for precision. On the toy world the reviewers
   are the oracle with rating noise, and they write the clean caption (the paper's hand-written one):
   this is a *simulation*, labelled as such in every report. For real data, `review=export` writes a
   contact sheet and a candidates JSON for people, and `review=import` reads their approved keys.
3. Concepts held out of the QT set entirely, to measure how far quality-tuning generalises.

Nothing is lost: every input sample is either in the QT set or in `rejected.jsonl` with the stage that
dropped it and all of its reasons, and the funnel's counts add up.

Besides the QT set, curation publishes a *rehearsal set*: every sample the automatic filters and concept
balancing kept, before review and hold-out, with its web caption (the paper's 200M images of billions,
here about one in fifteen). Quality-tuning rehearses a small share of it in every batch
(`train.quality_tune.rehearsal_fraction`), so that concepts the few needles lack, held-out ones included,
are still seen, and seen in a look the automatic filters already vouch for.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photogenic.config import Config, ConfigError, fingerprint, to_dict
from photogenic.data.shards import ShardSink, iter_dataset
from photogenic.judges import CONCEPTS, Judge, load_judge, parse_caption
from photogenic.manifest import (
    Manifest,
    ObjectRef,
    content_fingerprint,
    manifest_file,
    publish,
    read_manifest,
    stage_output,
)
from photogenic.storage import join_uri, open_store

__all__ = ["CurateResult", "ReviewNeeded", "curate", "parse_caption", "pixel_features", "FILTERS"]

log = logging.getLogger(__name__)

_CURATE_VERSION = 3  # 2: also publishes the rehearsal set; 3: without held-out concepts
FILTERS = ("size", "text_overlay", "noise", "sharpness", "exposure", "aesthetic", "caption_agreement")


class ReviewNeeded(RuntimeError):
    """`review=export` wrote the candidates for people to review; run again with `review=import`."""


@dataclass
class Candidate:
    """One sample's path through the funnel."""

    key: str
    caption: str
    size: tuple[int, int]
    features: dict[str, float]
    predicted: dict[str, str]
    thumb: np.ndarray  # (3, S, S) uint8, at the judge's size
    rejected_by: str | None = None
    reasons: list[str] = field(default_factory=list)
    qt_caption: str | None = None
    rating: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CurateResult:
    """The QT dataset and the funnel that made it."""

    manifest_uri: str
    fingerprint: str
    funnel: list[tuple[str, int]]
    report_uri: str
    seconds: float
    reused: bool = False
    rehearsal_uri: str = ""  # the rehearsal set's manifest: the automatic stage's survivors, web captions

    @property
    def counts(self) -> dict[str, int]:
        return {"input": self.funnel[0][1], "kept": self.funnel[-1][1]}


def pixel_features(images: np.ndarray) -> dict[str, np.ndarray]:
    """Hand-made image statistics of uint8 images (N, 3, H, W), on the luminance in [0, 1]:
    `sharpness` (variance of the Laplacian), `noise` (Donoho's robust sigma from the finest diagonal Haar
    band), `brightness` (mean) and `clipped` (share of pixels within 2% of black or white)."""
    # Elementwise, not `tensordot`: BLAS's kernels round a pixel's weighted sum differently by where it
    # lies in memory, so a container's allocator gave other luminance bits than the same run as processes.
    rgb = images.astype(np.float32)
    g = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]) / 255  # float32: numpy 2's scalars are weak
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    h, w = g.shape[1] // 2 * 2, g.shape[2] // 2 * 2
    hh = (g[:, 0:h:2, 0:w:2] - g[:, 0:h:2, 1:w:2] - g[:, 1:h:2, 0:w:2] + g[:, 1:h:2, 1:w:2]) / 2
    n = len(g)
    # Sums in float64, so that their float32 results do not follow how numpy's SIMD loops split a row.
    return {
        "sharpness": lap.reshape(n, -1).var(axis=1, dtype=np.float64).astype(np.float32),
        "noise": np.median(np.abs(hh).reshape(n, -1), axis=1) / 0.6745,
        "brightness": g.reshape(n, -1).mean(axis=1, dtype=np.float64).astype(np.float32),
        "clipped": ((g < 0.02) | (g > 0.98)).reshape(n, -1).mean(axis=1),
    }


def _decode(sample: dict[str, Any], size: int) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image

    ext = next(e for e in ("png", "jpg", "jpeg", "webp") if e in sample)
    with Image.open(io.BytesIO(sample[ext])) as im:
        rgb = im.convert("RGB")
        original = rgb.size
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy(), original


def _score(batch: list[dict[str, Any]], judge: Judge, size: int) -> list[Candidate]:
    decoded = [_decode(s, size) for s in batch]
    thumbs = np.stack([d[0] for d in decoded])
    pixels = pixel_features(thumbs)
    scores = judge.score(thumbs)
    predicted = judge.concepts_of(scores)
    out = []
    for i, sample in enumerate(batch):
        caption = sample.get("txt", b"").decode("utf-8", errors="replace")
        named = parse_caption(caption)
        agreement = float(np.mean([scores[k][i][CONCEPTS[k].index(v)] for k, v in named.items()])) if named else 0.0
        features = {k: float(v[i]) for k, v in pixels.items()}
        features.update(
            aesthetic=float(scores["appeal"][i]), text_probability=float(scores["text"][i]), caption_agreement=agreement
        )
        out.append(Candidate(sample["__key__"], caption, decoded[i][1], features, predicted[i], thumbs[i]))
    return out


def _reasons(c: Candidate, cfg: Any) -> list[tuple[str, str]]:
    """(filter, reason) for every automatic filter this candidate fails, in funnel order."""
    f, (w, h) = c.features, c.size
    out = []
    if min(w, h) < cfg.min_side or max(w, h) / max(min(w, h), 1) > cfg.max_aspect_ratio:
        out.append(("size", f"size {w}x{h} (min side {cfg.min_side}, max aspect {cfg.max_aspect_ratio})"))
    if f["text_probability"] > cfg.max_text_probability:
        out.append(("text_overlay", f"text overlay p={f['text_probability']:.2f} > {cfg.max_text_probability}"))
    if f["noise"] > cfg.max_noise:
        out.append(("noise", f"noise {f['noise']:.4f} > {cfg.max_noise}"))
    if f["sharpness"] < cfg.min_sharpness:
        out.append(("sharpness", f"sharpness {f['sharpness']:.5f} < {cfg.min_sharpness}"))
    if f["clipped"] > cfg.max_clipped:
        out.append(("exposure", f"clipped {f['clipped']:.2f} > {cfg.max_clipped}"))
    if f["aesthetic"] < cfg.min_aesthetic_score:
        out.append(("aesthetic", f"aesthetic {f['aesthetic']:.3f} < {cfg.min_aesthetic_score}"))
    if f["caption_agreement"] < cfg.min_caption_agreement:
        out.append(
            ("caption_agreement", f"caption agreement {f['caption_agreement']:.2f} < {cfg.min_caption_agreement}")
        )
    return out


def _reject(c: Candidate, stage: str, reasons: list[str]) -> None:
    c.rejected_by = stage
    c.reasons = reasons


def automatic_stage(candidates: list[Candidate], config: Config) -> list[tuple[str, int]]:
    """Apply the automatic filters and concept balancing in place; returns the funnel counts. Sees only
    pixels, captions and the rating-set judges."""
    cfg = config.curate
    funnel = [("input", len(candidates))]
    for c in candidates:
        failed = _reasons(c, cfg)
        if failed:
            _reject(c, failed[0][0], [r for _, r in failed])
    first = [FILTERS.index(c.rejected_by) if c.rejected_by else len(FILTERS) for c in candidates]
    for i, name in enumerate(FILTERS):
        funnel.append((name, sum(1 for f in first if f > i)))
    by_concept: dict[tuple[str, str], list[Candidate]] = {}
    for c in candidates:
        if c.rejected_by is None:
            by_concept.setdefault((c.predicted["shape"], c.predicted["color"]), []).append(c)
    for (shape, color), group in by_concept.items():
        group.sort(key=lambda c: (-c.features["aesthetic"], c.key))
        for c in group[cfg.max_per_concept :]:
            _reject(c, "balance", [f"concept {color} {shape} has {len(group)} > {cfg.max_per_concept} candidates"])
    funnel.append(("balance", sum(1 for c in candidates if c.rejected_by is None)))
    return funnel


def _noisy(appeal: float, key: str, seed: int, round_: str, sigma: float) -> float:
    digest = int(fingerprint({"key": key, "round": round_})[:12], 16)
    return float(appeal + np.random.default_rng([seed, digest]).normal(0, sigma))


def simulated_review(
    candidates: list[Candidate], oracle: dict[str, dict[str, Any]], config: Config
) -> list[tuple[str, int]]:
    """SIMULATED reviewers: the oracle's appeal plus rating noise. Generalists keep what rates at least
    `generalist_min_rating` (recall); specialists keep the best that rate at least `specialist_min_rating`,
    at most `target_size` (precision), and write the clean caption."""
    cfg = config.curate
    pool = [c for c in candidates if c.rejected_by is None]
    missing = [c.key for c in pool if c.key not in oracle]
    if missing:
        raise ConfigError(
            f"simulated review: the oracle sidecar has no verdict for {len(missing)} keys, e.g. {missing[:3]}"
        )
    for c in pool:
        c.rating["generalist"] = _noisy(oracle[c.key]["appeal"], c.key, cfg.seed, "generalist", cfg.generalist_noise)
        if c.rating["generalist"] < cfg.generalist_min_rating:
            _reject(c, "generalists", [f"generalist rating {c.rating['generalist']:.3f} < {cfg.generalist_min_rating}"])
    pool = [c for c in pool if c.rejected_by is None]
    funnel = [("generalists", len(pool))]
    for c in pool:
        c.rating["specialist"] = _noisy(oracle[c.key]["appeal"], c.key, cfg.seed, "specialist", cfg.specialist_noise)
    pool.sort(key=lambda c: (-c.rating["specialist"], c.key))
    for rank, c in enumerate(pool):
        if c.rating["specialist"] < cfg.specialist_min_rating:
            _reject(c, "specialists", [f"specialist rating {c.rating['specialist']:.3f} < {cfg.specialist_min_rating}"])
        elif rank >= cfg.target_size:
            _reject(c, "specialists", [f"specialists keep the best {cfg.target_size}"])
        else:
            c.qt_caption = oracle[c.key]["clean_caption"]
    funnel.append(("specialists", sum(1 for c in pool if c.rejected_by is None)))
    return funnel


def imported_review(candidates: list[Candidate], approved: Any) -> list[tuple[str, int]]:
    """People's verdict: `approved` is a list of keys, or of {"key", "caption"} (their written caption)."""
    entries = [a if isinstance(a, dict) else {"key": a} for a in approved]
    by_key = {c.key: c for c in candidates if c.rejected_by is None}
    unknown = [e["key"] for e in entries if e["key"] not in by_key]
    if unknown:
        raise ConfigError(f"approved keys that are not curation candidates: {unknown[:5]} ({len(unknown)} in all)")
    chosen = {e["key"]: e.get("caption") for e in entries}
    for key, c in by_key.items():
        if key in chosen:
            c.qt_caption = chosen[key] or c.caption
        else:
            _reject(c, "review", ["not approved by the reviewers"])
    return [("review", len(chosen))]


def hold_out(candidates: list[Candidate], concepts: tuple[str, ...]) -> tuple[str, int]:
    """Drop kept samples whose QT caption names a held-out concept."""
    for c in candidates:
        if c.rejected_by is None:
            named = set(parse_caption(c.qt_caption or c.caption).values())
            held = sorted(named & set(concepts))
            if held:
                _reject(c, "held_out", [f"held-out concept(s) {', '.join(held)}"])
    return ("held_out", sum(1 for c in candidates if c.rejected_by is None))


def without_held_out(candidates: list[Candidate], concepts: tuple[str, ...]) -> list[Candidate]:
    """The candidates whose caption names no held-out concept and in which the curation judges see none:
    a held-out concept stays out of everything quality-tuning sees, rehearsal included (web captions are
    noisy, so the caption alone would let some through)."""
    held = set(concepts)
    return [c for c in candidates if not (set(parse_caption(c.caption).values()) | set(c.predicted.values())) & held]


def _thumb_tag(thumb: np.ndarray, scale: int = 3) -> str:
    from PIL import Image

    im = Image.fromarray(thumb.transpose(1, 2, 0))
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def contact_sheet_html(
    title: str, candidates: list[Candidate], note: str = "", funnel: list[tuple[str, int]] = ()
) -> str:
    """A self-contained HTML page: the funnel table and every candidate's thumbnail, key and caption."""
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{k}</td></tr>" for n, k in funnel)
    table = f"<table><tr><th>stage</th><th>remaining</th></tr>{rows}</table>" if funnel else ""
    cells = "".join(
        f"<figure>{_thumb_tag(c.thumb)}<figcaption><code>{html.escape(c.key)}</code><br>"
        f"{html.escape(c.qt_caption or c.caption)}<br>aesthetic {c.features['aesthetic']:.2f}</figcaption></figure>"
        for c in candidates
    )
    css = (
        "body{font-family:sans-serif;margin:2em}figure{display:inline-block;width:130px;margin:4px;font-size:11px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{css}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(note)}</p>{table}<div>{cells}</div></body></html>"
    )


def _oracle(manifest: Manifest, config: Config) -> dict[str, dict[str, Any]]:
    key = manifest.meta.get("sidecars", {}).get("oracle")
    if not key:
        raise ConfigError(
            "curate.review=simulated needs the toy world's oracle sidecar, and this dataset has none; "
            "for real data run with curate.review=export, then curate.review=import --approved FILE"
        )
    out = {}
    with manifest.open(key, config.storage) as f:
        for line in f:
            row = json.loads(line)
            out[row["key"]] = row
    return out


def _load_approved(uri: str, config: Config) -> Any:
    from photogenic.storage import split_parent

    parent, name = split_parent(uri)
    data = json.loads(open_store(parent, config.storage).get_bytes(name))
    return data["approved"] if isinstance(data, dict) else data


def curate(
    data_uri: str,
    judges_uri: str,
    config: Config,
    out: str | None = None,
    approved: str | None = None,
    run: Any = None,
) -> CurateResult:
    """Run the funnel over a validated dataset and publish the QT dataset (the function behind
    `photogenic curate`).

    Args:
        data_uri: the validated dataset's manifest.
        judges_uri: the *curation* judge set (`photogenic judges train --purpose curation`).
        config: the resolved config (`curate` section).
        out: the QT dataset's URI; default `<store>/datasets/curated-<request fingerprint>`.
        approved: with `curate.review=import`, a JSON of approved keys (a list, or {"approved": [...]}).
        run: an optional tracking Run for the funnel counts and the report.

    Raises:
        ReviewNeeded: `curate.review=export` wrote `review.html` and `candidates.json` under `out`.
        ConfigError: simulated review without an oracle, an import without `approved`, unknown keys.
    """
    t0 = time.perf_counter()
    cfg = config.curate
    if cfg.review == "import" and not approved:
        raise ConfigError("curate.review=import needs --approved FILE (the reviewers' JSON of approved keys)")
    source = read_manifest(data_uri, config.storage)
    judge_manifest = read_manifest(manifest_file(judges_uri))
    if judge_manifest.meta.get("purpose") != "curation":
        raise ConfigError(f"{judges_uri} is a {judge_manifest.meta.get('purpose')!r} judge set; curation needs its own")
    output = stage_output(
        "curate",
        {
            "version": _CURATE_VERSION,
            "data": source.fingerprint,
            "judges": judge_manifest.fingerprint,
            "curate": to_dict(cfg),
            "approved": approved,
        },
        config,
        out,
        "datasets/curated-{request}",
    )
    store, request, manifest_uri = output.store, output.request, output.manifest_uri
    if output.previous is not None:
        result = CurateResult(
            manifest_uri,
            output.previous.fingerprint,
            [tuple(x) for x in output.previous.meta["funnel"]],
            store.uri("report.html"),
            0.0,
            True,
            output.previous.meta["rehearsal"],
        )
        _log(run, result, config)
        return result

    judge = load_judge(judges_uri, config)
    if not isinstance(judge, Judge):
        raise ConfigError(
            f"{judges_uri} holds real-image (CLIP) judges; curation's automatic filters need judges trained on "
            "rated renders (`photogenic judges train --purpose curation`); curate real data with "
            "curate.review=export, then curate.review=import --approved FILE"
        )
    size = int(judge.meta["image_size"])
    candidates: list[Candidate] = []
    batch: list[dict[str, Any]] = []
    for sample in iter_dataset(source, config.storage):
        batch.append(sample)
        if len(batch) == 1024:
            candidates += _score(batch, judge, size)
            batch = []
    if batch:
        candidates += _score(batch, judge, size)
    funnel = automatic_stage(candidates, config)
    filtered = [c for c in candidates if c.rejected_by is None]  # the review's pool
    rehearsal_set = without_held_out(filtered, cfg.holdout_concepts)

    if cfg.review == "export":
        pool = sorted(filtered, key=lambda c: -c.features["aesthetic"])
        rows = [{"key": c.key, "caption": c.caption, **c.features} for c in pool]
        store.put_bytes("candidates.json", json.dumps({"candidates": rows}, indent=1).encode())
        note = (
            "Approve the photogenic ones: save a JSON list of keys (or of {key, caption} with your caption) and run "
            "curate again with curate.review=import --approved FILE."
        )
        store.put_bytes("review.html", contact_sheet_html("Curation candidates", pool, note, funnel).encode())
        raise ReviewNeeded(
            f"{len(pool)} candidates for review: {store.uri('review.html')} and {store.uri('candidates.json')}"
        )
    if cfg.review == "simulated":
        funnel += simulated_review(candidates, _oracle(source, config), config)
    else:
        funnel += imported_review(candidates, _load_approved(approved, config))
    funnel.append(hold_out(candidates, cfg.holdout_concepts))

    kept = [c for c in candidates if c.rejected_by is None]
    if not kept:
        raise ConfigError(
            f"curation kept no sample of {len(candidates)}: funnel {funnel}; loosen the curate thresholds"
        )
    rehearsal_store = open_store(join_uri(store.root, "rehearsal"), config.storage)
    manifest, rehearsal = _publish(
        store, rehearsal_store, source, kept, rehearsal_set, candidates, funnel, request, config
    )
    rehearsal_uri = rehearsal_store.uri("manifest.json")
    publish(rehearsal, rehearsal_uri, config.storage)
    manifest.meta["rehearsal"] = rehearsal_uri
    output.publish(manifest)  # last: it marks the request done
    result = CurateResult(
        manifest_uri,
        manifest.fingerprint,
        funnel,
        store.uri("report.html"),
        time.perf_counter() - t0,
        rehearsal_uri=rehearsal_uri,
    )
    log.info(
        "curate: rehearsal set of %d samples (%d named or showed a held-out concept): %s",
        len(rehearsal_set),
        len(filtered) - len(rehearsal_set),
        rehearsal_uri,
    )
    log.info("curate: %s in %.0fs", " -> ".join(f"{n} {k}" for n, k in funnel), result.seconds)
    _log(run, result, config)
    return result


def _curated_sample(sample: dict[str, Any], c: Candidate, caption: str) -> dict[str, Any]:
    meta = json.loads(sample.get("json", b"{}") or b"{}")
    meta.update(web_caption=c.caption, curation={**c.features, **c.rating})
    members = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
    members.update(txt=caption, json=meta)
    return members


def _publish(
    store: Any,
    rehearsal_store: Any,
    source: Manifest,
    kept: list[Candidate],
    rehearsal_set: list[Candidate],
    candidates: list[Candidate],
    funnel: list[tuple[str, int]],
    request: str,
    config: Config,
) -> tuple[Manifest, Manifest]:
    """Write the QT set (reviewed captions) and the rehearsal set (web captions) in one pass over the
    source; returns their manifests."""
    chosen = {c.key: c for c in kept}
    rehearsed = {c.key: c for c in rehearsal_set}
    limits = (config.data.shard_max_samples, config.data.shard_max_bytes)
    with (
        ShardSink(store, "shards", *limits, name="qt") as sink,
        ShardSink(rehearsal_store, "shards", *limits, name="rehearsal") as rehearsal_sink,
    ):
        for sample in iter_dataset(source, config.storage):
            key = sample["__key__"]
            if key in chosen:
                c = chosen[key]
                sink.write(_curated_sample(sample, c, c.qt_caption or c.caption))
            if key in rehearsed:
                rehearsal_sink.write(_curated_sample(sample, rehearsed[key], rehearsed[key].caption))
    automatic = funnel[: len(FILTERS) + 2] + [("held_out", len(rehearsal_set))]  # input, filters, balancing, hold-out
    rehearsal = _shard_manifest(
        rehearsal_store,
        rehearsal_sink,
        [],
        {"input": len(candidates), "samples": len(rehearsal_set)},
        {"stage": "curate", "role": "rehearsal", "request": request, "funnel": automatic},
        source,
        config,
    )
    with tempfile.TemporaryDirectory() as tmp:
        rejected = Path(tmp, "rejected.jsonl")
        with rejected.open("w") as f:
            for c in candidates:
                if c.rejected_by is not None:
                    row = {"key": c.key, "stage": c.rejected_by, "reasons": c.reasons, "caption": c.caption}
                    f.write(json.dumps({**row, "features": c.features, "rating": c.rating}, sort_keys=True) + "\n")
        funnel_doc = {
            "funnel": funnel,
            "review": config.curate.review,
            "simulated_review": config.curate.review == "simulated",
            "holdout_concepts": list(config.curate.holdout_concepts),
        }
        Path(tmp, "funnel.json").write_text(json.dumps(funnel_doc, indent=2))
        note = (
            "Review rounds SIMULATED: the toy world's oracle with rating noise plays the reviewers."
            if config.curate.review == "simulated"
            else "Reviewed by people (imported approvals)."
        )
        Path(tmp, "report.html").write_text(contact_sheet_html("Quality-tuning set", kept, note, funnel))
        side = [ObjectRef.of(store.put_file(n, Path(tmp, n))) for n in ("rejected.jsonl", "funnel.json", "report.html")]
    counts = {"input": len(candidates), "samples": len(kept), "rejected": len(candidates) - len(kept)}
    meta = {
        "stage": "curate",
        "request": request,
        "funnel": funnel,
        "sidecars": {"rejected": "rejected.jsonl", "funnel": "funnel.json", "report": "report.html"},
    }
    return _shard_manifest(store, sink, side, counts, meta, source, config), rehearsal


def _shard_manifest(
    store: Any,
    sink: ShardSink,
    side: list[ObjectRef],
    counts: dict[str, int],
    meta: dict[str, Any],
    source: Manifest,
    config: Config,
) -> Manifest:
    """A dataset manifest of a sink's shards and side files (the report is not part of the content)."""
    refs = [s.ref for s in sink.shards] + side
    return Manifest(
        kind="dataset",
        root=store.root,
        objects=refs,
        fingerprint=content_fingerprint("dataset", tuple(r for r in refs if r.key != "report.html")),
        counts=counts,
        config=to_dict(config),
        meta={
            **meta,
            "input": {"fingerprint": source.fingerprint, "counts": dict(source.counts)},
            "shards": [{"key": s.ref.key, "samples": s.samples} for s in sink.shards],
        },
    )


def _log(run: Any, result: CurateResult, config: Config | None = None) -> None:
    if run is None:
        return
    run.log_metrics({f"curate/funnel_{i:02d}_{name}": count for i, (name, count) in enumerate(result.funnel)})
    run.log_metrics({"curate/kept": result.funnel[-1][1], "curate/seconds": result.seconds})
    run.set_tags(
        {
            "photogenic.dataset.qt": result.fingerprint,
            "photogenic.dataset.qt_uri": result.manifest_uri,
            "photogenic.dataset.rehearsal_uri": result.rehearsal_uri,
        }
    )
    rehearsal = read_manifest(result.rehearsal_uri, config.storage)
    run.log_metrics({"curate/rehearsal": float(rehearsal.counts["samples"])})
    manifest = read_manifest(result.manifest_uri, config.storage if config else None)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("funnel.json", "report.html"):
            local = manifest.store(config.storage if config else None).get_file(name, Path(tmp, name))
            run.log_artifact(local, "curation")
