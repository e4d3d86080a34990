"""Presets: named recipe functions, as in torchtitan. `tiny` runs every stage in seconds on a CPU."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from photogenic.config.sections import (
    Config,
    CurateConfig,
    DataConfig,
    EvaluateConfig,
    JudgesConfig,
    ModelConfig,
    RecipeConfig,
    TrainConfig,
    WorldConfig,
    _qt_recipe,
)

__all__ = ["PRESETS", "preset", "tiny", "demo", "gpu"]


PRESETS: dict[str, Callable[[], Config]] = {}


def preset(fn: Callable[[], Config]) -> Callable[[], Config]:
    PRESETS[fn.__name__] = fn
    return fn


@preset
def tiny() -> Config:
    """Every stage in seconds on one CPU core: tests and CI."""
    small = RecipeConfig(
        steps=2, global_batch_size=4, warmup_steps=0, checkpoint_every=1, sample_every=0, learning_rate=1e-3
    )
    return Config(
        preset="tiny",
        world=WorldConfig(num_samples=200, image_size=32, photogenic_rate=0.1),
        data=DataConfig(shard_max_samples=64, workers=1),
        model=ModelConfig(
            latent_channels=16, autoencoder_channels=(8, 16), unet_channels=(16, 32), attention_head_dim=8
        ),
        train=TrainConfig(
            zero_stage=2,
            autoencoder=dataclasses.replace(small, caption_dropout=0.0, ema_decay=0.0),
            pretrain=dataclasses.replace(small, noise_offset=0.02, snr_gamma=5.0),
            quality_tune=dataclasses.replace(small, noise_offset=0.1, learning_rate=5e-5, validate_every=1, patience=1),
        ),
        judges=JudgesConfig(
            train_samples=384, holdout_samples=256, epochs=2, batch_size=64, width=8, evaluation_width=6
        ),
        curate=CurateConfig(
            min_aesthetic_score=0.0, min_caption_agreement=0.0, generalist_min_rating=0.5, specialist_min_rating=0.6
        ),
        evaluate=EvaluateConfig(seeds_per_prompt=1, sampling_steps=2, bootstrap_samples=200),
    )


@preset
def demo() -> Config:
    """The default local run: the whole pipeline on 2 idle CPU cores in about 65 minutes.

    Its latent is 16x16 with 4 channels (one halving of the 32 px image), not the product's default of
    16 channels at a quarter of the side (8x8 here): both hold as many numbers, the 16x16x4 one
    reconstructs a little better, and at this size its small denoiser learns shapes far sooner: shape
    accuracy 0.75 after 4,000 steps against 0.30-0.35 after 6,000 at 8x8x16, in the same 39 minutes
    (a step at 16x16 costs 1.5 times as much; bench/results/concept_accuracy.md)."""
    return Config(
        preset="demo",
        model=ModelConfig(latent_channels=4, autoencoder_channels=(16, 32)),
        # Compiling costs about 2 minutes; the 4,000 steps repay it (bench/results/trainer_step_pretrain.md).
        train=TrainConfig(pretrain=dataclasses.replace(TrainConfig().pretrain, steps=4_000, compile=True)),
    )


@preset
def gpu() -> Config:
    """One GPU node: 64 px world, a wider model, bf16, ZeRO-2."""
    return Config(
        preset="gpu",
        world=WorldConfig(num_samples=200_000, image_size=64),
        model=ModelConfig(autoencoder_channels=(64, 128, 128), unet_channels=(128, 256, 512), layers_per_block=2),
        train=TrainConfig(
            precision="bf16",
            autoencoder=RecipeConfig(steps=5_000, global_batch_size=256, caption_dropout=0.0, ema_decay=0.0),
            pretrain=RecipeConfig(steps=20_000, global_batch_size=256, noise_offset=0.02),
            quality_tune=dataclasses.replace(_qt_recipe(), steps=2_000),
        ),
        curate=CurateConfig(target_size=2_000),
    )
