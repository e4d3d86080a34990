"""How fast the ground-truth panel explains images, on one core and over worker processes, in one run.

    .venv/bin/python bench/panel_explain.py [--images 768] [--workers 2] [--repeats 2]

Writes bench/results/panel_explain.md. The images are renders of the haystack world (mixed quality, as
the demo's ingestion draws them), not generated images. The explanations' digest lets two checkouts be
compared: run this file with `PYTHONPATH=<other checkout>/src` (a checkout whose `explain_all` takes no
workers times one process only) and compare the digests: the same digest, the same explanations.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from photogenic import panel
from photogenic.config import load_config
from photogenic.world import render_scene, scene_at

DEMO_IMAGES = 1_536  # the demo's evaluation: 96 test prompts x 8 seeds x 2 models


def _digest(found: list[panel.Explanation]) -> str:
    return hashlib.sha256(repr(found).encode()).hexdigest()[:16]


def _commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"],
        cwd=Path(panel.__file__).parent,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "panel_explain.md"))
    args = parser.parse_args()

    config = load_config(preset="demo")
    images = [render_scene(scene_at(config.world, i), config.world.image_size) for i in range(args.images)]
    takes_workers = "workers" in inspect.signature(panel.explain_all).parameters
    sides = [1, args.workers] if takes_workers and args.workers > 1 else [1]
    times: dict[int, list[float]] = {w: [] for w in sides}
    digests = set()
    for _ in range(args.repeats):
        for workers in sides:  # taking turns, so a slower minute of the machine hits both
            kwargs = {"workers": workers} if takes_workers else {}
            started = time.perf_counter()
            found = panel.explain_all(images, config.panel, **kwargs)
            times[workers].append(time.perf_counter() - started)
            digests.add(_digest(found))
    if len(digests) != 1:
        raise SystemExit(f"the explanations differ between runs or worker counts: {sorted(digests)}")

    lines = [
        "# The panel explaining images",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs; code {_commit()}",
        f"- images: {args.images} renders of the demo's haystack world ({config.world.image_size} px, mixed quality)",
        f"- command: `.venv/bin/python bench/panel_explain.py --images {args.images} --workers {args.workers} "
        f"--repeats {args.repeats}`",
        f"- explanations' digest: `{digests.pop()}` (the same for every run and worker count)",
        "- each figure: the fastest of the repeats",
        "",
        "| worker processes | ms per image | the demo's 1,536 images (s) |",
        "|---:|---:|---:|",
    ]
    for workers, seconds in times.items():
        per_image = min(seconds) / args.images
        lines.append(f"| {workers} | {per_image * 1e3:.1f} | {per_image * DEMO_IMAGES:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
