"""A cheaper U-Net step on this CPU? bf16 autocast, channels_last and torch.compile against the plain fp32
step, on the same U-Net, batch and fused AdamW, taking turns step by step.

    .venv/bin/python bench/step_variants.py [--preset demo] [--steps 15] [--variants fp32 bf16 ...]

Each variant has its own copy of the same initial weights. torch.compile's first step (the compilation)
is timed apart. Writes bench/results/step_variants.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from photogenic.config import load_config
from photogenic.models import build_unet, latent_size
from photogenic.train.deepspeed_config import adamw

VARIANTS = {
    "fp32": "the trainer's step today: fp32, contiguous (NCHW), eager",
    "bf16": "bf16 autocast (`torch.autocast('cpu', torch.bfloat16)`), fp32 weights and optimizer",
    "channels_last": "weights and inputs in channels_last",
    "compile": "`torch.compile(unet)` (inductor, default mode), fp32",
    "compile_bf16": "`torch.compile` and bf16 autocast",
}


def _step(name: str, unet: torch.nn.Module, config, inputs) -> Callable[[], None]:  # noqa: ANN001
    x, t, ctx, target = inputs
    if "channels_last" in name:
        unet = unet.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(unet) if name.startswith("compile") else unet
    opt = adamw(list(unet.parameters()), config.train.pretrain)
    bf16 = "bf16" in name

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(x, t, encoder_hidden_states=ctx).sample
        F.mse_loss(out.float(), target).backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_variants.md"))
    args = parser.parse_args()
    config = load_config(args.preset)
    size = latent_size(config.model, config.world.image_size)
    batch = config.train.pretrain.global_batch_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, config.model.latent_channels, size, size, generator=g)
    inputs = (
        x,
        torch.randint(0, 1000, (batch,), generator=g),
        torch.randn(batch, 24, 384, generator=g),
        torch.randn(x.shape, generator=g),
    )
    torch.manual_seed(0)
    unet = build_unet(config.model, size, 384)
    steps, first = {}, {}
    for name in args.variants:
        steps[name] = _step(name, copy.deepcopy(unet), config, inputs)
        start = time.perf_counter()
        steps[name]()  # compilation, allocator warm-up
        first[name] = time.perf_counter() - start
        steps[name]()
        print(f"{name}: first step {first[name]:.1f}s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in args.variants}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    ref = med.get("fp32", next(iter(med.values())))
    lines = [
        "# A cheaper U-Net step on this CPU?",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; CPU bf16: "
        f"{'avx512_bf16' if 'avx512_bf16' in Path('/proc/cpuinfo').read_text() else 'none'}",
        f"- model: `{args.preset}` preset U-Net, latent {tuple(x.shape[1:])}, batch {batch}, fused AdamW, clipping",
        f"- command: `.venv/bin/python bench/step_variants.py --preset {args.preset} --steps {args.steps}`",
        f"- each figure: the median of {args.steps} steps, the variants taking turns step by step",
        "",
        "| variant | what | first step (s) | step (s) | vs fp32 |",
        "|---|---|---:|---:|---:|",
        *(f"| `{n}` | {VARIANTS[n]} | {first[n]:.1f} | {med[n]:.4f} | {med[n] / ref:.3f} |" for n in args.variants),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
