"""Plain diffusers models: the autoencoder, the text-conditioned U-Net, the frozen text encoder, the pipeline."""

from photogenic.models.build import build_autoencoder, build_unet, latent_size, noise_scheduler, sample_scheduler
from photogenic.models.text import TextEncoder, load_text_encoder

__all__ = [
    "build_autoencoder",
    "build_unet",
    "latent_size",
    "noise_scheduler",
    "sample_scheduler",
    "TextEncoder",
    "load_text_encoder",
]
