"""Training throughput with another process busy on one core, against the idle machine, in one run.

    .venv/bin/python bench/contention.py [--preset demo] [--recipe pretrain] [--steps 150]

Four runs of the same recipe, each from scratch: idle and busy (a second process spinning on one core),
each with the trainer's adaptive thread count (`train.adapt_threads=true`) and with a thread on every CPU,
fixed (`train.cpu_threads=<CPUs>`: the default count, and the default since adapting made runs' bits follow
the load). Throughput is samples per
second of the training steps (the first 5 left out), build and export excluded.
Writes bench/results/contention.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from photogenic.config import load_config
from photogenic.train.diffusion import DiffusionTrainer
from photogenic.train.threads import available_cpus

sys.path.insert(0, str(Path(__file__).parent))
from trainer_step import add_input_arguments, bench_overrides, inputs  # noqa: E402


def run(preset: str, overrides: list[str], recipe: str, data: str, base: str, out: Path) -> tuple[float, list[int]]:
    """Samples/s of the steps after the first 5, and the thread count of every step."""
    times: list[float] = []
    counts: list[int] = []

    class Timed(DiffusionTrainer):
        def train_step(self, step: int) -> float:
            counts.append(torch.get_num_threads())
            start = time.perf_counter()
            loss = super().train_step(step)
            times.append(time.perf_counter() - start)
            return loss

    shutil.rmtree(out, ignore_errors=True)
    config = load_config(preset, overrides=overrides)
    Timed(config=config, data_uri=data, out=str(out), base=base, progress=False, recipe=recipe).train()
    batch = getattr(config.train, recipe).global_batch_size
    return batch * len(times[5:]) / sum(times[5:]), counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_input_arguments(parser)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "contention.md"))
    args = parser.parse_args()

    base_overrides = bench_overrides(args)
    data, base = inputs(args.preset, base_overrides, args.recipe)
    cpus = available_cpus()
    settings = [
        f"train.{args.recipe}.steps={args.steps}",
        f"train.{args.recipe}.checkpoint_every=0",
        f"train.{args.recipe}.sample_every=0",
        f"train.{args.recipe}.validate_every=0",
    ]
    rows = []
    for load in ("idle", "busy"):
        for adapt in (True, False):
            spinner = None
            if load == "busy":
                spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(1)
            try:
                threads = f"train.adapt_threads={str(adapt).lower()}"
                overrides = [*base_overrides, *settings, f"train.cpu_threads={cpus}", threads]
                out = Path(args.workspace, "contention", f"{load}-{'adaptive' if adapt else 'fixed'}")
                rate, counts = run(args.preset, overrides, args.recipe, data, base, out)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            mix = ", ".join(f"{n}: {counts.count(n)}" for n in sorted(set(counts), reverse=True))
            rows.append((load, adapt, rate, mix))
            print(rows[-1], flush=True)
    idle = {t: r for load, t, r, _ in rows if load == "idle"}
    label = {True: "adaptive (`adapt_threads=true`)", False: f"fixed at {cpus} (the default)"}
    lines = [
        "# Training throughput with a competing process",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpus} available), torch {torch.__version__}",
        f"- recipe: `{args.recipe}` on the `{args.preset}` preset, {args.steps} steps from scratch per row; "
        "throughput over the steps after the first 5",
        "- busy: a second process spinning (`while True: pass`) for the whole run, which the OS gives one core",
        f"- command: `.venv/bin/python bench/contention.py --preset {args.preset} --recipe {args.recipe} "
        f"--steps {args.steps}`",
        "",
        "| machine | threads | samples/s | vs idle, same threads | vs idle, fixed | steps per thread count |",
        "|---|---|---:|---:|---:|---|",
        *(
            f"| {load} | {label[t]} | {rate:.1f} | {rate / idle[t]:.2f} | {rate / idle[False]:.2f} | {mix} |"
            for load, t, rate, mix in rows
        ),
        "",
        "Target: busy throughput >= 0.5 x idle throughput.",
        "",
        "Reading: with two threads, every parallel region waits for the thread that shares its core with the",
        "spinning process; one thread on the free core does not wait. The adaptive trainer starts with every",
        "CPU, probes half the threads for 4 steps at step 20 (and on any 25% slowdown), keeps the faster",
        "count, and probes again at doubling intervals. On an idle machine those probes are its whole cost;",
        "the two idle rows differ by more than that, which is this machine's run-to-run noise (about 10%).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
