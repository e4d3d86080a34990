"""Rehearsal: a share of every quality-tuning batch drawn from the rehearsal set curation publishes beside
the QT set, so that concepts the few needles lack stay in the model (not in the paper; off at 0)."""

from __future__ import annotations

import logging
from typing import Any

from photogenic.config import ConfigError, RecipeConfig
from photogenic.manifest import read_manifest

__all__ = ["REHEARSAL_SEED", "REHEARSAL_SETTINGS", "rehearsal_counts", "rehearsal_share", "rehearsal_uses"]

log = logging.getLogger(__name__)

REHEARSAL_SETTINGS = ("rehearsal_fraction", "guidance_preservation")  # the recipe settings that read --rehearsal-data
REHEARSAL_SEED = 7_919  # offsets the rehearsal set's data-order seed from the training set's


def rehearsal_share(trainer: Any, rank: int, world_size: int) -> int | None:
    """Samples of rehearsal data in each of this rank's micro-batches; None when no setting reads the
    rehearsal dataset. Every way the settings and the dataset can disagree is a ConfigError naming the key."""
    uses = rehearsal_uses(trainer.settings)
    if not uses:
        if trainer.rehearsal:
            log.info(
                "%s: rehearsal data %s not used (no train.%s.%s)",
                trainer.recipe,
                trainer.rehearsal,
                trainer.recipe,
                REHEARSAL_SETTINGS,
            )
        return None
    key, value = next(iter(uses.items()))
    key = f"train.{trainer.recipe}.{key}"
    if not trainer.supports_rehearsal:
        raise ConfigError(f"config key {key!r} ({value}): recipe {trainer.recipe} does not rehearse data; set it to 0")
    if not trainer.rehearsal:
        raise ConfigError(
            f"config key {key!r} ({value}) needs --rehearsal-data, the dataset to rehearse: {trainer.data_uri} has no "
            f"rehearsal set beside it (`photogenic curate` publishes one); or set it to 0"
        )
    size = read_manifest(trainer.rehearsal, trainer.config.storage).counts.get("samples")
    if size == 0:
        raise ConfigError(
            f"config key {key!r} ({value}) rehearses {trainer.rehearsal}, which holds no sample (a rehearsal set "
            "leaves out every sample showing a held-out concept); pass another --rehearsal-data or set it to 0"
        )
    fraction = trainer.settings.rehearsal_fraction
    counts = rehearsal_counts(trainer.micro, world_size, fraction)
    if fraction and not (sum(counts) > 0 and max(counts) < trainer.micro):
        raise ConfigError(
            f"config key 'train.{trainer.recipe}.rehearsal_fraction' ({fraction}) gives {sum(counts)} of the "
            f"{trainer.micro * world_size} samples of a step's micro-batches to rehearsal, at most "
            f"{max(counts)} of a rank's {trainer.micro}; it must leave at least one sample to each side"
        )
    return counts[rank]


def rehearsal_uses(recipe: RecipeConfig) -> dict[str, float]:
    """The recipe's settings that are on and read the rehearsal dataset, with their values."""
    return {k: getattr(recipe, k) for k in REHEARSAL_SETTINGS if getattr(recipe, k)}


def rehearsal_counts(micro: int, world_size: int, fraction: float) -> list[int]:
    """Rehearsed samples in each rank's micro-batch: `fraction` of all ranks' micro-batches together,
    rounded, spread over the ranks as evenly as it goes (so that 8 ranks with micro-batches of 8 still
    rehearse 5% of the batch of 64: 3 samples, on 3 of the ranks)."""
    total = round(micro * world_size * fraction)
    return [total * (r + 1) // world_size - total * r // world_size for r in range(world_size)]
