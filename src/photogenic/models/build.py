"""Builders for the autoencoder, the denoiser and the noise schedules, from the `model` config."""

from __future__ import annotations

from typing import Any

from photogenic.config import ModelConfig


def _groups(channels: tuple[int, ...]) -> int:
    """The largest GroupNorm group count (<= 32) that divides every block width."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if all(c % g == 0 for c in channels))


def autoencoder_settings(model: ModelConfig) -> dict[str, Any]:
    """The `model` fields `build_autoencoder` reads: all an autoencoder run depends on of the model section
    (a wider U-Net must not retrain the autoencoder under it)."""
    return {"latent_channels": model.latent_channels, "autoencoder_channels": model.autoencoder_channels}


def build_autoencoder(model: ModelConfig) -> Any:
    """A KL autoencoder with `model.latent_channels` latent channels (paper, 3.1: 16 reconstruct far better
    than 4). Each block after the first halves the resolution."""
    from diffusers import AutoencoderKL

    settings = autoencoder_settings(model)  # nothing else of `model` may shape the autoencoder
    n = len(settings["autoencoder_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=settings["autoencoder_channels"],
        latent_channels=settings["latent_channels"],
        layers_per_block=1,
        norm_num_groups=_groups(settings["autoencoder_channels"]),
    )


def latent_size(model: ModelConfig, image_size: int) -> int:
    """Side of the latent grid for an image of `image_size` pixels."""
    return image_size // 2 ** (len(model.autoencoder_channels) - 1)


# The revision of what `build_unet` makes of a config. Bump it when the same settings build a different
# network, so that runs and checkpoints of the old network are neither reused nor resumed as the new one
# (revision 2: attention heads `attention_head_dim` wide; revision 1 made 32 heads of width 2 and 4).
UNET_REVISION = 2


def unet_settings(model: ModelConfig) -> dict[str, Any]:
    """What a U-Net built by `build_unet` depends on: the whole model section and the builder's revision."""
    from photogenic.config import to_dict

    return {**to_dict(model), "unet_revision": UNET_REVISION}


def attention_heads(model: ModelConfig) -> tuple[int, ...]:
    """Attention heads of each U-Net block: its width over `model.attention_head_dim` (at least one)."""
    return tuple(max(1, c // model.attention_head_dim) for c in model.unet_channels)


def build_unet(model: ModelConfig, sample_size: int, text_dim: int) -> Any:
    """A text-conditioned U-Net. Cross-attention only at the `attention_levels` lowest resolutions and in
    the mid block: at 16x16 or more it dominates CPU step time for little gain on small images. With
    `pooled_text` the caption also reaches every residual block through the timestep embedding."""
    from diffusers import UNet2DConditionModel

    n = len(model.unet_channels)
    levels = min(model.attention_levels, n)
    down = ("DownBlock2D",) * (n - levels) + ("CrossAttnDownBlock2D",) * levels
    up = ("CrossAttnUpBlock2D",) * levels + ("UpBlock2D",) * (n - levels)
    pooled = (
        {"addition_embed_type": "text", "addition_embed_type_num_heads": _heads(text_dim)} if model.pooled_text else {}
    )
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=model.latent_channels,
        out_channels=model.latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=model.unet_channels,
        layers_per_block=model.layers_per_block,
        cross_attention_dim=text_dim,
        # diffusers' `attention_head_dim` is, for this class, the number of heads per block (a naming
        # quirk it keeps for compatibility, diffusers issue 2011): pass heads such that each is
        # `model.attention_head_dim` wide. Passing the width itself made 32 heads of width 2 and 4.
        attention_head_dim=attention_heads(model),
        norm_num_groups=_groups(model.unet_channels),
        resnet_time_scale_shift="scale_shift" if model.pooled_text else "default",
        **pooled,
    )


def _heads(dim: int) -> int:
    """Heads of the attention pooling over caption tokens: 64-wide when the width allows."""
    return max(1, dim // 64) if dim % 64 == 0 else 1


def noise_scheduler(model: ModelConfig) -> Any:
    """The DDPM training schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        prediction_type=model.prediction_type,
        clip_sample=False,
    )


def sample_scheduler(model: ModelConfig) -> Any:
    """DDIM for sampling, on the same betas as training."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        prediction_type=model.prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
    )
