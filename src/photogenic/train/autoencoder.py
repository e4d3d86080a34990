"""The autoencoder recipe: a KL autoencoder trained on pixels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from photogenic.config import ModelConfig
from photogenic.train.deepspeed_config import gathered_copy
from photogenic.train.trainer import Trainer, seeded

__all__ = ["AutoencoderTrainer"]


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
        z = posterior.sample(generator=seeded(self.config.train.seed, step, micro, self.dist.rank))
        recon = self.engine.module.decode(z).sample
        return F.mse_loss(recon.float(), images) + self.kl_weight * posterior.kl().float().mean()

    def export(self, local: Path) -> None:
        vae = gathered_copy(self.engine)
        # Scale latents to unit variance for the diffusion model, as Stable Diffusion does.
        with torch.no_grad():
            sample = self.data.images[: min(512, len(self.data))].float().div(127.5).sub(1.0)
            std = float(vae.encode(sample).latent_dist.mode().std())
        vae.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        vae.save_pretrained(local / "vae")
