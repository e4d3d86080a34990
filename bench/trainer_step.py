"""The whole trainer step against a bare PyTorch loop on the same model and batch, and where the step's time goes.

    .venv/bin/python bench/trainer_step.py [--preset demo] [--recipe pretrain] [--pairs 30]

The trainer side is `DiffusionTrainer.train_step`, exactly as training runs it: batch indices, latents and
caption states gathered, caption dropout, noise and timesteps drawn, the min-SNR weighted loss, forward,
backward, gradient clipping and AdamW through the DeepSpeed engine, the LR schedule and the EMA update.
The bare side is forward, MSE, backward, clipping and AdamW of a U-Net of the same architecture on one
fixed batch: the floor any trainer of this model pays.

Inputs: a demo-shaped world of `--samples` images, validated, and an autoencoder trained for a few steps
(its quality does not change the step's cost), in `--workspace` (reused by later runs).
A torch profiler table of the trainer's labelled phases (`step/data`, `step/noise`, `step/forward`,
`step/backward`, `step/optimizer`, `step/ema`) and its busiest operators follows the timing.
Writes bench/results/trainer_step_<recipe>.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from photogenic.config import load_config
from photogenic.data.ingest import ingest
from photogenic.data.validate import validate
from photogenic.train.deepspeed_config import adamw
from photogenic.train.diffusion import DiffusionTrainer
from photogenic.train.run import train

PHASES = ("data", "noise", "forward", "backward", "optimizer", "ema")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that pick a bench's inputs (`inputs`, `bench_overrides`): preset, recipe, world size, workspace."""
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--recipe", default="pretrain", choices=["pretrain", "quality_tune"])
    parser.add_argument("--samples", type=int, default=2_048)
    parser.add_argument("--workspace", default=str(Path("build", "bench-workspace").resolve()))


def bench_overrides(args: argparse.Namespace) -> list[str]:
    return [f"workspace={args.workspace}", f"world.num_samples={args.samples}", "train.autoencoder.steps=20"]


def inputs(preset: str, overrides: list[str], recipe: str) -> tuple[str, str]:
    """(dataset manifest, base model): the validated world and the autoencoder; for quality-tuning, a
    pretrained model of 10 steps on it."""
    config = load_config(preset, overrides=overrides)
    data = validate(ingest("world", config, progress=False).manifest_uri, config).manifest_uri
    base = train("autoencoder", config, data, progress=False).model_uri
    if recipe == "quality_tune":
        pretrain = load_config(preset, overrides=[*overrides, "train.pretrain.steps=10"])
        base = train("pretrain", pretrain, data, base=base, progress=False).model_uri
    return data, base


def build_trainer(preset: str, overrides: list[str], recipe: str, data: str, base: str) -> DiffusionTrainer:
    """A trainer with its engine built, without validation or rehearsal (they are not per-step work)."""
    off = ("validate_every", "rehearsal_fraction", "sample_every")
    config = load_config(preset, overrides=[*overrides, *(f"train.{recipe}.{k}=0" for k in off)])
    out = str(Path(config.workspace, "bench-runs", recipe))
    trainer = DiffusionTrainer(config=config, data_uri=data, out=out, base=base, progress=False, recipe=recipe)
    trainer.build()
    return trainer


def bare_loop(trainer: DiffusionTrainer) -> Any:
    """A closure that runs one bare step: a fresh U-Net of the trainer's architecture, its optimizer settings,
    one fixed batch of the trainer's own latents and caption states."""
    import copy

    unet = copy.deepcopy(trainer.model).float().train()  # what the trainer freezes stays frozen
    params = [p for p in unet.parameters() if p.requires_grad]
    s = trainer.settings
    opt = adamw(params, s)  # the trainer's optimizer, fused
    idx = trainer.batch_indices(0, 0)
    g = torch.Generator().manual_seed(0)
    x = trainer.latents[idx]
    noise = torch.randn(x.shape, generator=g)
    t = torch.randint(0, trainer.timesteps, (len(idx),), generator=g)
    noisy = trainer.noise.add_noise(x, noise, t)
    ctx = trainer.caption_states[trainer.caption_ids[idx]]

    def step() -> None:
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=ctx).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, s.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def timed_pairs(sides: dict[str, Any], pairs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each side's step, the sides taking turns step by step (drift on a shared machine hits
    every side alike)."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(warmup + pairs):
        for name, step in sides.items():
            start = time.perf_counter()
            step(i)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def profile(trainer: DiffusionTrainer, steps: int, first: int) -> tuple[dict[str, float], list[tuple[str, float]]]:
    """Per-step milliseconds of each labelled phase, and the 12 operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(steps):
            trainer.train_step(first + i)
    events = prof.key_averages()
    phases = {e.key.removeprefix("step/"): e.cpu_time_total / 1e3 / steps for e in events if e.key.startswith("step/")}
    ops = [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in events if not e.key.startswith("step/")]
    ops.sort(key=lambda kv: -kv[1])
    return phases, ops[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser)
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--override", action="append", default=[], help="a config override (repeatable)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    overrides = [*bench_overrides(args), *args.override]
    data, base = inputs(args.preset, overrides, args.recipe)
    trainer = build_trainer(args.preset, overrides, args.recipe, data, base)
    bare = bare_loop(trainer)
    times = timed_pairs({"bare loop": lambda i: bare(), "trainer step": trainer.train_step}, args.pairs, args.warmup)
    best = {k: statistics.median(v) for k, v in times.items()}
    ratio = best["trainer step"] / best["bare loop"]
    pair_ratios = [a / b for a, b in zip(times["trainer step"], times["bare loop"], strict=True)]
    q1, _, q3 = statistics.quantiles(pair_ratios, n=4)
    phases, ops = profile(trainer, args.profile_steps, args.pairs + args.warmup)
    measured = sum(phases.get(p, 0.0) for p in PHASES)

    s = trainer.settings
    params = sum(p.numel() for p in trainer.model.parameters())
    lines = [
        f"# The whole trainer step against a bare loop ({args.recipe})",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {trainer.dist.device}, dtype {trainer.engine_dtype}",
        f"- model: `{args.preset}` preset U-Net, {params / 1e6:.2f} M parameters, latent "
        f"{tuple(trainer.latents.shape[1:])}; batch {s.global_batch_size}; EMA {s.ema_decay}; 1 process",
        f"- command: `.venv/bin/python bench/trainer_step.py --preset {args.preset} --recipe {args.recipe} "
        f"--pairs {args.pairs}" + "".join(f" --override {o}" for o in args.override) + "`",
        f"- each figure: the median of {args.pairs} step times after {args.warmup} warm-up steps, the two sides "
        "taking turns step by step",
        "",
        "| side | step time (s) | vs bare loop |",
        "|---|---:|---:|",
        *(f"| {name} | {seconds:.4f} | {seconds / best['bare loop']:.3f} |" for name, seconds in best.items()),
        "",
        f"**Whole trainer step / bare loop = {ratio:.3f}** (target <= 1.05: {'met' if ratio <= 1.05 else 'NOT met'}); "
        f"step-by-step ratios: median {statistics.median(pair_ratios):.3f}, quartiles {q1:.3f}-{q3:.3f}",
        "",
        f"## Where the trainer's step goes (torch profiler, {args.profile_steps} steps, ms per step)",
        "",
        "| phase | ms | share |",
        "|---|---:|---:|",
        *(f"| {p} | {phases.get(p, 0.0):.1f} | {phases.get(p, 0.0) / measured:.1%} |" for p in PHASES),
        "",
        "Busiest operators (self CPU time, ms per step):",
        "",
        "| operator | ms |",
        "|---|---:|",
        *(f"| `{name}` | {ms:.1f} |" for name, ms in ops),
        "",
    ]
    out = Path(args.out or Path(__file__).parent / "results" / f"trainer_step_{args.recipe}.md")
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
