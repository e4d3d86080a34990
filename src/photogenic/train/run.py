"""Running a recipe: its run's identity (where its checkpoints and model go) and the entry point behind
`photogenic train RECIPE`, the pipeline's training tasks and the training jobs' pods."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

from photogenic.config import Config, ConfigError, fingerprint, to_dict
from photogenic.manifest import ManifestError, manifest_file, read_manifest
from photogenic.storage import join_uri, open_store
from photogenic.train.autoencoder import AutoencoderTrainer
from photogenic.train.diffusion import DiffusionTrainer, validation_jobs
from photogenic.train.distributed import rank_lost
from photogenic.train.rehearsal import rehearsal_uses
from photogenic.train.trainer import Trainer, TrainResult

__all__ = ["RECIPES", "train", "run_uri", "default_rehearsal"]

log = logging.getLogger(__name__)

RECIPES: dict[str, type[Trainer]] = {
    "autoencoder": AutoencoderTrainer,
    "pretrain": DiffusionTrainer,
    "quality_tune": DiffusionTrainer,
}


# Train settings that do not change what a run computes (threads change the last bits of sums at most)
_RUN_NEUTRAL = {"collective_timeout_s", "cpu_threads", "adapt_threads"}


def _run_train_settings(recipe: str, config: Config) -> dict[str, Any]:
    """The train settings a run's result depends on: the shared ones (seed, ZeRO, precision) and its own
    recipe's section, not the other recipes' (tuning quality-tuning must not retrain the autoencoder)."""
    train = to_dict(config.train)
    shared = {k: v for k, v in train.items() if k not in RECIPES and k not in _RUN_NEUTRAL}
    return {**shared, recipe: train[recipe]}


def _validation_settings(recipe: str, config: Config) -> dict[str, Any]:
    """A recipe that stops early picks its weights by images of the dev prompts (`validation_jobs`), drawn
    with the evaluation's sampler."""
    if not getattr(config.train, recipe).validate_every:
        return {}
    return {
        "sampling": {"steps": config.evaluate.sampling_steps, "guidance": config.evaluate.guidance_scale},
        "validation": validation_jobs(config),
    }


def default_rehearsal(recipe: str, config: Config, data_uri: str, rehearsal: str | None) -> str | None:
    """The rehearsal dataset a run reads: `rehearsal` when given; else, for a recipe setting that reads one,
    the rehearsal set that curation published beside the training set (its manifest's `rehearsal`)."""
    if rehearsal or recipe not in RECIPES or not RECIPES[recipe].supports_rehearsal:
        return rehearsal
    if not rehearsal_uses(getattr(config.train, recipe)):
        return rehearsal
    curated = read_manifest(data_uri, config.storage).meta.get("rehearsal")
    if curated:
        log.info("%s: rehearsing %s, the rehearsal set curated beside %s", recipe, curated, data_uri)
    return curated or None


def _version(uri: str, config: Config, what: str) -> str:
    """The content version of a dataset, model or judge set (its manifest's fingerprint)."""
    try:
        return read_manifest(manifest_file(uri), config.storage).fingerprint
    except ManifestError as exc:
        raise ManifestError(f"no {what} at {uri}: {exc}") from exc


def run_uri(
    recipe: str,
    config: Config,
    data_uri: str,
    base: str | None,
    judges: str | None,
    out: str | None = None,
    rehearsal: str | None = None,
) -> str:
    """The run's URI (checkpoints/ and model/ below it): `out`, or by default
    `<store>/runs/<recipe>-<fingerprint>`, made absolute for other processes and pods.

    The fingerprint is of the inputs' content versions (dataset, base model, judges, rehearsal set),
    not their URIs, and of the settings the result depends on: the same data copied elsewhere is the
    same run, and new data at an old URI is a new one."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)}")
    if out is None:
        key = fingerprint(
            {
                "recipe": recipe,
                "data": _version(data_uri, config, "dataset"),
                "base": _version(base, config, "Photogenic model") if base else None,
                "model": RECIPES[recipe].model_settings(config.model),
                "train": _run_train_settings(recipe, config),
                **({"judges": _version(judges, config, "judge set")} if judges else {}),
                **(
                    {"rehearsal": _version(rehearsal, config, "rehearsal set")}
                    if rehearsal and rehearsal_uses(getattr(config.train, recipe))
                    else {}
                ),
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
    rehearsal: str | None = None,
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
        rehearsal: a dataset for quality-tuning's `rehearsal_fraction` and `guidance_preservation`; by default
            the rehearsal set curated beside `data_uri`, when it has one.

    Returns:
        The exported model's URI and version, the steps, and whether it resumed.
    """
    rehearsal = default_rehearsal(recipe, config, data_uri, rehearsal)
    out = run_uri(recipe, config, data_uri, base, judges, out, rehearsal)
    trainer = RECIPES[recipe](
        config=config,
        data_uri=data_uri,
        out=out,
        base=base,
        run=run,
        progress=progress,
        recipe=recipe,
        judges=judges,
        rehearsal=rehearsal,
    )
    try:
        with run.system_metrics() if run is not None else nullcontext():
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
