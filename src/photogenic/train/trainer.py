"""One trainer, recipes of it: `autoencoder`, `pretrain` and `quality_tune` differ only in a few methods.

Every source of randomness is a function of (seed, step, rank), and so is the data order: a run
resumed from a checkpoint takes exactly the path an uninterrupted run would have taken.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from photogenic.config import Config, ConfigError, ModelConfig, RecipeConfig, fingerprint, to_dict
from photogenic.manifest import Manifest, ManifestError, ObjectRef, publish, read_manifest
from photogenic.storage import join_uri, open_store
from photogenic.train.checkpoint import Checkpoints
from photogenic.train.data import RankData, load_rank_data
from photogenic.train.deepspeed_config import deepspeed_config, micro_batch_size, wrap, zero_stage
from photogenic.train.distributed import Dist, rank_lost, setup_distributed

__all__ = [
    "Trainer",
    "AutoencoderTrainer",
    "DiffusionTrainer",
    "TrainResult",
    "RECIPES",
    "train",
    "run_uri",
    "finished_model",
    "freeze_matching",
    "replay_counts",
    "default_replay",
    "load_model_dir",
    "load_model_pipeline",
]

log = logging.getLogger(__name__)

SAMPLE_PROMPTS = (
    "a red circle on a sky background",
    "a blue square on a sand background",
    "a yellow star on a night background",
    "a green triangle on a snow background",
    "a purple ring on a grass background",
    "an orange cross on a stone background",
    "a pink star on a grass background",
    "a cyan square on a night background",
)


@dataclass(frozen=True)
class TrainResult:
    """What a training recipe produced."""

    recipe: str
    steps: int
    model_uri: str
    manifest_uri: str
    fingerprint: str
    resumed_from: int | None
    final_loss: float
    seconds: float
    samples_per_s: float = 0.0
    reused: bool = False


def _seeded(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) * 1_013 + rank)


def load_model_dir(uri: str, cache: Path) -> Path:
    """A local copy of an exported model (a folder with `manifest.json`), verified against its manifest.

    Raises:
        ManifestError: no Photogenic model at `uri`.
    """
    try:
        manifest = read_manifest(join_uri(uri, "manifest.json"))
    except ManifestError as exc:
        raise ManifestError(f"no Photogenic model at {uri}: {exc}") from exc
    if manifest.kind != "model":
        raise ManifestError(f"{uri} holds a {manifest.kind}, not a model")
    local = cache / manifest.fingerprint[:16]
    if not (local / ".complete").exists():
        store = manifest.store()
        for ref in manifest.objects:
            store.get_file(ref.key, local / ref.key, sha256=ref.sha256)
        (local / ".complete").write_text(manifest.fingerprint)
    return local


def load_model_pipeline(uri: str, config: Config) -> Any:
    """The diffusers pipeline of an exported or imported model, from the workspace's model cache."""
    from photogenic.models.pipeline import load_pipeline

    return load_pipeline(load_model_dir(uri, Path(config.workspace, "cache", "models").resolve()))


def publish_model_dir(local: Path, out_uri: str, meta: dict[str, Any], config: Config) -> tuple[str, str]:
    """Upload an exported model folder and write its manifest last; returns (manifest URI, version)."""
    store = open_store(out_uri, config.storage)
    refs = [
        ObjectRef.of(store.put_file(p.relative_to(local).as_posix(), p))
        for p in sorted(local.rglob("*"))
        if p.is_file()
    ]
    manifest = Manifest(kind="model", root=store.root, objects=refs, config=to_dict(config), meta=meta)
    uri = publish(manifest, store.uri("manifest.json"), config.storage)
    return uri, manifest.fingerprint


def drop_local_paths(local: Path) -> None:
    """diffusers and transformers write where a model was loaded from (`_name_or_path`: here a cache folder
    in the workspace) into the configs they save; without it, the same weights exported from any workspace,
    machine or container have the same files, hence the same version."""
    for path in sorted(local.rglob("config.json")):
        config = json.loads(path.read_text())
        if isinstance(config, dict) and "_name_or_path" in config:
            del config["_name_or_path"]
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


_DIFFUSERS_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def import_model(src: str, out: str, config: Config) -> tuple[str, str]:
    """Bring an existing diffusers text-to-image model (a folder or store prefix in the Stable Diffusion
    1.5 layout: unet, vae, text_encoder, tokenizer, scheduler) into the store with a manifest, so that
    every stage takes it as a model URI. Returns (manifest URI, version).

    Raises:
        ManifestError: `src` is not such a folder (the message names what is missing).
    """
    from photogenic.models.pipeline import pipeline_class

    source = open_store(src, config.storage)
    with tempfile.TemporaryDirectory(prefix="photogenic-import-") as tmp:
        local = Path(tmp)
        for info in source.list():
            source.get_file(info.key, local / info.key)
        if not (local / "model_index.json").exists():
            raise ManifestError(f"{src} is not a diffusers model folder: no model_index.json")
        missing = [p for p in _DIFFUSERS_PARTS if not (local / p).is_dir()]
        if missing:
            raise ManifestError(
                f"{src} lacks {', '.join(missing)}: a text-to-image model needs {', '.join(_DIFFUSERS_PARTS)}"
            )
        meta = {"recipe": "import", "imported_from": src, "pipeline": pipeline_class(local)}
        return publish_model_dir(local, out, meta, config)


@dataclass
class Trainer:
    """The loop, checkpoints, tracking and export; recipes override `build_model`, `prepare`,
    `compute_loss`, `after_step` and `export`.

    Args:
        config: the resolved config.
        data_uri: manifest of the (validated) training dataset.
        out: the run's URI (checkpoints/ and model/ go below it).
        base: an exported model to start from (the autoencoder for pretraining, the pretrained
            model for quality-tuning).
        run: an optional tracking Run (side effects on rank 0 only).
        replay: manifest of a dataset the recipe's `replay_fraction` (a share of every batch) and
            `guidance_preservation` (its captions) read; unused when both are 0.
    """

    config: Config
    data_uri: str
    out: str
    base: str | None = None
    run: Any = None
    progress: bool = True
    name: str = ""
    judges: str | None = None
    replay: str | None = None
    dist: Dist = field(init=False)
    recipe: RecipeConfig = field(init=False)

    def __post_init__(self) -> None:
        self.recipe = getattr(self.config.train, self.name)
        self.workdir = Path(self.config.workspace, "cache").resolve()
        self.best: dict[str, Any] = {"score": None, "step": None, "bad": 0, "weights": None, "history": []}

    supports_replay = False  # recipes whose batches may mix in a replay dataset

    # ------------------------------------------------------------------------------ recipe hooks

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    @staticmethod
    def model_settings(model: ModelConfig) -> dict[str, Any]:
        """The `model` settings the weights depend on (a run's identity, its checkpoints' signature): the
        whole section unless a recipe builds from less of it."""
        return to_dict(model)

    def prepare(self, data: RankData) -> None:
        """Anything computed once from the data before the loop."""

    def compute_loss(self, batch: tuple[Any, ...], step: int, micro: int) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (EMA)."""

    def validation_score(self, step: int) -> float:
        """The early-stopping criterion (higher is better); recipes with `validate_every` define it."""
        raise ConfigError(f"recipe {self.name} has no validation criterion; set train.{self.name}.validate_every=0")

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The weights early stopping keeps when a validation improves (CPU copies)."""
        raise NotImplementedError

    def load_best_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Make the kept best weights the ones `export` writes."""
        raise NotImplementedError

    def step_metrics(self) -> dict[str, float]:
        """Recipe-specific terms of the last step's loss, logged next to it."""
        return {}

    def client_state(self) -> dict[str, Any]:
        return {}

    def load_client_state(self, state: dict[str, Any]) -> None:
        """Restore what `client_state` saved."""

    def export(self, local: Path) -> None:
        raise NotImplementedError

    def signature(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to be resumed by it."""
        return {
            "recipe": self.name,
            "model": fingerprint(self.model_settings(self.config.model)),
            "image_size": self.image_size,
            "zero_stage": zero_stage(self.config.train, self.dist.world_size),
            "world_size": self.dist.world_size,
        }

    # ------------------------------------------------------------------------------ the loop

    def build(self) -> None:
        self.dist = setup_distributed(self.config.train.collective_timeout_s)
        torch.manual_seed(self.config.train.seed)  # the same initial weights on every rank
        self.micro = micro_batch_size(self.recipe, self.dist.world_size, self.name)
        self.image_size = self.config.world.image_size
        self.model = self.build_model().to(self.dist.device)  # may set the image size of a given model
        freeze_matching(self.model, self.recipe.frozen_params, f"train.{self.name}.frozen_params")
        self.data = self._rank_data(self.data_uri)
        self.replay_data, self.replay_count = self._load_replay()
        self.prepare(self.data)
        self.engine, self.optimizer, self.scheduler = wrap(
            self.model, self.config.train, self.recipe, self.name, self.dist.world_size
        )
        self.checkpoints = Checkpoints(
            store=open_store(join_uri(self.out, "checkpoints"), self.config.storage),
            local_dir=self.workdir / "checkpoints" / fingerprint(self.out)[:12],
            dist=self.dist,
            keep=self.recipe.keep_checkpoints,
            signature=self.signature(),
        )

    def _load_replay(self) -> tuple[RankData | None, int]:
        """This rank's share of the replay dataset (when a setting uses it) and the samples each
        micro-batch takes from it."""
        uses = _replay_uses(self.recipe)
        if not uses:
            if self.replay:
                log.info(
                    "%s: replay data %s not used (no train.%s.%s)", self.name, self.replay, self.name, _REPLAY_SETTINGS
                )
            return None, 0
        key, value = next(iter(uses.items()))
        key = f"train.{self.name}.{key}"
        if not self.supports_replay:
            raise ConfigError(f"config key {key!r} ({value}): recipe {self.name} does not replay data; set it to 0")
        if not self.replay:
            raise ConfigError(
                f"config key {key!r} ({value}) needs --replay-data, the dataset to rehearse: {self.data_uri} has no "
                f"rehearsal set beside it (`photogenic curate` publishes one); or set it to 0"
            )
        from photogenic.manifest import read_manifest

        size = read_manifest(self.replay, self.config.storage).counts.get("samples")
        if size == 0:
            raise ConfigError(
                f"config key {key!r} ({value}) rehearses {self.replay}, which holds no sample (a rehearsal set "
                "leaves out every sample showing a held-out concept); pass another --replay-data or set it to 0"
            )
        fraction = self.recipe.replay_fraction
        counts = replay_counts(self.micro, self.dist.world_size, fraction)
        if fraction and not (sum(counts) > 0 and max(counts) < self.micro):
            raise ConfigError(
                f"config key 'train.{self.name}.replay_fraction' ({fraction}) gives {sum(counts)} of the "
                f"{self.micro * self.dist.world_size} samples of a step's micro-batches to replay, at most "
                f"{max(counts)} of a rank's {self.micro}; it must leave at least one sample to each side"
            )
        return self._rank_data(self.replay), counts[self.dist.rank]

    def _rank_data(self, uri: str) -> RankData:
        """This rank's share of a dataset, at the model's image size, through the local shard cache."""
        return load_rank_data(
            uri, self.dist.rank, self.dist.world_size, self.workdir / "shards", self.config.storage, self.image_size
        )

    def batch_indices(self, step: int, micro: int) -> torch.Tensor:
        """Indices of one micro-batch: the training set's, then the replay set's, offset by the training
        set's length (a recipe that replays indexes the two one after the other)."""
        seed, accum = self.config.train.seed + self.dist.rank, self.recipe.grad_accum_steps
        own = self.data.indices(step, micro, self.micro - self.replay_count, accum, seed)
        if self.replay_data is None or not self.replay_count:
            return own
        replayed = self.replay_data.indices(step, micro, self.replay_count, accum, seed + _REPLAY_SEED)
        return torch.cat([own, replayed + len(self.data)])

    def batch_generator(self, step: int) -> Any:
        for micro in range(self.recipe.grad_accum_steps):
            yield micro, self.batch_indices(step, micro)

    def forward_backward_step(self, batch: Any, step: int, micro: int) -> float:
        loss = self.compute_loss(batch, step, micro)
        self.engine.backward(loss)
        self.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
        return float(loss.detach())

    def train_step(self, step: int) -> float:
        losses = [self.forward_backward_step(idx, step, micro) for micro, idx in self.batch_generator(step)]
        self.after_step(step)
        return sum(losses) / len(losses)

    def _save(self, step: int) -> None:
        self.checkpoints.save(self.engine, step, {"step": step, "best": self.best, **self.client_state()})

    def _validate(self, done: int) -> bool:
        """Score the model, keep its weights if best so far; True when patience has run out."""
        score = self.validation_score(done)
        best = self.best
        best["history"].append((done, score))
        if best["score"] is None or score > best["score"]:
            best.update(score=score, step=done, bad=0, weights=self.best_weights())
        else:
            best["bad"] += 1
        log.info(
            "%s step %d: validation %.4f (best %.4f at step %d)", self.name, done, score, best["score"], best["step"]
        )
        if self.dist.is_main and self.run is not None:
            self.run.log_metrics(
                {f"{self.name}.validation": score, f"{self.name}.best_validation": best["score"]}, step=done
            )
        return best["bad"] >= self.recipe.patience

    def train(self) -> TrainResult:
        """Run (or resume) the recipe to `recipe.steps`, then export the model."""
        started = time.perf_counter()
        model_uri = join_uri(self.out, "model")
        existing = self._finished(model_uri)
        if existing is not None:
            return existing
        self.build()
        state = self.checkpoints.resume(self.engine)
        start = 0
        if state is not None:
            start = int(state["step"])
            self.best = state.get("best", self.best)
            self.load_client_state(state)
        if self.dist.is_main and self.run is not None:
            ds = deepspeed_config(self.config.train, self.recipe, self.name, self.dist.world_size)
            self.run.log_dict(ds, f"deepspeed/{self.name}.json")
            if start:
                self.run.set_tags({"photogenic.resumed_from_step": start})
        loss = float("nan")
        bar = _progress(self.recipe.steps, start, f"{self.name}", self.progress and self.dist.is_main)
        window_start, window_steps = time.perf_counter(), 0
        stop, stopped = self.recipe.steps, False
        if self.recipe.validate_every and self.best["bad"] >= self.recipe.patience:
            stop, stopped = start, True  # resumed after an early stop
        for step in range(start, stop):
            loss = self.train_step(step)
            done = step + 1
            window_steps += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.dist.is_main and self.run is not None and (done % 10 == 0 or done == self.recipe.steps):
                elapsed = time.perf_counter() - window_start
                self.run.log_metrics(
                    {
                        f"{self.name}.loss": loss,
                        f"{self.name}.lr": self.scheduler.get_last_lr()[0],
                        f"{self.name}.samples_per_s": window_steps * self.recipe.global_batch_size / max(elapsed, 1e-9),
                        **{f"{self.name}.{k}": v for k, v in self.step_metrics().items()},
                    },
                    step=done,
                )
                window_start, window_steps = time.perf_counter(), 0
            if self.recipe.checkpoint_every and done % self.recipe.checkpoint_every == 0 and done < self.recipe.steps:
                self._save(done)
            if self.recipe.sample_every and done % self.recipe.sample_every == 0 and self.dist.is_main:
                self.log_samples(done)
            validate = self.recipe.validate_every and (
                done % self.recipe.validate_every == 0 or done == self.recipe.steps
            )
            if validate and self._validate(done):
                log.info(
                    "%s: no better validation in %d rounds; stopping at step %d", self.name, self.recipe.patience, done
                )
                self._save(done)
                stopped = True
                break
        bar.close()
        if start < stop and not stopped:
            self._save(self.recipe.steps)
        if self.best["weights"] is not None:
            self.load_best_weights(self.best["weights"])
        result = self._export(model_uri, start, loss, time.perf_counter() - started)
        torch.distributed.barrier()
        return result

    def log_samples(self, step: int) -> None:
        """Recipes that generate images log a grid of fixed prompts and seeds."""

    def _export(self, model_uri: str, start: int, loss: float, seconds: float) -> TrainResult:
        manifest_uri, version = "", ""
        if self.dist.is_main:
            with tempfile.TemporaryDirectory(prefix="photogenic-export-") as tmp:
                self.export(Path(tmp))
                drop_local_paths(Path(tmp))
                meta = {
                    "recipe": self.name,
                    "steps": self.recipe.steps,
                    "data": self.data.fingerprint,
                    "data_uri": self.data_uri,
                    "base": self.base,
                    "final_loss": loss,
                }
                if self.replay_data is not None:
                    meta["replay_uri"] = self.replay
                if self.best["score"] is not None:
                    meta["early_stopping"] = {
                        "best_step": self.best["step"],
                        "best_score": self.best["score"],
                        "history": self.best["history"],
                    }
                manifest_uri, version = publish_model_dir(Path(tmp), model_uri, meta, self.config)
            if self.run is not None:
                self.run.set_tags(
                    {f"photogenic.model.{self.name}": version, f"photogenic.model.{self.name}_uri": model_uri}
                )
                self.log_samples(self.recipe.steps)
        trained = self.recipe.steps - start
        return TrainResult(
            recipe=self.name,
            steps=self.recipe.steps,
            model_uri=model_uri,
            manifest_uri=manifest_uri,
            fingerprint=version,
            resumed_from=start or None,
            final_loss=loss,
            seconds=seconds,
            samples_per_s=trained * self.recipe.global_batch_size / max(seconds, 1e-9),
        )

    def _finished(self, model_uri: str) -> TrainResult | None:
        return finished_model(self.name, self.recipe.steps, model_uri, self.config)


def finished_model(recipe: str, steps: int, model_uri: str, config: Config) -> TrainResult | None:
    """The result of a run whose model is already exported at `model_uri` by `recipe` to `steps`, else None."""
    try:
        manifest = read_manifest(join_uri(model_uri, "manifest.json"), config.storage)
    except ManifestError:
        return None
    if manifest.meta.get("steps") != steps or manifest.meta.get("recipe") != recipe:
        return None
    log.info("%s: %s already holds the finished model; reusing it", recipe, model_uri)
    return TrainResult(
        recipe,
        steps,
        model_uri,
        join_uri(model_uri, "manifest.json"),
        manifest.fingerprint,
        None,
        float(manifest.meta.get("final_loss", float("nan"))),
        0.0,
        reused=True,
    )


def freeze_matching(model: torch.nn.Module, pattern: str, key: str) -> list[str]:
    """Freeze the parameters whose names `pattern` matches (re.search); return their names. The optimizer
    then never sees them, and the EMA copies them unchanged. A pattern that matches none or all of them
    is a mistake, named by its config `key`."""
    if not pattern:
        return []
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"config key {key!r} ({pattern!r}) is not a regular expression: {exc}") from exc
    params = dict(model.named_parameters())
    frozen = [name for name in params if regex.search(name)]
    if not frozen or len(frozen) == len(params):
        what = "none" if not frozen else "all"
        raise ConfigError(
            f"config key {key!r} ({pattern!r}) matches {what} of the model's {len(params)} parameters "
            f"(e.g. {next(iter(params))!r}); it must leave some to train and freeze some"
        )
    for name in frozen:
        params[name].requires_grad_(False)
    log.info("frozen: %d of %d parameter tensors match %r", len(frozen), len(params), pattern)
    return frozen


def _progress(total: int, start: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, initial=start, desc=desc, unit="step", disable=None if enabled else True, dynamic_ncols=True
    )


# ---------------------------------------------------------------------------------------- autoencoder


class AutoencoderTrainer(Trainer):
    """Trains the KL autoencoder on pixels: reconstruction plus a small KL term."""

    kl_weight = 1e-6  # as in Stable Diffusion's autoencoder: latents stay expressive, the prior loose

    def build_model(self) -> torch.nn.Module:
        from photogenic.models import build_autoencoder

        return build_autoencoder(self.config.model)

    @staticmethod
    def model_settings(model: ModelConfig) -> dict[str, Any]:
        """Only the fields the autoencoder is built from: a wider U-Net must not retrain it."""
        from photogenic.models.build import autoencoder_settings

        return autoencoder_settings(model)

    def compute_loss(self, batch: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        images = self.data.images[batch].float().div(127.5).sub(1.0).to(self.dist.device)
        dtype = next(self.engine.module.parameters()).dtype  # bf16 under DeepSpeed's bf16 mode
        posterior = self.engine.module.encode(images.to(dtype)).latent_dist
        z = posterior.sample(generator=_seeded(self.config.train.seed, step, micro, self.dist.rank))
        recon = self.engine.module.decode(z).sample
        return F.mse_loss(recon.float(), images) + self.kl_weight * posterior.kl().float().mean()

    def export(self, local: Path) -> None:
        vae = _gathered_copy(self.engine)
        # Scale latents to unit variance for the diffusion model, as Stable Diffusion does.
        with torch.no_grad():
            sample = self.data.images[: min(512, len(self.data))].float().div(127.5).sub(1.0)
            std = float(vae.encode(sample).latent_dist.mode().std())
        vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        vae.save_pretrained(local / "vae")


def _gathered_copy(engine: Any) -> torch.nn.Module:
    """A full, unpartitioned CPU copy of the engine's model (gathers ZeRO-3 shards)."""
    import copy

    import deepspeed

    module = engine.module
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=engine.zero_optimization_stage() == 3):
        clone = copy.deepcopy(module).to("cpu").float()
    return clone


# ---------------------------------------------------------------------------------------- diffusion


class DiffusionTrainer(Trainer):
    """Latent diffusion: pretraining on the haystack, quality-tuning on the needles.

    The autoencoder and text encoder are frozen and live outside the DeepSpeed engine, so ZeRO-3
    never partitions them. Latents are computed once (the autoencoder's mean), and so are the states of
    each distinct caption; a replay dataset's come after the training set's.
    """

    supports_replay = True

    @staticmethod
    def model_settings(model: ModelConfig) -> dict[str, Any]:
        """The model section and the U-Net builder's revision: a builder that makes a different network
        from the same settings must not reuse or resume runs of the old one."""
        from photogenic.models.build import unet_settings

        return unet_settings(model)

    def build_model(self) -> torch.nn.Module:
        """From an autoencoder export: a new U-Net on the configured text encoder (pretraining). From a
        full model (ours, or a Stable Diffusion layout): its own U-Net, text encoder, tokenizer and noise
        schedule, at its own resolution (quality-tuning)."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        from photogenic.models import build_unet, latent_size, load_text_encoder, noise_scheduler
        from photogenic.models.pipeline import pipeline_class
        from photogenic.models.text import text_encoder_of

        if not self.base:
            raise ConfigError(f"train {self.name} needs --base: the exported autoencoder (or the pretrained model)")
        base = load_model_dir(self.base, self.workdir / "models")
        self.base_dir = base
        self.vae = AutoencoderKL.from_pretrained(base / "vae").to(self.dist.device).eval().requires_grad_(False)
        if not (base / "unet").exists():
            self.pipeline_class = "PhotogenicPipeline"
            self.text = load_text_encoder(
                self.config.model.text_encoder, self.config.model.max_caption_tokens, self.dist.device
            )
            self.noise = noise_scheduler(self.config.model)
            size = latent_size(self.config.model, self.config.world.image_size)
            return build_unet(self.config.model, size, self.text.dim)
        self.pipeline_class = pipeline_class(base)
        ours = self.pipeline_class == "PhotogenicPipeline"
        self.text = text_encoder_of(base, self.dist.device, mask_padding=ours)
        self.noise = DDPMScheduler.from_config(DDPMScheduler.load_config(base / "scheduler"))
        unet = UNet2DConditionModel.from_pretrained(base / "unet")
        self.image_size = unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)
        return unet

    @torch.no_grad()
    def prepare(self, data: RankData) -> None:
        if self.recipe.guidance_preservation and not (self.base_dir / "unet").exists():  # before encoding
            raise ConfigError(
                f"config key 'train.{self.name}.guidance_preservation' ({self.recipe.guidance_preservation}) "
                f"keeps the base model's guidance, and the base {self.base} has no denoiser; set it to 0"
            )
        self.ema = None
        if self.recipe.ema_decay > 0:  # on the model's device, in fp32, before DeepSpeed casts the model
            from diffusers import UNet2DConditionModel
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(
                self.model.parameters(),
                decay=self.recipe.ema_decay,
                model_cls=UNet2DConditionModel,
                model_config=self.model.config,
            )
        sets = [data] if self.replay_data is None else [data, self.replay_data]
        self.captions = [c for d in sets for c in d.captions]
        self._cache_captions(self.captions)
        factor = self.vae.config.scaling_factor
        chunks = []
        # replay pixels only when batches rehearse them; guidance preservation reads the captions alone
        for images_u8 in (d.images for d in (sets if self.replay_count else [data])):
            for start in range(0, len(images_u8), 256):
                images = images_u8[start : start + 256].float().div(127.5).sub(1.0).to(self.dist.device)
                chunks.append((self.vae.encode(images).latent_dist.mode() * factor).cpu())
        self.latents = torch.cat(chunks)
        self.teacher = None
        if self.recipe.guidance_preservation:  # the base U-Net, frozen, outside the engine
            import copy

            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.preserve_count = max(1, self.micro // 4) if self.teacher is not None else 0

    def preservation_indices(self, step: int, micro: int) -> torch.Tensor:
        """Replay-set captions whose guidance direction one micro-batch preserves (indices into `captions`)."""
        seed, accum = self.config.train.seed + self.dist.rank + _PRESERVE_SEED, self.recipe.grad_accum_steps
        assert self.replay_data is not None
        return self.replay_data.indices(step, micro, self.preserve_count, accum, seed) + len(self.data)

    @torch.no_grad()
    def _cache_captions(self, captions: list[str]) -> None:
        """Encode each distinct caption once (the encoder is frozen): the world's 20,000 captions have
        about 3,000 distinct ones. Beyond `_CAPTION_CACHE_MAX` distinct captions, encode per step."""
        unique = sorted(set(captions) | {""})
        self.caption_states = None
        if len(unique) > _CAPTION_CACHE_MAX:
            return
        index = {c: i for i, c in enumerate(unique)}
        self.caption_ids = torch.tensor([index[c] for c in captions])
        self.empty_caption = index[""]
        states = [self.text.encode(unique[i : i + 256], self.dist.device).cpu() for i in range(0, len(unique), 256)]
        self.caption_states = torch.cat(states)

    def _context(self, batch: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        if self.caption_states is not None:
            ids = torch.where(drop, self.empty_caption, self.caption_ids[batch])
            return self.caption_states[ids].to(self.dist.device)
        captions = ["" if d else self.captions[i] for i, d in zip(batch.tolist(), drop.tolist(), strict=True)]
        return self.text.encode(captions, self.dist.device)

    def compute_loss(self, batch: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        gen = _seeded(self.config.train.seed, step, micro, self.dist.rank)
        latents = self.latents[batch].to(self.dist.device)
        drop = torch.rand(len(batch), generator=gen) < self.recipe.caption_dropout
        context = self._context(batch, drop)
        noise = torch.randn(latents.shape, generator=gen)
        if self.recipe.noise_offset:
            # Noise offset (paper: 0.02 in pretraining, 0.1 in quality-tuning) lets the model shift
            # overall brightness, which plain Gaussian noise hides from it.
            noise = noise + self.recipe.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=gen)
        noise = noise.to(self.dist.device)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (len(batch),), generator=gen).to(self.dist.device)
        noisy = self.noise.add_noise(latents, noise, t)
        if self.noise.config.prediction_type == "v_prediction":
            target = self.noise.get_velocity(latents, noise, t)
        else:
            target = noise
        dtype = next(self.engine.module.parameters()).dtype
        n = self.preserve_count
        if n:  # one forward: the batch, then n of its noisy latents under replayed captions and under none
            captions = self.preservation_indices(step, micro)
            kept = self._context(captions, torch.zeros(n, dtype=torch.bool))
            empty = self._context(captions, torch.ones(n, dtype=torch.bool))
            noisy_all = torch.cat([noisy, noisy[:n], noisy[:n]])
            t_all = torch.cat([t, t[:n], t[:n]])
            context = torch.cat([context, kept, empty])
        else:
            noisy_all, t_all = noisy, t
        out = self.engine(noisy_all.to(dtype), t_all, encoder_hidden_states=context.to(dtype)).sample
        pred = out[: len(batch)]
        loss = self._denoising_loss(pred, target, t)
        if not n:
            return loss
        student = out[len(batch) :].float()
        with torch.no_grad():
            teacher = self.teacher(
                noisy_all[len(batch) :], t_all[len(batch) :], encoder_hidden_states=context[len(batch) :]
            ).sample
        preservation = F.mse_loss(student[:n] - student[n:], (teacher[:n] - teacher[n:]).float())
        self.last_preservation = float(preservation.detach())
        return loss + self.recipe.guidance_preservation * preservation

    def step_metrics(self) -> dict[str, float]:
        return {"guidance_preservation_loss": self.last_preservation} if self.preserve_count else {}

    def _denoising_loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """MSE to the target, min-SNR weighted with `snr_gamma`."""
        if not self.recipe.snr_gamma:
            return F.mse_loss(pred.float(), target.float())
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise, t)
        weight = snr.clamp(max=self.recipe.snr_gamma)
        weight = weight / (snr + 1) if self.noise.config.prediction_type == "v_prediction" else weight / snr
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * weight).mean()

    def after_step(self, step: int) -> None:
        if self.ema is None:
            return
        import deepspeed

        params = list(self.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=self.engine.zero_optimization_stage() == 3):
            self.ema.step(params)

    def client_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_client_state(self, state: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])

    def _export_unet(self) -> torch.nn.Module:
        unet = _gathered_copy(self.engine)
        if getattr(self, "_best_state", None) is not None:
            unet.load_state_dict(self._best_state)
        elif self.ema is not None:
            self.ema.copy_to(unet.parameters())
        return unet

    def best_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self._export_unet().state_dict().items()}

    def load_best_weights(self, state: dict[str, torch.Tensor]) -> None:
        self._best_state = state

    @torch.no_grad()
    def validation_score(self, step: int) -> float:
        """Mean appeal, under the *curation* judges, of images for the benchmark's dev prompts with the dev
        split's seeds (the evaluation judges and the test split stay untouched by model selection)."""
        if not self.judges:
            raise ConfigError(f"train.{self.name}.validate_every needs --judges: the curation judge set")
        from photogenic.judges import load_judge

        if not hasattr(self, "_judge"):
            self._judge = load_judge(self.judges, self.config)
        images = self._draw(validation_jobs(self.config))
        return float(self._judge.score(images)["appeal"].mean())

    @torch.no_grad()
    def _draw(self, jobs: list[tuple[str, int]]) -> list[Any]:
        """Images, one per (prompt, seed), of the model as it would be exported now, with the evaluation's
        sampler settings; the frozen parts go back to the training device afterwards."""
        from photogenic.models.pipeline import draw

        pipe = self.pipeline()
        pipe.set_progress_bar_config(disable=True)
        images = draw(pipe, jobs, self.config.evaluate.sampling_steps, self.config.evaluate.guidance_scale)
        self.vae.to(self.dist.device)
        self.text.model.to(self.dist.device)
        return images

    def pipeline(self) -> Any:
        """The model as it would be exported now (EMA weights), as a diffusers pipeline."""
        from photogenic.models.build import sample_scheduler
        from photogenic.models.pipeline import PhotogenicPipeline, load_pipeline

        unet = self._export_unet().eval()
        if self.pipeline_class != "PhotogenicPipeline":  # a given model keeps its own pipeline and parts
            if not hasattr(self, "_base_pipeline"):
                self._base_pipeline = load_pipeline(self.base_dir)
            self._base_pipeline.register_modules(unet=unet)
            return self._base_pipeline
        self.text.tokenizer.model_max_length = self.text.max_tokens
        if (self.base_dir / "scheduler").exists():
            from diffusers import DDIMScheduler

            scheduler = DDIMScheduler.from_pretrained(self.base_dir, subfolder="scheduler")
        else:
            scheduler = sample_scheduler(self.config.model)
        return PhotogenicPipeline(
            vae=self.vae.to("cpu"),
            unet=unet,
            text_encoder=self.text.model.to("cpu"),
            tokenizer=self.text.tokenizer,
            scheduler=scheduler,
        )

    def export(self, local: Path) -> None:
        self.pipeline().save_pretrained(local)

    def log_samples(self, step: int) -> None:
        if self.run is None:
            return
        from photogenic.models.pipeline import image_grid

        images = self._draw([(p, i) for i, p in enumerate(SAMPLE_PROMPTS)])
        self.run.log_image(image_grid(images, 4, scale=4), f"samples/{self.name}_step{step:06d}.png")


_CAPTION_CACHE_MAX = 100_000
_REPLAY_SEED = 7_919  # offsets the replay set's data-order seed from the training set's
_PRESERVE_SEED = 104_729  # and the order of the captions whose guidance is preserved
_REPLAY_SETTINGS = ("replay_fraction", "guidance_preservation")  # the recipe settings that read --replay-data


def validation_jobs(config: Config, n: int = 16) -> list[tuple[str, int]]:
    """Early stopping's (prompt, seed) pairs: `n` prompts of the benchmark's dev split that name no concept
    held out of the QT set (a held-out concept stays out of everything quality-tuning sees), chosen by the
    training seed, each with a dev sampling seed."""
    import numpy as np

    from photogenic.evaluate import benchmark_prompts, sampling_seeds

    prompts = [p for p in benchmark_prompts(config, "dev") if not p.held_out]
    pick = np.random.default_rng([config.train.seed, 4_242]).permutation(len(prompts))[:n]
    seeds = sampling_seeds(config, "dev")
    return [(prompts[int(i)].text, seeds[k % len(seeds)]) for k, i in enumerate(pick)]


RECIPES: dict[str, type[Trainer]] = {
    "autoencoder": AutoencoderTrainer,
    "pretrain": DiffusionTrainer,
    "quality_tune": DiffusionTrainer,
}


_RUN_NEUTRAL = {"collective_timeout_s"}  # train settings that cannot change a run's result
# Recipe settings added after runs were made, at their "off" value: left out of a run's identity, so that
# the runs made before they existed (the same computation) stay reusable.
_OFF_BY_DEFAULT: dict[str, Any] = {**dict.fromkeys(_REPLAY_SETTINGS, 0.0), "frozen_params": ""}


def _run_train_settings(recipe: str, config: Config) -> dict[str, Any]:
    """The train settings a run's result depends on: the shared ones (seed, ZeRO, precision) and its own
    recipe's section, not the other recipes' (tuning quality-tuning must not retrain the autoencoder)."""
    train = to_dict(config.train)
    shared = {k: v for k, v in train.items() if k not in RECIPES and k not in _RUN_NEUTRAL}
    own = {k: v for k, v in train[recipe].items() if _OFF_BY_DEFAULT.get(k, object()) != v}
    return {**shared, recipe: own}


def _validation_settings(recipe: str, config: Config) -> dict[str, Any]:
    """A recipe that stops early picks its weights by images of the dev prompts (`validation_jobs`), drawn
    with the evaluation's sampler."""
    if not getattr(config.train, recipe).validate_every:
        return {}
    return {
        "sampling": {"steps": config.evaluate.sampling_steps, "guidance": config.evaluate.guidance_scale},
        "validation": validation_jobs(config),
    }


def _replay_uses(recipe: RecipeConfig) -> dict[str, float]:
    """The recipe's settings that are on and read the replay dataset, with their values."""
    return {k: getattr(recipe, k) for k in _REPLAY_SETTINGS if getattr(recipe, k)}


def replay_counts(micro: int, world_size: int, fraction: float) -> list[int]:
    """Replayed samples in each rank's micro-batch: `fraction` of all ranks' micro-batches together,
    rounded, spread over the ranks as evenly as it goes (so that 8 ranks with micro-batches of 8 still
    rehearse 5% of the batch of 64: 3 samples, on 3 of the ranks)."""
    total = round(micro * world_size * fraction)
    return [total * (r + 1) // world_size - total * r // world_size for r in range(world_size)]


def default_replay(recipe: str, config: Config, data_uri: str, replay: str | None) -> str | None:
    """The replay dataset a run reads: `replay` when given; else, for a recipe setting that reads one,
    the rehearsal set that curation published beside the training set (its manifest's `rehearsal`)."""
    if replay or recipe not in RECIPES or not RECIPES[recipe].supports_replay:
        return replay
    if not _replay_uses(getattr(config.train, recipe)):
        return replay
    rehearsal = read_manifest(data_uri, config.storage).meta.get("rehearsal")
    if rehearsal:
        log.info("%s: rehearsing %s, the rehearsal set curated beside %s", recipe, rehearsal, data_uri)
    return rehearsal or None


def run_uri(
    recipe: str,
    config: Config,
    data_uri: str,
    base: str | None,
    judges: str | None,
    out: str | None = None,
    replay: str | None = None,
) -> str:
    """The run's URI (checkpoints/ and model/ below it): `out`, or by default
    `<store>/runs/<recipe>-<fingerprint of inputs and config>`, made absolute for other processes and pods."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    if out is None:
        key = fingerprint(
            {
                "recipe": recipe,
                "data": data_uri,
                "base": base,
                "model": RECIPES[recipe].model_settings(config.model),
                "train": _run_train_settings(recipe, config),
                **({"judges": judges} if judges else {}),
                **({"replay": replay} if replay and _replay_uses(getattr(config.train, recipe)) else {}),
                **_validation_settings(recipe, config),
            }
        )
        out = join_uri(config.store_root(), "runs", f"{recipe.replace('_', '-')}-{key[:16]}")
    return open_store(out, config.storage).root


def train(
    recipe: str,
    config: Config,
    data_uri: str,
    out: str | None = None,
    base: str | None = None,
    run: Any = None,
    progress: bool = True,
    judges: str | None = None,
    replay: str | None = None,
) -> TrainResult:
    """Run one training recipe (the function behind `photogenic train RECIPE`).

    Args:
        recipe: `autoencoder`, `pretrain` or `quality_tune`.
        config: the resolved config.
        data_uri: the validated dataset's manifest.
        out: the run's URI; default `<store>/runs/<recipe>-<fingerprint of inputs and config>`.
        base: the model to start from (`pretrain`: the autoencoder; `quality_tune`: the pretrained model).
        run: an optional tracking Run.
        judges: the curation judge set, for recipes that stop early on judged appeal (`validate_every`).
        replay: a dataset for quality-tuning's `replay_fraction` and `guidance_preservation`; by default
            the rehearsal set curated beside `data_uri`, when it has one.

    Returns:
        The exported model's URI and version, the steps, and whether it resumed.
    """
    replay = default_replay(recipe, config, data_uri, replay)
    out = run_uri(recipe, config, data_uri, base, judges, out, replay)
    trainer = RECIPES[recipe](
        config=config,
        data_uri=data_uri,
        out=out,
        base=base,
        run=run,
        progress=progress,
        name=recipe,
        judges=judges,
        replay=replay,
    )
    try:
        result = trainer.train()
    except RuntimeError as exc:
        lost = rank_lost(exc, config.train.collective_timeout_s)
        if lost is None:
            raise
        raise lost from exc
    log.info(
        "%s: %d steps -> %s (loss %.4f, %.1fs)",
        recipe,
        result.steps,
        result.model_uri,
        result.final_loss,
        result.seconds,
    )
    return result
