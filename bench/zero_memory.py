"""Per-rank parameter + gradient + optimizer bytes under ZeRO-3 against ZeRO-0, at 1, 2 and 4 ranks.

    .venv/bin/python bench/zero_memory.py [--preset demo] [--ranks 1 2 4]

Launches itself under torchrun (N CPU ranks, gloo) once per stage and rank count, takes one optimizer step, then
counts every distinct tensor storage the engine holds for parameters (their local partitions under
ZeRO-3), gradients, optimizer states and DeepSpeed's flat buffers. Writes bench/results/zero_memory.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch


def _tensors(obj: Any, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if depth > 3:
        return []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v, depth + 1)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v, depth + 1)]
    return []


def _bytes(tensors: list[torch.Tensor], seen: set[int]) -> int:
    total = 0
    for t in tensors:
        if t.device.type != "cpu" or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in seen or ptr == 0:
            continue
        seen.add(ptr)
        total += storage.nbytes()
    return total


def measure(stage: int, preset: str, bf16: bool) -> dict[str, int]:
    """Runs inside one torchrun rank."""
    import torch.nn.functional as F

    import photogenic.train.deepspeed_config as ds_config
    from photogenic.config import load_config
    from photogenic.models import build_unet, latent_size
    from photogenic.train.distributed import setup_distributed

    if bf16:  # the trainer uses bf16 on GPUs only; DeepSpeed runs it on CPU too, for this count
        plain = ds_config.deepspeed_config

        def with_bf16(*args: Any, **kwargs: Any) -> dict[str, Any]:
            return {**plain(*args, **kwargs), "bf16": {"enabled": True}}

        ds_config.deepspeed_config = with_bf16

    dist = setup_distributed()
    overrides = [f"train.zero_stage={stage}", "train.zero_on_one_rank=true", "train.pretrain.global_batch_size=8"]
    config = load_config(preset, overrides=overrides)
    torch.manual_seed(0)
    size = latent_size(config.model, config.world.image_size)
    unet = build_unet(config.model, size, 384)
    n_params = sum(p.numel() for p in unet.parameters())
    engine, optimizer, _ = ds_config.wrap(unet, config.train, config.train.pretrain, "pretrain", dist.world_size)
    dtype = torch.bfloat16 if bf16 else torch.float32
    x = torch.randn(4, config.model.latent_channels, size, size, dtype=dtype)
    ctx = torch.randn(4, 8, 384, dtype=dtype)

    def forward_backward() -> None:
        out = engine(x, torch.randint(0, 1000, (4,)), encoder_hidden_states=ctx).sample
        engine.backward(F.mse_loss(out.float(), x.float()))

    forward_backward()
    engine.step()  # optimizer states now exist
    forward_backward()  # the peak: parameters, gradients and optimizer states all held
    seen: set[int] = set()
    params = [getattr(p, "ds_tensor", p.data) for p in engine.module.parameters()]
    out = {"params": _bytes(params, seen)}
    out["grads"] = _bytes([p.grad for p in engine.module.parameters() if p.grad is not None], seen)
    inner = getattr(optimizer, "optimizer", optimizer)
    out["optimizer_state"] = _bytes([t for s in inner.state.values() for t in _tensors(s)], seen)
    # DeepSpeed's own flat fp32 partitions, gradient partitions and buckets.
    out["deepspeed_buffers"] = 0
    for name, value in vars(optimizer).items():
        size = _bytes(_tensors(value), seen)
        out["deepspeed_buffers"] += size
        if size and os.environ.get("ZERO_MEMORY_DEBUG"):
            print(f"DEBUG rank {dist.rank} {name}: {size / 2**20:.2f} MiB", flush=True)
    out["total"] = sum(out.values())
    out["n_params"] = n_params
    return out


def _run_ranks(ranks: int, stage: int, preset: str, bf16: bool) -> list[dict[str, int]]:
    import tempfile

    torchrun = str(Path(sys.executable).with_name("torchrun"))
    with tempfile.TemporaryDirectory() as results:  # a file per rank: ranks' stdout lines interleave
        cmd = [torchrun, "--standalone", "--nproc-per-node", str(ranks), __file__, "--preset", preset]
        cmd += ["--rank-run", str(stage), "--results", results] + (["--bf16"] if bf16 else [])
        subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
        return [json.loads(Path(results, f"rank-{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rank-run", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "zero_memory.md"))
    args = parser.parse_args()
    if args.rank_run is not None:
        result = measure(args.rank_run, args.preset, args.bf16)
        rank = int(os.environ["RANK"])
        Path(args.results, f"rank-{rank}.json").write_text(json.dumps({"rank": rank, **result}))
        return
    rows, ratios, n = [], {}, 0
    for precision in ("fp32", "bf16"):
        for ranks in args.ranks:
            largest = {}
            for stage in (0, 3):
                per_rank = _run_ranks(ranks, stage, args.preset, precision == "bf16")
                r = max(per_rank, key=lambda r: r["total"])  # the fullest rank
                largest[stage], n = r["total"], r["n_params"]
                mib = [r[k] / 2**20 for k in ("params", "grads", "optimizer_state", "deepspeed_buffers", "total")]
                rows.append(f"| {precision} | {ranks} | ZeRO-{stage} | " + " | ".join(f"{m:.1f}" for m in mib) + " |")
                print(rows[-1], flush=True)
            ratios[(precision, ranks)] = largest[3] / largest[0]
    lines = [
        "# ZeRO-3 memory per rank at 1, 2 and 4 ranks",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        "ranks under torchrun, gloo, one thread each",
        f"- model: `{args.preset}` preset U-Net, {n / 1e6:.2f} M parameters",
        f"- command: `.venv/bin/python bench/zero_memory.py --preset {args.preset} --ranks "
        + " ".join(map(str, args.ranks))
        + "`",
        "- counted at the peak of the second step (after backward, before the optimizer step): every distinct",
        "  tensor storage held for parameters (their local partitions under ZeRO-3), gradients, optimizer",
        "  states and DeepSpeed's flat buffers (fp32 master partitions, gradient partitions, persistent",
        "  small parameters), on the fullest rank. One rank runs ZeRO-3 as asked (`zero_on_one_rank`).",
        "  bf16 is what the trainer uses on GPUs; it was run here on CPU for the count.",
        "",
        "| precision | ranks | stage | params MiB | grads MiB | optimizer MiB | DeepSpeed buffers MiB | total MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        "| precision | ranks | ZeRO-3 / ZeRO-0 per rank |",
        "|---|---:|---:|",
        *(f"| {p} | {k} | {r:.3f} |" for (p, k), r in ratios.items()),
        "",
        "Target: ZeRO-3 per-rank state at 4 ranks <= 0.30 of ZeRO-0.",
        "",
        "In fp32, ZeRO-3 keeps a separate fp32 master copy of each partition next to the partitioned",
        "parameters themselves, so a rank holds (params + master + grads + 2 Adam moments) / N = 5/(4N) of",
        "plain data parallelism's params + grads + Adam at best: 0.625 at 2 ranks, 0.3125 at 4. With bf16",
        "parameters and gradients the fp32 master is the only fp32 copy and every part is partitioned: 1/N of",
        "ZeRO-0's state at best (0.25 at 4 ranks), plus the small parameters every rank keeps whole.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
