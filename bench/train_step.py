"""Trainer step time against a bare torch + AdamW loop on the same U-Net and batch, in one run.

    .venv/bin/python bench/train_step.py [--preset demo] [--steps 20] [--zero 0 1 2 3]

Both sides get identical inputs (latents, timesteps, text states) and do forward, backward, clip
and AdamW step. Writes bench/results/train_step.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from photogenic.config import load_config
from photogenic.models import build_unet, latent_size
from photogenic.train.deepspeed_config import adamw, wrap
from photogenic.train.distributed import setup_distributed


def _inputs(config, batch: int):  # noqa: ANN001, ANN202
    g = torch.Generator().manual_seed(0)
    size = latent_size(config.model, config.world.image_size)
    x = torch.randn(batch, config.model.latent_channels, size, size, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, config.model.max_caption_tokens, 384, generator=g)
    target = torch.randn(x.shape, generator=g)
    return x, t, ctx, target


def bare(config, steps: int, warmup: int) -> list[float]:  # noqa: ANN001
    torch.manual_seed(0)
    recipe = config.train.pretrain
    unet = build_unet(config.model, latent_size(config.model, config.world.image_size), 384)
    opt = adamw(list(unet.parameters()), recipe)  # the trainer's AdamW (fused), so only DeepSpeed differs
    x, t, ctx, target = _inputs(config, recipe.global_batch_size)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.mse_loss(unet(x, t, encoder_hidden_states=ctx).sample, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def engine(config, steps: int, warmup: int) -> list[float]:  # noqa: ANN001
    torch.manual_seed(0)
    recipe = config.train.pretrain
    unet = build_unet(config.model, latent_size(config.model, config.world.image_size), 384)
    eng, _, _ = wrap(unet, config.train, recipe, "pretrain", 1)
    x, t, ctx, target = _inputs(config, recipe.global_batch_size)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.mse_loss(eng(x, t, encoder_hidden_states=ctx).sample, target)
        eng.backward(loss)
        eng.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--zero", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_step.md"))
    args = parser.parse_args()
    setup_distributed()
    rows = []
    base_config = load_config(args.preset)
    for rep in range(2):  # interleaved, so drift hits every side
        rows.append(("bare loop", rep, statistics.median(bare(base_config, args.steps, args.warmup))))
        for stage in args.zero:
            # zero_on_one_rank: measure ZeRO's own cost (the trainer turns it off on one rank).
            config = load_config(args.preset, overrides=[f"train.zero_stage={stage}", "train.zero_on_one_rank=true"])
            rows.append((f"DeepSpeed ZeRO-{stage}", rep, statistics.median(engine(config, args.steps, args.warmup))))
        print(rows[-1 - len(args.zero) :])
    best = {}
    for name, _, seconds in rows:
        best[name] = min(best.get(name, float("inf")), seconds)
    ref = best["bare loop"]
    unet = build_unet(base_config.model, latent_size(base_config.model, base_config.world.image_size), 384)
    params = sum(p.numel() for p in unet.parameters())
    lines = [
        "# Trainer step time against a bare loop",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device cpu, fp32",
        f"- model: `{args.preset}` preset U-Net, {params / 1e6:.2f} M parameters; batch "
        f"{base_config.train.pretrain.global_batch_size}; 1 process",
        f"- command: `.venv/bin/python bench/train_step.py --preset {args.preset} --steps {args.steps}`",
        f"- each figure: the median step time over {args.steps} steps after {args.warmup} warm-up steps; "
        "best of 2 interleaved rounds",
        "",
        "| side | step time (s) | vs bare loop |",
        "|---|---:|---:|",
        *(f"| {name} | {seconds:.4f} | {seconds / ref:.3f} |" for name, seconds in best.items()),
        "",
        "Target: DeepSpeed step time <= 1.05 x the bare loop.",
        "",
        "The trainer's default on one rank is the ZeRO-0 row: with `train.zero_on_one_rank=false` (the",
        "default) a single-rank job runs DeepSpeed without ZeRO, since one rank has nothing to partition.",
        "Both sides use the trainer's fused AdamW. Where ZeRO-1/2 time went on one CPU rank (cProfile,",
        "demo U-Net, batch 64, 2026-11-28, unfused AdamW then): per-parameter gradient hooks that copy each",
        "gradient into the flat partition buffer (about 27 ms a step) and the flat fp32 optimizer step with",
        "its grad-norm and parameter copy-back (about 43 ms a step, against about 15 ms for the bare loop's",
        "AdamW). `overlap_comm`/`contiguous_gradients` only help with CUDA streams and are turned on on GPUs",
        "only. ZeRO-3 adds parameter gathering. The whole trainer step: bench/results/trainer_step_*.md.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
