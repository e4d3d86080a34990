"""GPU check: the trainer on one GPU with the larger preset, bf16 and ZeRO-2; throughput and MFU.

    bash bench/gpu_check.sh            # on a machine with one CUDA GPU; under 8 minutes on an H100

Generates a 64 px world, ingests it, trains the autoencoder and pretrains the `gpu` preset U-Net
for a few hundred steps, then reports samples/s, median step time, and model FLOPs utilisation
(FLOPs of one training step counted by torch's FlopCounterMode, over the median step time, against
the GPU's dense bf16 peak), then profiles 10 more steps: CPU and GPU time of each phase of the step
(data, noise, forward, backward, optimizer, EMA), the busiest kernels and a Chrome trace.
`--text-encoder DIR` points at a text encoder to use; throughput does not
depend on its weights, so a randomly initialised model of MiniLM's shape serves where the packaged
weights cannot travel.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense bf16 FLOP/s (SXM datasheets)


def _peak(name: str) -> float:
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def text_encoder_dir(src: str | None, work: Path) -> str:
    """`minilm` when the package is installed; else a random-weight model of the shape in `src`."""
    if src is None:
        return "minilm"
    from transformers import AutoConfig, AutoModel

    target = work / "text-encoder"
    target.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    AutoModel.from_config(AutoConfig.from_pretrained(src)).save_pretrained(target)
    return str(target)


def profile_steps(trainer: Any, first: int, steps: int, trace: Path) -> tuple[dict[str, tuple[float, float]], list]:
    """Per-step CPU and GPU milliseconds of each labelled phase of the trainer's step (`step/data` ...
    `step/ema`), the 12 busiest GPU kernels, and a Chrome trace of the profiled steps at `trace`."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            trainer.train_step(first + i)
        torch.cuda.synchronize()
    trace.parent.mkdir(parents=True, exist_ok=True)
    prof.export_chrome_trace(str(trace))
    events = prof.key_averages()

    def gpu_ms(e: Any) -> float:
        return getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) / 1e3 / steps

    phases = {
        e.key.removeprefix("step/"): (e.cpu_time_total / 1e3 / steps, gpu_ms(e))
        for e in events
        if e.key.startswith("step/")
    }
    phases["whole step"] = (sum(c for c, _ in phases.values()), sum(g for _, g in phases.values()))
    self_gpu = [(e.key, getattr(e, "self_device_time_total", 0.0) / 1e3 / steps) for e in events]
    kernels = sorted((kv for kv in self_gpu if kv[1] > 0), key=lambda kv: -kv[1])[:12]
    return phases, kernels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--ae-steps", type=int, default=200)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--text-encoder", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_check.md"))
    parser.add_argument("--profile-steps", type=int, default=10)
    parser.add_argument("--trace", default=str(Path(__file__).parent / "results" / "gpu_trace.json"))
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"

    from photogenic.config import load_config
    from photogenic.data.ingest import ingest
    from photogenic.models import build_unet, latent_size
    from photogenic.train.diffusion import DiffusionTrainer
    from photogenic.train.run import train

    gpu = torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp(prefix="photogenic-gpu-"))
    encoder = text_encoder_dir(args.text_encoder, work)
    overrides = [
        f"workspace={work}",
        f"world.num_samples={args.samples}",
        f"data.workers={max(1, (os.cpu_count() or 2) - 2)}",
        f"model.text_encoder={encoder}",
        "train.precision=bf16",
        "train.zero_stage=2",
        "train.zero_on_one_rank=true",  # exercise ZeRO-2 itself on the one GPU
        f"train.autoencoder.steps={args.ae_steps}",
        f"train.autoencoder.global_batch_size={args.batch}",
        "train.autoencoder.checkpoint_every=0",
        f"train.pretrain.steps={args.steps}",
        f"train.pretrain.global_batch_size={args.batch}",
        "train.pretrain.checkpoint_every=0",
        "train.pretrain.sample_every=0",
    ]
    config = load_config("gpu", overrides=overrides)
    report: dict[str, object] = {"gpu": gpu, "torch": torch.__version__, "bf16": torch.cuda.is_bf16_supported()}

    t0 = time.perf_counter()
    data = ingest("world", config, progress=False)
    report["ingest_s"] = round(time.perf_counter() - t0, 1)
    report["ingest_images_per_s"] = round(data.counts["input"] / (time.perf_counter() - t0), 1)

    ae = train("autoencoder", config, data.manifest_uri, progress=False)
    report["autoencoder_s"] = round(ae.seconds, 1)
    report["autoencoder_samples_per_s"] = round(ae.samples_per_s, 1)

    step_times: list[float] = []

    class Timed(DiffusionTrainer):
        def train_step(self, step: int) -> float:
            torch.cuda.synchronize()
            start = time.perf_counter()
            loss = super().train_step(step)
            torch.cuda.synchronize()
            step_times.append(time.perf_counter() - start)
            return loss

    trainer = Timed(
        config=config,
        data_uri=data.manifest_uri,
        out=str(work / "pretrain"),
        base=ae.model_uri,
        progress=False,
        recipe="pretrain",
    )
    result = trainer.train()
    steady = step_times[10:] or step_times
    step_s = statistics.median(steady)
    report.update(
        pretrain_s=round(result.seconds, 1),
        pretrain_final_loss=round(result.final_loss, 4),
        step_s_median=round(step_s, 4),
        samples_per_s=round(args.batch / step_s, 1),
        peak_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
    )

    phases, kernels = profile_steps(trainer, args.steps, args.profile_steps, Path(args.trace))
    report["profiled_steps"] = args.profile_steps

    # FLOPs of one training step of the denoiser at this batch (forward + backward).
    from torch.utils.flop_counter import FlopCounterMode

    size = latent_size(config.model, config.world.image_size)
    unet = build_unet(config.model, size, 384).cuda().to(torch.bfloat16)
    x = torch.randn(args.batch, config.model.latent_channels, size, size, device="cuda", dtype=torch.bfloat16)
    ctx = torch.randn(args.batch, config.model.max_caption_tokens, 384, device="cuda", dtype=torch.bfloat16)
    t = torch.randint(0, 1000, (args.batch,), device="cuda")
    counter = FlopCounterMode(display=False)
    with counter:
        unet(x, t, encoder_hidden_states=ctx).sample.float().pow(2).mean().backward()
    flops = counter.get_total_flops()
    params = sum(p.numel() for p in unet.parameters())
    report.update(
        unet_params_m=round(params / 1e6, 2),
        step_tflop=round(flops / 1e12, 3),
        achieved_tflops=round(flops / step_s / 1e12, 2),
        mfu=round(flops / step_s / _peak(gpu), 4),
    )
    print(json.dumps(report, indent=2))
    lines = [
        "# GPU check",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- device: {gpu}; torch {torch.__version__}; {platform.machine()}, {os.cpu_count()} CPUs",
        f"- preset `gpu`: {config.world.image_size} px, latents {size}x{size}x{config.model.latent_channels}, "
        f"U-Net {params / 1e6:.1f} M parameters, batch {args.batch}, bf16, DeepSpeed ZeRO-2 (one rank)",
        f"- text encoder: {'MiniLM' if encoder == 'minilm' else 'MiniLM-shaped, random weights (throughput only)'}",
        "- command: `bash bench/gpu_check.sh`",
        "",
        "| measure | value |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in report.items()),
        "",
        f"MFU counts the denoiser's forward and backward FLOPs at batch {args.batch} (FlopCounterMode) over the median",
        f"step time after 10 warm-up steps, against a dense bf16 peak of {_peak(gpu) / 1e12:.0f} TFLOP/s. The step",
        "also encodes captions with the frozen text encoder, which the FLOP count leaves out.",
        "",
        f"## Where a step goes (torch profiler, {args.profile_steps} steps after training, ms per step)",
        "",
        "CPU: time the host spends in the phase (launching kernels included); GPU: kernel time the phase",
        f"queued. A step whose CPU time exceeds its GPU time is host-bound. Trace: `{args.trace}`",
        "(open in https://ui.perfetto.dev).",
        "",
        "| phase | CPU ms | GPU ms |",
        "|---|---:|---:|",
        *(f"| {name} | {cpu:.1f} | {gpu_ms:.1f} |" for name, (cpu, gpu_ms) in phases.items()),
        "",
        "Busiest GPU kernels (ms per step):",
        "",
        "| kernel | ms |",
        "|---|---:|",
        *(f"| `{name[:90]}` | {ms:.2f} |" for name, ms in kernels),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
