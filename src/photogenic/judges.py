"""Learned image judges: one small network with five heads, trained on oracle-labelled renders.

The oracle knows each render's appeal and content; a judge learns to see them from pixels alone:
- `appeal`: the predicted oracle appeal in [0, 1] (the paper's aesthetic predictor; the raters of the
  visual-appeal study),
- `text`: the probability of a text overlay (the paper's OCR filter),
- `shape`, `color`, `background`: what the image shows (the CLIP-score filter; the raters of the
  text-faithfulness study).

Two disjoint judge sets exist, rendered from different world seeds: the *curation* set (trained on a
separately rendered rating set, as LAION's predictor was trained on rated photos) and the *evaluation*
set, which grades models with renders that curation never saw. Both are trained on haystack-style
renders, defects included, so that a judge of faithfulness does not confuse content with quality.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from photogenic.config import Config, ConfigError, WorldConfig, fingerprint, to_dict
from photogenic.data.ingest import bounded_map
from photogenic.manifest import Manifest, ObjectRef, manifest_file, publish, read_manifest, stage_output
from photogenic.progress import Progress
from photogenic.storage import open_store
from photogenic.world import BACKGROUNDS, COLORS, SHAPES, WORLD_VERSION, labelled_renders

__all__ = [
    "CONCEPTS",
    "Judge",
    "JudgeNet",
    "JudgeResult",
    "judge_world",
    "load_judge",
    "ClipJudge",
    "AestheticMLP",
    "import_clip_judges",
    "pairwise_agreement",
    "parse_caption",
    "train_judges",
    "validate_judge",
]

log = logging.getLogger(__name__)

Purpose = Literal["curation", "evaluation"]
CONCEPTS: dict[str, tuple[str, ...]] = {"shape": SHAPES, "color": tuple(COLORS), "background": tuple(BACKGROUNDS)}
_JUDGE_VERSION = 3  # 3: independent sets (own seeds and architectures)
_WORDS = {k: {w: re.compile(rf"\b{re.escape(w)}\b", re.IGNORECASE) for w in v} for k, v in CONCEPTS.items()}


def parse_caption(caption: str) -> dict[str, str]:
    """The concepts a caption names (the first match per kind): {'shape': 'star', 'color': 'red', ...}."""
    named = {}
    for kind, words in _WORDS.items():
        hits = [(m.start(), w) for w, rx in words.items() if (m := rx.search(caption))]
        if hits:
            named[kind] = min(hits)[1]
    return named


class JudgeNet(nn.Module):
    """A small batch-normalised CNN (it learns in a few epochs on two cores) with three stride-2 stages.
    What an image shows is read from globally pooled features (average and max: the subject can be
    anywhere); appeal also sees the 4x4 feature map, because composition depends on where things are."""

    def __init__(self, width: int = 32, classes: dict[str, int] | None = None, blocks: int = 1) -> None:
        super().__init__()
        classes = classes or {k: len(v) for k, v in CONCEPTS.items()}
        widths = (width, 2 * width, 4 * width)

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())

        layers, cin = [], 3
        for w in widths:  # `blocks` convolutions at each resolution, then one that halves it
            for _ in range(blocks):
                layers.append(block(cin, w, 1))
                cin = w
            layers.append(block(w, w, 2))
        self.features = nn.Sequential(*layers)
        pooled = 2 * widths[-1]
        self.content = nn.Sequential(nn.Linear(pooled, 256), nn.SiLU(), nn.Dropout(0.1))
        self.layout = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(widths[-1] * 16, 256), nn.SiLU())
        self.appeal = nn.Sequential(nn.Dropout(0.1), nn.Linear(512, 1))
        self.text = nn.Linear(256, 1)
        self.concepts = nn.ModuleDict({k: nn.Linear(256, n) for k, n in classes.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head for images in [-1, 1], shape (N, 3, H, W)."""
        maps = self.features(images)
        content = self.content(torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1))
        out = {
            "appeal": self.appeal(torch.cat([content, self.layout(maps)], dim=1)).squeeze(-1),
            "text": self.text(content).squeeze(-1),
        }
        out.update({k: head(content) for k, head in self.concepts.items()})
        return out


def _as_tensor(images: Any) -> torch.Tensor:
    """uint8 (N, 3, H, W) array/tensor or a list of PIL images -> float in [-1, 1]."""
    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1) for im in images])
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise TypeError(f"judges take uint8 images, got {t.dtype}")
    return t.float().div(127.5).sub(1.0)


@dataclass
class Judge:
    """A trained judge set, ready to score images."""

    net: JudgeNet
    meta: dict[str, Any]

    @torch.no_grad()
    def score(self, images: Any, batch_size: int = 512) -> dict[str, np.ndarray]:
        """Per image: `appeal` in [0, 1], `text` probability, and class probabilities per concept."""
        self.net.eval()
        x = _as_tensor(images)
        size = int(self.meta["image_size"])
        outs: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(x), batch_size):
            chunk = x[start : start + batch_size]
            if chunk.shape[-1] != size:
                chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            logits = self.net(chunk)
            for k, v in logits.items():
                p = torch.sigmoid(v) if k in ("appeal", "text") else torch.softmax(v, -1)
                outs.setdefault(k, []).append(p.numpy())
        return {k: np.concatenate(v) for k, v in outs.items()}

    def concepts_of(self, scores: dict[str, np.ndarray]) -> list[dict[str, str]]:
        """The most likely shape, colour and background of each scored image."""
        names = {k: tuple(v) for k, v in self.meta["concepts"].items()}
        n = len(scores["appeal"])
        return [{k: names[k][int(np.argmax(scores[k][i]))] for k in names} for i in range(n)]


def judge_world(config: Config, purpose: Purpose, holdout: bool = False) -> WorldConfig:
    """The world a judge set learns from (or is validated on): the main world's renderer with its own seed,
    more photogenic samples than the haystack, and no duplicates."""
    j = config.judges
    offset = j.curation_seed_offset if purpose == "curation" else j.evaluation_seed_offset
    return dataclasses.replace(
        config.world,
        seed=config.world.seed + offset + (7_919 if holdout else 0),
        num_samples=j.holdout_samples if holdout else j.train_samples,
        photogenic_rate=j.photogenic_rate,
        duplicate_rate=0.0,
    )


def judge_architecture(config: Config, purpose: Purpose) -> tuple[int, int, int]:
    """(width, blocks per resolution, torch seed) of a judge set. The two sets are independent: their own
    renders (`judge_world`), their own initial weights and batch order, and a different network (the
    evaluation judges are narrower and twice as deep), so that they do not share one model's blind spots."""
    j = config.judges
    if purpose == "curation":
        return j.width, 1, config.train.seed + j.curation_seed_offset
    return j.evaluation_width, j.evaluation_blocks, config.train.seed + j.evaluation_seed_offset


def _loss(out: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = 4.0 * F.binary_cross_entropy_with_logits(out["appeal"], y["appeal"])
    loss = loss + F.binary_cross_entropy_with_logits(out["text"], y["text"])
    for k in CONCEPTS:
        loss = loss + F.cross_entropy(out[k], y[k])
    return loss


_RENDER_BLOCK = 500  # renders per task of a worker process


def _render_block(block: tuple[WorldConfig, int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return labelled_renders(*block)


def render_labelled(
    world: WorldConfig, workers: int, progress: Progress | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`labelled_renders` of the whole world in blocks over `workers` processes: the same arrays, in the
    same memory layout, whatever the number of workers (each scene's randomness is its own index's)."""
    blocks = [(world, s, min(s + _RENDER_BLOCK, world.num_samples)) for s in range(0, world.num_samples, _RENDER_BLOCK)]
    parts = []
    for images, labels in bounded_map(_render_block, blocks, workers):
        parts.append((images, labels))
        if progress is not None:
            progress.update(len(images))
    return np.concatenate([p[0] for p in parts]), {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}


def fit(
    net: JudgeNet, images: np.ndarray, labels: dict[str, np.ndarray], config: Config, seed: int, what: str = "judges"
) -> list[float]:
    """Train `net` on renders; returns the mean loss of each epoch. Logs progress as `what`."""
    j = config.judges
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(images)
    y = {k: torch.from_numpy(v) for k, v in labels.items()}
    steps = j.epochs * max(1, len(x) // j.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=j.learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=j.learning_rate, total_steps=steps, pct_start=0.1)
    net.train()
    losses = []
    progress = Progress(what, steps, "batch", samples_per_unit=j.batch_size)
    for _ in range(j.epochs):
        perm = torch.randperm(len(x), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(x) - j.batch_size + 1, j.batch_size):
            idx = perm[start : start + j.batch_size]
            batch = x[idx].float().div(127.5).sub(1.0)
            if torch.rand((), generator=gen) < 0.5:  # mirror images: every judgement is left-right symmetric
                batch = batch.flip(-1)
            loss = _loss(net(batch), {k: v[idx] for k, v in y.items()})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + loss.item(), count + 1
            progress.update(epoch=len(losses) + 1, loss=loss.item())
        losses.append(total / max(count, 1))
    progress.close()
    net.eval()
    return losses


def pairwise_agreement(pred: np.ndarray, truth: np.ndarray, margin: float, pairs: int = 20_000, seed: int = 0) -> float:
    """How often the judge orders a random pair like the oracle does, over pairs whose oracle scores differ
    by more than `margin` (closer pairs are ties to the oracle, and ordering them is a coin flip)."""
    rng = np.random.default_rng(seed)
    i, k = rng.integers(0, len(truth), size=(2, pairs))
    d_true = truth[i] - truth[k]
    keep = np.abs(d_true) > margin
    if not keep.any():
        raise ValueError(f"no held-out pair differs by more than the tie margin {margin}")
    return float(np.mean(np.sign(pred[i] - pred[k])[keep] == np.sign(d_true[keep])))


def confident_margin(
    pred: np.ndarray, truth: np.ndarray, level: float = 0.95, pairs: int = 20_000, seed: int = 1
) -> float:
    """The smallest gap in judge scores beyond which the judge orders pairs as the oracle does at least
    `level` of the time: the judge's own tie margin."""
    rng = np.random.default_rng(seed)
    i, k = rng.integers(0, len(truth), size=(2, pairs))
    d_pred, d_true = pred[i] - pred[k], truth[i] - truth[k]
    for margin in np.arange(0.0, 0.5, 0.005):
        keep = np.abs(d_pred) > margin
        if keep.sum() < 100:
            break
        if np.mean(np.sign(d_pred[keep]) == np.sign(d_true[keep])) >= level:
            return float(margin)
    return 0.5


def validate_judge(judge: Judge, images: np.ndarray, labels: dict[str, np.ndarray], margin: float) -> dict[str, float]:
    """The judge's agreement with the oracle on held-out renders: pairwise appeal agreement, text-overlay
    accuracy, and accuracy per concept and on all three at once."""
    scores = judge.score(images)
    metrics = {
        "appeal_pairwise_agreement": pairwise_agreement(scores["appeal"], labels["appeal"], margin),
        "appeal_margin_95": confident_margin(scores["appeal"], labels["appeal"]),
        "text_accuracy": float(np.mean((scores["text"] > 0.5) == (labels["text"] > 0.5))),
    }
    right = np.ones(len(images), dtype=bool)
    for k in CONCEPTS:
        hit = scores[k].argmax(-1) == labels[k]
        metrics[f"{k}_accuracy"] = float(hit.mean())
        right &= hit
    metrics["concept_accuracy"] = float(right.mean())
    return metrics


@dataclass(frozen=True)
class JudgeResult:
    """A trained, validated judge set in the store."""

    purpose: str
    manifest_uri: str
    fingerprint: str
    metrics: dict[str, float]
    seconds: float
    reused: bool = False

    @property
    def uri(self) -> str:
        return self.manifest_uri.rsplit("/", 1)[0]


def _request(config: Config, purpose: Purpose) -> str:
    return fingerprint(
        {
            "version": _JUDGE_VERSION,
            "renderer": WORLD_VERSION,
            "purpose": purpose,
            "architecture": judge_architecture(config, purpose),
            "judges": to_dict(config.judges),
            "world": to_dict(config.world),
            "tie_margin": config.evaluate.tie_margin,
        }
    )


def train_judges(config: Config, purpose: Purpose, out: str | None = None, run: Any = None) -> JudgeResult:
    """Render, train, validate and publish one judge set (reused when an identical one is in the store).

    Args:
        config: the resolved config (`judges` section, the world's renderer, `evaluate.tie_margin`).
        purpose: `curation` (the rating set behind the automatic filters) or `evaluation` (the raters).
        out: where to publish; default `<store>/judges/<purpose>-<request fingerprint>`.
        run: an optional tracking Run for the validation metrics.
    """
    if purpose not in ("curation", "evaluation"):
        raise ConfigError(f"unknown judge purpose {purpose!r}; purposes: curation, evaluation")
    output = stage_output(
        f"judges ({purpose})", _request(config, purpose), config, out, f"judges/{purpose}-{{request}}"
    )
    store, request, manifest_uri, previous = output.store, output.request, output.manifest_uri, output.previous
    if previous is not None:
        result = JudgeResult(purpose, manifest_uri, previous.fingerprint, dict(previous.meta["metrics"]), 0.0, True)
        _log(run, result)
        return result

    t0 = time.perf_counter()
    width, blocks, seed = judge_architecture(config, purpose)
    torch.manual_seed(seed)
    world = judge_world(config, purpose)
    with Progress(f"judges ({purpose}): rendering", world.num_samples, "image") as progress:
        images, labels = render_labelled(world, config.data.workers, progress)
    net = JudgeNet(width, blocks=blocks)
    losses = fit(net, images, labels, config, seed, what=f"judges ({purpose}): training")
    meta = {
        "version": _JUDGE_VERSION,
        "purpose": purpose,
        "image_size": config.world.image_size,
        "width": width,
        "blocks": blocks,
        "seed": seed,
        "concepts": {k: list(v) for k, v in CONCEPTS.items()},
        "train_world": to_dict(world),
    }
    judge = Judge(net, meta)
    holdout = judge_world(config, purpose, holdout=True)
    with Progress(f"judges ({purpose}): rendering held-out", holdout.num_samples, "image") as progress:
        renders = render_labelled(holdout, config.data.workers, progress)
    metrics = validate_judge(judge, *renders, config.evaluate.tie_margin)
    meta.update(metrics=metrics, losses=losses, request=request)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(net.state_dict(), Path(tmp, "judge.pt"))
        Path(tmp, "judge.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        refs = tuple(ObjectRef.of(store.put_file(name, Path(tmp, name))) for name in ("judge.pt", "judge.json"))
    manifest = Manifest(kind="judge", root=store.root, objects=refs, config=to_dict(config), meta=meta)
    output.publish(manifest)
    result = JudgeResult(purpose, manifest_uri, manifest.fingerprint, metrics, time.perf_counter() - t0)
    log.info("judges (%s): %s in %.0fs -> %s", purpose, _summary(metrics), result.seconds, store.root)
    _log(run, result)
    return result


def _summary(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())


def _log(run: Any, result: JudgeResult) -> None:
    if run is not None:
        run.log_metrics({f"judge/{k}": v for k, v in result.metrics.items()})


def load_judge(uri: str, config: Config | None = None) -> Judge | ClipJudge:
    """Load a judge set from its folder or manifest URI, verifying checksums: ours (trained on renders)
    or an imported CLIP + aesthetic-MLP pair for real images."""
    storage = config.storage if config is not None else None
    manifest = read_manifest(manifest_file(uri), storage)
    if manifest.kind != "judge":
        raise ConfigError(f"{uri} holds a {manifest.kind}, not a judge set")
    store = manifest.store(storage)
    meta = json.loads(store.get_bytes("judge.json", sha256=manifest.ref("judge.json").sha256))
    if meta.get("kind") == "clip":
        return _load_clip_judge(manifest, meta, storage)
    if meta.get("version", 2) not in (2, _JUDGE_VERSION):  # 2: the first published (it did not record itself)
        raise ConfigError(
            f"{uri} holds judges of version {meta.get('version')}; this Photogenic reads version {_JUDGE_VERSION}: "
            "train them again (`photogenic judges train`)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        store.get_file("judge.pt", Path(tmp, "judge.pt"), sha256=manifest.ref("judge.pt").sha256)
        state = torch.load(Path(tmp, "judge.pt"), map_location="cpu", weights_only=True)
    net = JudgeNet(int(meta["width"]), {k: len(v) for k, v in meta["concepts"].items()}, int(meta.get("blocks", 1)))
    net.load_state_dict(state)
    return Judge(net.eval(), meta)


# ------------------------------------------------------------------------------------------------
# Judges for real images: a LAION-style aesthetic predictor on CLIP image embeddings, and CLIP score.
# ------------------------------------------------------------------------------------------------


class AestheticMLP(nn.Module):
    """The layout of LAION's improved aesthetic predictor: an MLP from a normalised CLIP image embedding
    to a score (about 1-10 on their data). Its state dict keys are `layers.N.weight` / `layers.N.bias`."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings).squeeze(-1)


@dataclass
class ClipJudge:
    """Appeal from the aesthetic MLP, faithfulness from CLIP score (100 x cosine of image and prompt)."""

    clip: Any
    processor: Any
    aesthetic: AestheticMLP
    meta: dict[str, Any]

    @torch.no_grad()
    def _image_embeddings(self, images: list[Any]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
        return F.normalize(_projected(self.clip.get_image_features(pixel_values=pixels)), dim=-1)

    @torch.no_grad()
    def score(self, images: list[Any], batch_size: int = 64) -> dict[str, np.ndarray]:
        """`appeal`: the aesthetic MLP's score of each image."""
        out = [
            self.aesthetic(self._image_embeddings(images[i : i + batch_size])).numpy()
            for i in range(0, len(images), batch_size)
        ]
        return {"appeal": np.concatenate(out)}

    @torch.no_grad()
    def clip_score(self, images: list[Any], prompts: list[str], batch_size: int = 64) -> np.ndarray:
        """CLIP score of each image against its prompt: 100 x cosine similarity, floored at 0."""
        scores = []
        for i in range(0, len(images), batch_size):
            image = self._image_embeddings(images[i : i + batch_size])
            tokens = self.processor(
                text=prompts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True
            )
            text = F.normalize(_projected(self.clip.get_text_features(**tokens)), dim=-1)
            scores.append((100 * (image * text).sum(-1)).clamp(min=0).numpy())
        return np.concatenate(scores)


def _projected(features: Any) -> torch.Tensor:
    """CLIP's projected embedding: transformers 5 returns it as the output's `pooler_output`, 4 as a tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def import_clip_judges(
    clip_path: str, aesthetic_path: str, out: str, config: Config, purpose: Purpose = "evaluation"
) -> str:
    """Register real-image judges: a CLIP model folder (transformers `CLIPModel` + processor files) and the
    aesthetic MLP's weights (`.safetensors`, or a PyTorch `.pth` state dict), each a local path or store
    URI. Returns the judge set's manifest URI."""
    from safetensors.torch import load_file, save_file
    from transformers import CLIPModel, CLIPProcessor

    from photogenic.storage import split_parent

    with tempfile.TemporaryDirectory(prefix="photogenic-judges-") as tmp:
        local = Path(tmp)
        source = open_store(clip_path, config.storage)
        for info in source.list():
            source.get_file(info.key, local / "clip" / info.key)
        parent, name = split_parent(aesthetic_path)
        weights = open_store(parent, config.storage).get_file(name, local / "download" / name)
        if name.endswith(".safetensors"):
            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        try:
            clip = CLIPModel.from_pretrained(local / "clip")
            CLIPProcessor.from_pretrained(local / "clip")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{clip_path} is not a CLIP model folder with its processor: {exc}") from exc
        mlp = AestheticMLP(clip.config.projection_dim)
        try:
            mlp.load_state_dict(state)
        except RuntimeError as exc:
            raise ConfigError(
                f"{aesthetic_path} does not hold a LAION-style aesthetic MLP for this CLIP: {exc}"
            ) from exc
        save_file({k: v.contiguous() for k, v in state.items()}, str(local / "aesthetic.safetensors"))
        meta = {"kind": "clip", "purpose": purpose, "clip": clip_path, "aesthetic": aesthetic_path, "metrics": {}}
        (local / "judge.json").write_text(json.dumps(meta, indent=2))
        store = open_store(out, config.storage)
        files = sorted(p for p in local.rglob("*") if p.is_file() and "download" not in p.parts)
        refs = tuple(ObjectRef.of(store.put_file(p.relative_to(local).as_posix(), p)) for p in files)
    manifest = Manifest(kind="judge", root=store.root, objects=refs, config=to_dict(config), meta=meta)
    return publish(manifest, store.uri("manifest.json"), config.storage)


def _load_clip_judge(manifest: Manifest, meta: dict[str, Any], storage: Any) -> ClipJudge:
    from safetensors.torch import load_file
    from transformers import CLIPModel, CLIPProcessor

    store = manifest.store(storage)
    with tempfile.TemporaryDirectory() as tmp:
        for ref in manifest.objects:
            store.get_file(ref.key, Path(tmp, ref.key), sha256=ref.sha256)
        clip = CLIPModel.from_pretrained(Path(tmp, "clip")).eval()
        processor = CLIPProcessor.from_pretrained(Path(tmp, "clip"))
        mlp = AestheticMLP(clip.config.projection_dim)
        mlp.load_state_dict(load_file(str(Path(tmp, "aesthetic.safetensors"))))
    return ClipJudge(clip, processor, mlp.eval(), meta)
