"""What content-keyed reuse costs a folder source: the request fingerprint against the whole ingestion.

    .venv/bin/python bench/ingest_table.py [--samples 20000] [--workers 2] [--repeats 2]

Writes bench/results/ingest_table.md. The folder holds world images (PNG) and a JSONL captions
table. "fingerprint" is `TableSource.description()`: the sha256 of the table and of every file
under the folder, read through the confined reader's rules (links and special files unread);
"ingest" is the whole stage on a fresh source object (it computes the same fingerprint once, then
reads, checks, de-duplicates and writes every image); "reuse" is a second call that finds the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from photogenic.config import load_config
from photogenic.data.ingest import ingest
from photogenic.data.sources import make_source
from photogenic.world import iter_world


def write_folder(root: Path, samples: int) -> Path:
    world = load_config("demo", overrides=[f"world.num_samples={samples}", "world.seed=13"]).world
    (root / "img").mkdir(parents=True)
    with open(root / "captions.jsonl", "w") as table:
        for s in iter_world(world):
            (root / "img" / f"{s.key}.png").write_bytes(s.image)
            table.write(json.dumps({"key": s.key, "caption": s.caption, "image": f"img/{s.key}.png"}) + "\n")
    return root / "captions.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest_table.md"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="photogenic-bench-") as tmp:
        table = write_folder(Path(tmp, "src"), args.samples)
        size = sum(p.stat().st_size for p in Path(tmp, "src").rglob("*") if p.is_file())
        for run in range(args.repeats):
            config = load_config(
                "demo",
                overrides=[f"workspace={tmp}/ws{run}", f"data.workers={args.workers}", "data.max_failed_fraction=1"],
            )
            started = time.perf_counter()
            make_source(str(table), config).description()
            fingerprint_s = time.perf_counter() - started
            started = time.perf_counter()
            result = ingest(str(table), config, progress=False)
            ingest_s = time.perf_counter() - started
            started = time.perf_counter()
            assert ingest(str(table), config, progress=False).reused
            reuse_s = time.perf_counter() - started
            rows.append((run, fingerprint_s, ingest_s, reuse_s, result.counts["input"]))
    lines = [
        "# Folder-source ingestion: the cost of content-keyed reuse",
        "",
        f"- date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- source: {args.samples} world images (PNG, {size / 2**20:.1f} MiB with the table) and a JSONL table,"
        f" local disk; workers: {args.workers}, repeats: {args.repeats}",
        f"- command: `.venv/bin/python bench/ingest_table.py --samples {args.samples} --workers {args.workers}"
        f" --repeats {args.repeats}`",
        "",
        "| run | fingerprint s | whole ingest s | fingerprint share | reuse s |",
        "|---|---:|---:|---:|---:|",
    ]
    for run, fp, whole, reuse, _ in rows:
        lines.append(f"| {run} | {fp:.2f} | {whole:.2f} | {fp / whole:.1%} | {reuse:.2f} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
