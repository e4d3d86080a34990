"""Ingest throughput against the raw render-and-encode loop of the same world images, in one run.

    .venv/bin/python bench/ingest.py [--samples 5000] [--workers 2] [--repeats 2]

Writes bench/results/ingest.md. Both sides use the same worker processes; "raw" renders and
PNG-encodes each image and nothing else, "ingest" is the whole stage (render, decode check,
sha256, perceptual hash, de-duplication, tar shards, store writes, manifest).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from photogenic.config import WorldConfig, load_config
from photogenic.data.ingest import bounded_map, ingest
from photogenic.world import iter_world


def _raw_chunk(args: tuple[WorldConfig, int, int]) -> tuple[int, int]:
    world, start, stop = args
    n = size = 0
    for sample in iter_world(world, start, stop):
        n, size = n + 1, size + len(sample.image)
    return n, size


def raw_loop(world: WorldConfig, workers: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    chunks = [(world, s, min(s + 256, world.num_samples)) for s in range(0, world.num_samples, 256)]
    n = size = 0
    for done, nbytes in bounded_map(_raw_chunk, chunks, workers):
        n, size = n + done, size + nbytes
    return time.perf_counter() - started, n, size


def ingest_run(samples: int, workers: int, root: Path) -> tuple[float, int, int]:
    config = load_config(
        "demo",
        overrides=[f"workspace={root}", f"world.num_samples={samples}", f"data.workers={workers}", "world.seed=11"],
    )
    started = time.perf_counter()
    result = ingest("world", config, out=str(root / f"ds-{time.monotonic_ns()}"), progress=False)
    return time.perf_counter() - started, result.counts["input"], result.bytes_in


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.md"))
    args = parser.parse_args()

    world = load_config("demo", overrides=[f"world.num_samples={args.samples}", "world.seed=11"]).world
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for name in ("raw", "ingest"):  # interleaved, so drift hits both sides
                if name == "raw":
                    seconds, n, size = raw_loop(world, args.workers)
                else:
                    seconds, n, size = ingest_run(args.samples, args.workers, Path(tmp))
                rows.append((rep, name, seconds, n, size))
                print(
                    f"rep {rep} {name:6s} {n / seconds:8.1f} img/s  "
                    f"{size / 2**20 / seconds:6.2f} MB/s  ({seconds:.1f}s)"
                )

    def best(name: str) -> tuple[float, float]:
        runs = [(n / s, size / 2**20 / s) for _, nm, s, n, size in rows if nm == name]
        return max(r[0] for r in runs), max(r[1] for r in runs)

    raw_ips, raw_mbs = best("raw")
    ing_ips, ing_mbs = best("ingest")
    # Each repeat runs raw then ingest back to back; the ratio within a pair cancels the drift of a
    # shared machine, and the median of the pairs is the headline.
    pairs = []
    for rep in range(args.repeats):
        (raw_s, raw_n), (ing_s, ing_n) = [
            (s, n) for r, nm, s, n, _ in sorted(rows, key=lambda r: r[1] != "raw") if r == rep
        ]
        pairs.append((ing_n / ing_s) / (raw_n / raw_s))
    ratio = statistics.median(pairs)
    lines = [
        "# Ingest throughput",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- samples: {args.samples} world images ({world.image_size} px PNG), "
        f"workers: {args.workers}, repeats: {args.repeats}",
        "- command: `.venv/bin/python bench/ingest.py "
        + f"--samples {args.samples} --workers {args.workers} --repeats {args.repeats}`",
        "",
        "| run | side | images/s | MB/s | seconds |",
        "|---|---|---:|---:|---:|",
        *(f"| {r} | {nm} | {n / s:.1f} | {size / 2**20 / s:.2f} | {s:.1f} |" for r, nm, s, n, size in rows),
        "",
        f"Best of each side: raw {raw_ips:.1f} img/s ({raw_mbs:.2f} MB/s), "
        f"ingest {ing_ips:.1f} img/s ({ing_mbs:.2f} MB/s); ratio of the bests {ing_ips / raw_ips:.2f}.",
        f"Ratio within each back-to-back pair: {', '.join(f'{p:.2f}' for p in pairs)}.",
        "",
        f"**ingest / raw = {ratio:.2f}** (median of the pairs; target >= 0.80: {'met' if ratio >= 0.8 else 'NOT met'})",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print(f"ingest / raw = {ratio:.2f}; written to {args.out}")


if __name__ == "__main__":
    main()
