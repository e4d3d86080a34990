"""One trainer, recipes of it: `autoencoder`, `pretrain` and `quality_tune` differ only in a few methods.

Every source of randomness is a function of (seed, step, rank), and so is the data order: a run
resumed from a checkpoint takes exactly the path an uninterrupted run would have taken.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from photogenic.config import Config, ConfigError, ModelConfig, RecipeConfig, fingerprint, to_dict
from photogenic.manifest import ManifestError, read_manifest
from photogenic.models.io import drop_local_paths, publish_model_dir
from photogenic.progress import Progress
from photogenic.storage import join_uri, open_store
from photogenic.train.checkpoint import Checkpoints
from photogenic.train.data import RankData, load_rank_data
from photogenic.train.deepspeed_config import (
    clips_in_trainer,
    compile_engine,
    cpu_autocast,
    deepspeed_config,
    micro_batch_size,
    wrap,
    zero_stage,
)
from photogenic.train.distributed import Dist, setup_distributed
from photogenic.train.early_stopping import EarlyStopping
from photogenic.train.rehearsal import REHEARSAL_SEED, rehearsal_share
from photogenic.train.threads import ThreadTuner

__all__ = [
    "Trainer",
    "TrainResult",
    "finished_model",
    "freeze_matching",
    "phase",
    "seeded",
]

log = logging.getLogger(__name__)


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


def phase(name: str) -> Any:
    """A named span of the training step: free outside a profiler, a labelled row in a torch profiler's
    table and trace inside one (`bench/trainer_step.py`, `bench/gpu_check.py`)."""
    return torch.profiler.record_function(f"step/{name}")


def seeded(seed: int, step: int, micro: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one micro-batch's random draws, on `device` (a CUDA generator draws other numbers
    than a CPU one from the same seed, but as deterministically)."""
    return torch.Generator(device).manual_seed(((seed * 1_000_003 + step) * 1_009 + micro) * 1_013 + rank)


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
        rehearsal: manifest of a dataset the recipe's `rehearsal_fraction` (a share of every batch) and
            `guidance_preservation` (its captions) read; unused when both are 0.
    """

    config: Config
    data_uri: str
    out: str
    base: str | None = None
    run: Any = None
    progress: bool = True
    recipe: str = ""
    judges: str | None = None
    rehearsal: str | None = None
    dist: Dist = field(init=False)
    settings: RecipeConfig = field(init=False)

    def __post_init__(self) -> None:
        self.settings = getattr(self.config.train, self.recipe)
        self.workdir = Path(self.config.workspace, "cache").resolve()
        self.early_stopping = EarlyStopping(self.settings.patience)

    supports_rehearsal = False  # recipes whose batches may mix in a rehearsal dataset

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
        raise ConfigError(f"recipe {self.recipe} has no validation criterion; set train.{self.recipe}.validate_every=0")

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
            "recipe": self.recipe,
            "model": fingerprint(self.model_settings(self.config.model)),
            "image_size": self.image_size,
            "zero_stage": zero_stage(self.config.train, self.dist.world_size),
            "world_size": self.dist.world_size,
        }

    # ------------------------------------------------------------------------------ the loop

    def build(self) -> None:
        self.dist = setup_distributed(self.config.train.collective_timeout_s)
        train = self.config.train
        self.threads = ThreadTuner(train.cpu_threads, adapt=train.adapt_threads, enabled=self.dist.device.type == "cpu")
        torch.manual_seed(self.config.train.seed)  # the same initial weights on every rank
        self.micro = micro_batch_size(self.settings, self.dist.world_size, self.recipe)
        self.image_size = self.config.world.image_size
        self.model = self.build_model().to(self.dist.device)  # may set the image size of a given model
        freeze_matching(self.model, self.settings.frozen_params, f"train.{self.recipe}.frozen_params")
        self.data = self._rank_data(self.data_uri)
        self.rehearsal_data, self.rehearsal_count = self._load_rehearsal()
        self.prepare(self.data)
        self.engine, self.optimizer, self.scheduler = wrap(
            self.model, self.config.train, self.settings, self.recipe, self.dist.world_size
        )
        if self.settings.compile:
            compile_engine(self.engine, self.recipe, self.dist.device)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.clip = self.settings.grad_clip if clips_in_trainer(self.config.train, self.dist.world_size) else 0.0
        self.autocast = cpu_autocast(self.config.train, self.dist.device)
        self.checkpoints = Checkpoints(
            store=open_store(join_uri(self.out, "checkpoints"), self.config.storage),
            local_dir=self.workdir / "checkpoints" / fingerprint(self.out)[:12],
            dist=self.dist,
            keep=self.settings.keep_checkpoints,
            signature=self.signature(),
        )

    def _load_rehearsal(self) -> tuple[RankData | None, int]:
        """This rank's share of the rehearsal dataset (when a setting uses it) and the samples each
        micro-batch takes from it."""
        count = rehearsal_share(self, self.dist.rank, self.dist.world_size)
        return (None, 0) if count is None else (self._rank_data(self.rehearsal or ""), count)

    def _rank_data(self, uri: str) -> RankData:
        """This rank's share of a dataset, at the model's image size, through the local shard cache."""
        return load_rank_data(
            uri, self.dist.rank, self.dist.world_size, self.workdir / "shards", self.config.storage, self.image_size
        )

    def batch_indices(self, step: int, micro: int) -> torch.Tensor:
        """Indices of one micro-batch: the training set's, then the rehearsal set's, offset by the training
        set's length (a recipe that rehearses indexes the two one after the other)."""
        seed, accum = self.config.train.seed + self.dist.rank, self.settings.grad_accum_steps
        own = self.data.indices(step, micro, self.micro - self.rehearsal_count, accum, seed)
        if self.rehearsal_data is None or not self.rehearsal_count:
            return own
        rehearsed = self.rehearsal_data.indices(step, micro, self.rehearsal_count, accum, seed + REHEARSAL_SEED)
        return torch.cat([own, rehearsed + len(self.data)])

    def batch_generator(self, step: int) -> Any:
        for micro in range(self.settings.grad_accum_steps):
            yield micro, self.batch_indices(step, micro)

    def forward_backward_step(self, batch: Any, step: int, micro: int) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.compute_loss(batch, step, micro)
        with phase("backward"):
            self.engine.backward(loss)
        with phase("optimizer"):
            if self.clip and self.engine.is_gradient_accumulation_boundary():
                torch.nn.utils.clip_grad_norm_(self.trainable, self.clip)
            self.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
        return float(loss.detach())

    def train_step(self, step: int) -> float:
        losses = [self.forward_backward_step(idx, step, micro) for micro, idx in self.batch_generator(step)]
        with phase("ema"):
            self.after_step(step)
        return sum(losses) / len(losses)

    def _save(self, step: int) -> None:
        state = {"step": step, "best": self.early_stopping.state_dict(), **self.client_state()}
        self.checkpoints.save(self.engine, step, state)

    def _validate(self, done: int) -> bool:
        """Score the model, keep its weights if best so far; True when patience has run out."""
        score, best = self.validation_score(done), self.early_stopping
        stop = best.update(done, score, self.best_weights)
        log.info("%s step %d: validation %.4f (best %.4f at step %d)", self.recipe, done, score, best.score, best.step)
        if self.dist.is_main and self.run is not None:
            self.run.log_metrics({"train/validation": score, "train/best_validation": best.score}, step=done)
        return stop

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
            if "best" in state:
                self.early_stopping.load_state_dict(state["best"])
            self.load_client_state(state)
        if self.dist.is_main and self.run is not None:
            ds = deepspeed_config(self.config.train, self.settings, self.recipe, self.dist.world_size)
            self.run.log_dict(ds, f"deepspeed/{self.recipe}.json")
            if start:
                self.run.set_tags({"photogenic.resumed_from_step": start})
        self.threads.start_at(start)
        loss = float("nan")
        progress = Progress(
            self.recipe,
            self.settings.steps,
            "step",
            start,
            self.settings.global_batch_size,
            enabled=self.progress and self.dist.is_main,
        )
        window_start, window_steps = time.perf_counter(), 0
        stop, stopped = self.settings.steps, False
        if self.settings.validate_every and self.early_stopping.exhausted:
            stop, stopped = start, True  # resumed after an early stop
        for step in range(start, stop):
            step_start = time.perf_counter()
            loss = self.train_step(step)
            self.threads.step_done(step, time.perf_counter() - step_start)
            done = step + 1
            window_steps += 1
            progress.update(1, loss=loss)
            if self.dist.is_main and self.run is not None and (done % 10 == 0 or done == self.settings.steps):
                elapsed = time.perf_counter() - window_start
                self.run.log_metrics(
                    {
                        "train/loss": loss,
                        "train/lr": self.scheduler.get_last_lr()[0],
                        "train/samples_per_s": window_steps * self.settings.global_batch_size / max(elapsed, 1e-9),
                        **{f"train/{k}": v for k, v in self.step_metrics().items()},
                    },
                    step=done,
                )
                window_start, window_steps = time.perf_counter(), 0
            if (
                self.settings.checkpoint_every
                and done % self.settings.checkpoint_every == 0
                and done < self.settings.steps
            ):
                self._save(done)
            if self.settings.sample_every and done % self.settings.sample_every == 0 and self.dist.is_main:
                self.log_samples(done)
            validate = self.settings.validate_every and (
                done % self.settings.validate_every == 0 or done == self.settings.steps
            )
            if validate and self._validate(done):
                log.info(
                    "%s: no better validation in %d rounds; stopping at step %d",
                    self.recipe,
                    self.settings.patience,
                    done,
                )
                self._save(done)
                stopped = True
                break
        progress.close()
        if start < stop and not stopped:
            self._save(self.settings.steps)
        if self.early_stopping.weights is not None:
            self.load_best_weights(self.early_stopping.weights)
        result = self._export(model_uri, start, loss, time.perf_counter() - started)
        torch.distributed.barrier()
        return result

    def log_samples(self, step: int) -> None:
        """Recipes that generate images log a grid of fixed prompts and seeds."""

    def log_model(self, model_uri: str, version: str) -> None:
        """Recipes whose export is a text-to-image pipeline log it as an MLflow model of their run."""

    def _export(self, model_uri: str, start: int, loss: float, seconds: float) -> TrainResult:
        manifest_uri, version = "", ""
        if self.dist.is_main:
            with tempfile.TemporaryDirectory(prefix="photogenic-export-") as tmp:
                self.export(Path(tmp))
                drop_local_paths(Path(tmp))
                meta = {
                    "recipe": self.recipe,
                    "steps": self.settings.steps,
                    "data": self.data.fingerprint,
                    "data_uri": self.data_uri,
                    "base": self.base,
                    "final_loss": loss,
                }
                if self.rehearsal_data is not None:
                    meta["rehearsal_uri"] = self.rehearsal
                if self.early_stopping.score is not None:
                    meta["early_stopping"] = self.early_stopping.summary()
                manifest_uri, version = publish_model_dir(Path(tmp), model_uri, meta, self.config)
            if self.run is not None:
                self.run.set_tags(
                    {f"photogenic.model.{self.recipe}": version, f"photogenic.model.{self.recipe}_uri": model_uri}
                )
                self.log_samples(self.settings.steps)
                self.log_model(model_uri, version)
        trained = self.settings.steps - start
        return TrainResult(
            recipe=self.recipe,
            steps=self.settings.steps,
            model_uri=model_uri,
            manifest_uri=manifest_uri,
            fingerprint=version,
            resumed_from=start or None,
            final_loss=loss,
            seconds=seconds,
            samples_per_s=trained * self.settings.global_batch_size / max(seconds, 1e-9),
        )

    def _finished(self, model_uri: str) -> TrainResult | None:
        return finished_model(self.recipe, self.settings.steps, model_uri, self.config)


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
