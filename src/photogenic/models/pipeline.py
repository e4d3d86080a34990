"""The text-to-image pipeline, in diffusers format: `PhotogenicPipeline.from_pretrained(path)` loads an export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from PIL import Image

if TYPE_CHECKING:
    from photogenic.progress import Progress

__all__ = ["PhotogenicPipeline", "draw", "image_grid", "load_pipeline", "pipeline_class"]


class PhotogenicPipeline(DiffusionPipeline):
    """Latent diffusion with classifier-free guidance: a KL autoencoder, a text-conditioned U-Net, a
    frozen transformer text encoder and a DDIM scheduler."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae: Any, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @property
    def max_tokens(self) -> int:
        # Set at export to the training caption length; saved in tokenizer_config.json.
        return int(min(self.tokenizer.model_max_length, 512))

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        hidden = self.text_encoder(**tokens).last_hidden_state
        return (hidden * tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)).to(self.unet.dtype)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
    ) -> ImagePipelineOutput:
        """Generate one image per prompt.

        Args:
            prompt: one prompt or a list.
            num_inference_steps: DDIM steps.
            guidance_scale: classifier-free guidance; 1 turns it off.
            generator: one generator, or one per prompt (same seed, same image).
            output_type: "pil", "np" (floats in [0, 1], NHWC) or "pt" (NCHW in [0, 1]).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        cond = self.encode_prompt(prompts)
        guided = guidance_scale != 1.0
        if guided:
            uncond = self.encode_prompt([""] * n)
        size = self.unet.config.sample_size
        shape = (self.unet.config.in_channels, size, size)
        if isinstance(generator, list):
            latents = torch.stack([torch.randn(shape, generator=g) for g in generator])
        else:
            latents = torch.randn((n, *shape), generator=generator)
        latents = latents.to(self.device, self.unet.dtype) * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            model_in = torch.cat([latents, latents]) if guided else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            context = torch.cat([uncond, cond]) if guided else cond
            pred = self.unet(model_in, t, encoder_hidden_states=context).sample
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
            latents = self.scheduler.step(pred, t, latents).prev_sample
        images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        images = (images.float() / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return ImagePipelineOutput(images=images)
        array = images.permute(0, 2, 3, 1).cpu().numpy()
        if output_type == "np":
            return ImagePipelineOutput(images=array)
        return ImagePipelineOutput(images=[Image.fromarray((a * 255).round().astype(np.uint8)) for a in array])


def pipeline_class(model_dir: Any) -> str:
    """The pipeline class a diffusers folder names in its `model_index.json`."""
    import json
    from pathlib import Path

    return str(json.loads(Path(model_dir, "model_index.json").read_text())["_class_name"])


def load_pipeline(model_dir: Any) -> DiffusionPipeline:
    """Load any diffusers text-to-image folder: ours, or a Stable Diffusion layout (unet, vae,
    text_encoder, tokenizer, scheduler), without its safety checker."""
    name = pipeline_class(model_dir)
    if name == "PhotogenicPipeline":
        pipe = PhotogenicPipeline.from_pretrained(model_dir)
    elif name.startswith("StableDiffusion"):
        pipe = DiffusionPipeline.from_pretrained(model_dir, safety_checker=None, requires_safety_checker=False)
    else:
        pipe = DiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def draw(
    pipe: DiffusionPipeline,
    jobs: list[tuple[str, int]],
    steps: int,
    guidance: float,
    batch: int = 32,
    progress: Progress | None = None,
) -> list[Image.Image]:
    """One image per (prompt, seed) job, in order, `batch` jobs per call; a seed always starts from the
    same noise, whatever the batch it falls in. `progress` counts the images drawn."""
    images: list[Image.Image] = []
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        images += pipe(
            [p for p, _ in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=[torch.Generator().manual_seed(s) for _, s in chunk],
        ).images
        if progress is not None:
            progress.update(len(chunk))
    return images


def image_grid(images: list[Image.Image], columns: int, scale: int = 1) -> Image.Image:
    """Tile images into a grid (row-major), optionally upscaled."""
    w, h = images[0].size
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * w * scale, rows * h * scale), (255, 255, 255))
    for i, image in enumerate(images):
        tile = image.resize((w * scale, h * scale), Image.NEAREST) if scale != 1 else image
        grid.paste(tile, ((i % columns) * w * scale, (i // columns) * h * scale))
    return grid
