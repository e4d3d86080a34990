"""The diffusion recipes: pretraining on the haystack and quality-tuning on the needles, with
quality-tuning's extras (early stopping on judged appeal, rehearsal, guidance preservation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from photogenic.config import Config, ConfigError, ModelConfig
from photogenic.models.io import load_model_dir
from photogenic.train.data import RankData
from photogenic.train.deepspeed_config import gathered_copy
from photogenic.train.trainer import Trainer, phase, seeded

__all__ = ["DiffusionTrainer", "ema_update", "validation_jobs", "SAMPLE_PROMPTS"]

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


class DiffusionTrainer(Trainer):
    """Latent diffusion: pretraining on the haystack, quality-tuning on the needles.

    The autoencoder and text encoder are frozen and live outside the DeepSpeed engine, so ZeRO-3
    never partitions them. Latents are computed once (the autoencoder's mean), and so are the states of
    each distinct caption; a rehearsal dataset's come after the training set's.
    """

    supports_rehearsal = True

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
            raise ConfigError(f"train {self.recipe} needs --base: the exported autoencoder (or the pretrained model)")
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
        if self.settings.guidance_preservation and not (self.base_dir / "unet").exists():  # before encoding
            raise ConfigError(
                f"config key 'train.{self.recipe}.guidance_preservation' ({self.settings.guidance_preservation}) "
                f"keeps the base model's guidance, and the base {self.base} has no denoiser; set it to 0"
            )
        self.ema = None
        if self.settings.ema_decay > 0:  # on the model's device, in fp32, before DeepSpeed casts the model
            from diffusers import UNet2DConditionModel
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(
                self.model.parameters(),
                decay=self.settings.ema_decay,
                model_cls=UNet2DConditionModel,
                model_config=self.model.config,
            )
        sets = [data] if self.rehearsal_data is None else [data, self.rehearsal_data]
        self.captions = [c for d in sets for c in d.captions]
        self._cache_captions(self.captions)
        factor = self.vae.config.scaling_factor
        chunks = []
        # rehearsal pixels only when batches rehearse them; guidance preservation reads the captions alone
        for images_u8 in (d.images for d in (sets if self.rehearsal_count else [data])):
            for start in range(0, len(images_u8), 256):
                images = images_u8[start : start + 256].float().div(127.5).sub(1.0).to(self.dist.device)
                chunks.append((self.vae.encode(images).latent_dist.mode() * factor).cpu())
        self.latents = torch.cat(chunks).to(self.dist.device)  # the step gathers its batch on the device
        self.timesteps = self.noise.config.num_train_timesteps
        self.teacher = None
        if self.settings.guidance_preservation:  # the base U-Net, frozen, outside the engine
            import copy

            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.preserve_count = max(1, self.micro // 4) if self.teacher is not None else 0

    def preservation_indices(self, step: int, micro: int) -> torch.Tensor:
        """Rehearsal-set captions whose guidance direction one micro-batch preserves (indices into `captions`)."""
        seed, accum = self.config.train.seed + self.dist.rank + _PRESERVE_SEED, self.settings.grad_accum_steps
        assert self.rehearsal_data is not None
        return self.rehearsal_data.indices(step, micro, self.preserve_count, accum, seed) + len(self.data)

    @torch.no_grad()
    def _cache_captions(self, captions: list[str]) -> None:
        """Encode each distinct caption once (the encoder is frozen): the world's 20,000 captions have
        about 3,000 distinct ones. Beyond `_CAPTION_CACHE_MAX` distinct captions, encode per step."""
        unique = sorted(set(captions) | {""})
        self.caption_states = None
        if len(unique) > _CAPTION_CACHE_MAX:
            return
        index = {c: i for i, c in enumerate(unique)}
        self.caption_ids = torch.tensor([index[c] for c in captions], device=self.dist.device)
        self.empty_caption = index[""]
        states = [self.text.encode(unique[i : i + 256], self.dist.device) for i in range(0, len(unique), 256)]
        self.caption_states = torch.cat(states)

    def _context(self, batch: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        if self.caption_states is not None:
            ids = torch.where(drop, self.empty_caption, self.caption_ids[batch])
            return self.caption_states[ids]
        captions = ["" if d else self.captions[i] for i, d in zip(batch.tolist(), drop.tolist(), strict=True)]
        return self.text.encode(captions, self.dist.device)

    def compute_loss(self, batch: torch.Tensor, step: int, micro: int) -> torch.Tensor:
        device = self.dist.device
        # Every draw on the training device, in one fixed order (the same numbers on CPU as drawn there before)
        gen = seeded(self.config.train.seed, step, micro, self.dist.rank, device)
        batch = batch.to(device)
        with phase("data"):
            latents = self.latents[batch]
            drop = torch.rand(len(batch), generator=gen, device=device) < self.settings.caption_dropout
            context = self._context(batch, drop)
        with phase("noise"):
            noise = torch.randn(latents.shape, generator=gen, device=device)
            if self.settings.noise_offset:
                # Noise offset (paper: 0.02 in pretraining, 0.1 in quality-tuning) lets the model shift
                # overall brightness, which plain Gaussian noise hides from it.
                offset = torch.randn((*latents.shape[:2], 1, 1), generator=gen, device=device)
                noise = noise + self.settings.noise_offset * offset
            t = torch.randint(0, self.timesteps, (len(batch),), generator=gen, device=device)
            noisy = self.noise.add_noise(latents, noise, t)
            if self.noise.config.prediction_type == "v_prediction":
                target = self.noise.get_velocity(latents, noise, t)
            else:
                target = noise
            n = self.preserve_count
            if n:  # one forward: the batch, then n of its noisy latents under rehearsed captions and under none
                captions = self.preservation_indices(step, micro).to(device)
                kept = self._context(captions, torch.zeros(n, dtype=torch.bool, device=device))
                empty = self._context(captions, torch.ones(n, dtype=torch.bool, device=device))
                noisy_all = torch.cat([noisy, noisy[:n], noisy[:n]])
                t_all = torch.cat([t, t[:n], t[:n]])
                context = torch.cat([context, kept, empty])
            else:
                noisy_all, t_all = noisy, t
        with phase("forward"):
            dtype = self.engine_dtype
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
        return loss + self.settings.guidance_preservation * preservation

    @property
    def engine_dtype(self) -> torch.dtype:
        return next(self.engine.module.parameters()).dtype

    def step_metrics(self) -> dict[str, float]:
        return {"guidance_preservation_loss": self.last_preservation} if self.preserve_count else {}

    def _denoising_loss(self, pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """MSE to the target, min-SNR weighted with `snr_gamma`."""
        if not self.settings.snr_gamma:
            return F.mse_loss(pred.float(), target.float())
        from diffusers.training_utils import compute_snr

        snr = compute_snr(self.noise, t)
        weight = snr.clamp(max=self.settings.snr_gamma)
        weight = weight / (snr + 1) if self.noise.config.prediction_type == "v_prediction" else weight / snr
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * weight).mean()

    def after_step(self, step: int) -> None:
        if self.ema is None:
            return
        import deepspeed

        params = list(self.engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, enabled=self.engine.zero_optimization_stage() == 3):
            ema_update(self.ema, params)

    def client_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_client_state(self, state: dict[str, Any]) -> None:
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])

    def _export_unet(self) -> torch.nn.Module:
        unet = gathered_copy(self.engine)
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
            raise ConfigError(f"train.{self.recipe}.validate_every needs --judges: the curation judge set")
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
        self.run.log_image(image_grid(images, 4, scale=4), f"samples/{self.recipe}_step{step:06d}.png")

    def log_model(self, model_uri: str, version: str) -> None:
        if self.run is None:
            return
        model_id = self.run.log_model(model_uri, version, self.recipe)
        if model_id:
            self.run.set_tags({f"photogenic.mlflow_model.{self.recipe}": model_id})


@torch.no_grad()
def ema_update(ema: Any, params: list[torch.nn.Parameter]) -> None:
    """diffusers' `EMAModel.step`, as one `lerp` over all trained tensors: shadow += (1 - decay) * (param -
    shadow), with the model's decay schedule. The library's form takes two passes and a temporary per
    tensor, and copies every frozen tensor again each step (they never change: the shadow has them from
    the start)."""
    ema.optimization_step += 1
    decay = ema.get_decay(ema.optimization_step)
    ema.cur_decay_value = decay
    pairs = [(s, p) for s, p in zip(ema.shadow_params, params, strict=True) if p.requires_grad]
    if pairs:
        torch._foreach_lerp_([s for s, _ in pairs], [p.detach().to(s.dtype) for s, p in pairs], 1.0 - decay)


_CAPTION_CACHE_MAX = 100_000
_PRESERVE_SEED = 104_729  # offsets the order of the captions whose guidance is preserved (see REHEARSAL_SEED)


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
