"""Scaled-out ingestion's last step: join the partitions into one dataset, de-duplicated across them,
rewriting only the shards that lose a sample."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any

from photogenic.config import Config, to_dict
from photogenic.data.imaging import NearDuplicateIndex
from photogenic.data.ingest import (
    IngestResult,
    _check_not_empty,
    _counts_line,
    _JsonLines,
    _key_clash,
    _log_result,
    dataset_uri,
    request_fingerprint,
)
from photogenic.data.shards import ShardSink, scratch_dir
from photogenic.data.sources import Source, make_source
from photogenic.manifest import Manifest, ObjectRef, stage_output

log = logging.getLogger(__name__)

__all__ = ["merge_partitions"]


def merge_partitions(
    source: str | Source,
    part_uris: Iterable[str],
    config: Config,
    out: str | None = None,
    run: Any = None,
) -> IngestResult:
    """Join partition datasets (from `ingest(..., partition=...)`) into one dataset, as if ingested at once.

    Partitions are taken in source order. A sample that duplicates (exactly or within
    `data.near_duplicate_distance`) a sample of an earlier partition goes to the duplicates list; one
    whose key an earlier partition already used is quarantined with the reason. Only the shards that
    lose a sample are rewritten; the others are referenced where the partition wrote them.

    Args:
        source: the source the partitions were cut from (it identifies the dataset).
        part_uris: the partitions' manifest URIs (or folders), any order.
        config: the resolved config.
        out: the dataset URI; default the one `partition_plan` chose for this source and count.
        run: an optional tracking Run.

    Returns:
        As `ingest`: input = samples + duplicates + quarantined, over all partitions.
    """
    from photogenic.manifest import manifest_file, read_manifest

    started = time.perf_counter()
    src = source if isinstance(source, Source) else make_source(source, config)
    parts = [read_manifest(manifest_file(u), config.storage) for u in part_uris]
    if not parts:
        raise ValueError("merge_partitions needs at least one partition")
    ranks = [tuple(p.meta.get("source", {}).get("partition") or ()) for p in parts]
    counts_of = {r[1] for r in ranks if len(r) == 2}
    if (
        any(len(r) != 2 for r in ranks)
        or len(counts_of) != 1
        or sorted(r[0] for r in ranks) != list(range(next(iter(counts_of))))
    ):
        raise ValueError(f"partitions {ranks} are not one complete set of partitions 0..n-1 of one source")
    parts = [p for _, p in sorted(zip(ranks, parts, strict=True), key=lambda x: x[0][0])]
    n = len(parts)
    output = stage_output(
        "merge",
        {"merge": [p.fingerprint for p in parts], "of": request_fingerprint(src, config, n)},
        config,
        out or dataset_uri(src, config, n),
        "",
    )
    store, request, manifest_uri, reused = output.store, output.request, output.manifest_uri, output.previous
    out = store.root
    if reused is not None:
        result = IngestResult(manifest_uri, reused.fingerprint, dict(reused.counts), reused=True)
        _log_result(run, result)
        return result

    data = config.data
    exact: dict[str, str] = {}
    near = NearDuplicateIndex(data.near_duplicate_distance) if data.near_duplicate_distance >= 0 else None
    owners: dict[str, tuple[str, str]] = {}  # tar key -> (key, source ref) of its first owner
    drops: list[dict[int, dict[str, dict[str, Any]]]] = []  # per part: shard number -> key -> verdict
    for part in parts:
        part_drops: dict[int, dict[str, dict[str, Any]]] = {}
        for row in _read_jsonl(part, "index", config):
            key, verdict = row["key"], None
            if key in owners:
                verdict = {"quarantine": _key_clash(row.get("source_key", key), key, *owners[key])}
            elif row["sha256"] in exact:
                verdict = {"kind": "exact", "duplicate_of": exact[row["sha256"]], "distance": 0}
            elif near is not None and row["phash"] is not None and (hit := near.find(int(row["phash"], 16))):
                verdict = {"kind": "near", "duplicate_of": hit[0], "distance": hit[1]}
            if verdict is not None:
                part_drops.setdefault(int(row["shard"]), {})[key] = {**verdict, "source_ref": row["ref"]}
                continue
            owners[key] = (row.get("source_key", key), row["ref"])
            exact[row["sha256"]] = key
            if near is not None and row["phash"] is not None:
                near.add(int(row["phash"], 16), key)
        drops.append(part_drops)

    counts = dict.fromkeys(("input", "samples", "duplicates", "quarantined"), 0)
    for part in parts:
        for k in counts:
            counts[k] += int(part.counts.get(k, 0))
    refs: list[ObjectRef] = []
    shards: list[dict[str, Any]] = []
    quarantine_shards: list[dict[str, Any]] = []
    dropped: set[str] = set()
    with scratch_dir("merge") as tmp:
        reasons = _JsonLines("quarantine.jsonl", Path(tmp) / "quarantine.jsonl")
        duplicates = _JsonLines("duplicates.jsonl", Path(tmp) / "duplicates.jsonl")
        oracle = _JsonLines("oracle.jsonl", Path(tmp) / "oracle.jsonl")
        quarantine = ShardSink(store, "quarantine", data.shard_max_samples, data.shard_max_bytes, name="merge")
        for i, (part, part_drops) in enumerate(zip(parts, drops, strict=True)):
            prefix = _relative(part.root, out)
            for s, entry in enumerate(part.meta.get("shards", [])):
                ref = part.ref(entry["key"])
                verdicts = part_drops.get(s)
                if not verdicts:  # untouched: keep the partition's object
                    refs.append(dataclasses_replace(ref, key=f"{prefix}/{ref.key}"))
                    shards.append({"key": f"{prefix}/{ref.key}", "samples": entry["samples"]})
                    continue
                stem = Path(ref.key).stem
                with ShardSink(store, f"merged/{i:04d}", data.shard_max_samples, 1 << 62, name=stem) as kept:
                    _rewrite_shard(part, ref, verdicts, config, kept, quarantine, reasons, duplicates)
                kept_count = sum(x.samples for x in kept.shards)
                for info in kept.shards:
                    refs.append(info.ref)
                    shards.append({"key": info.ref.key, "samples": info.samples})
                n_dropped = entry["samples"] - kept_count
                dropped.update(verdicts)
                n_quarantined = sum(1 for v in verdicts.values() if "quarantine" in v)
                counts["samples"] -= n_dropped
                counts["quarantined"] += n_quarantined
                counts["duplicates"] += n_dropped - n_quarantined
            for entry in part.meta.get("quarantine", []):
                ref = part.ref(entry["key"])
                refs.append(dataclasses_replace(ref, key=f"{prefix}/{ref.key}"))
                quarantine_shards.append({"key": f"{prefix}/{ref.key}", "samples": entry["samples"]})
            for row in _read_jsonl(part, "quarantine", config):
                reasons.write(row)
            for row in _read_jsonl(part, "duplicates", config):
                duplicates.write(row)
            for row in _read_jsonl(part, "oracle", config):
                if row["key"] not in dropped:
                    oracle.write(row)
        quarantine.close()
        for info in quarantine.shards:
            refs.append(info.ref)
            quarantine_shards.append({"key": info.ref.key, "samples": info.samples})
        sidecars = {}
        for sidecar in (reasons, duplicates, oracle):
            ref = sidecar.upload(store)
            if ref is not None:
                refs.append(ref)
                sidecars[sidecar.name.split(".")[0]] = ref.key
    manifest = Manifest(
        kind="dataset",
        root=store.root,
        objects=refs,
        counts=counts,
        config=to_dict(config),
        meta={
            "stage": "ingest",
            "request": request,
            "source": {**src.description(), "partitions": n},
            "parts": [p.fingerprint for p in parts],
            "shards": shards,
            "quarantine": quarantine_shards,
            "sidecars": sidecars,
        },
    )
    _check_not_empty(manifest, src, store, [])
    output.publish(manifest)
    assert counts["input"] == counts["samples"] + counts["duplicates"] + counts["quarantined"], counts
    result = IngestResult(manifest_uri, manifest.fingerprint, counts, seconds=time.perf_counter() - started)
    log.info(
        "ingest: merged %d partitions: %s; dataset %s at %s", n, _counts_line(counts), manifest.fingerprint[:12], out
    )
    _log_result(run, result)
    return result


def _rewrite_shard(
    part: Manifest,
    ref: ObjectRef,
    verdicts: dict[str, dict[str, Any]],
    config: Config,
    kept: ShardSink,
    quarantine: ShardSink,
    reasons: _JsonLines,
    duplicates: _JsonLines,
) -> None:
    """Copy one shard of a partition without the samples that `verdicts` drops (as duplicates or to quarantine)."""
    from photogenic.data.shards import iter_shard

    with part.open(ref, config.storage) as f:
        for sample in iter_shard(f, part.uri(ref)):
            verdict = verdicts.get(sample["__key__"])
            sample = {k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}
            if verdict is None:
                kept.write(sample)
            elif "quarantine" in verdict:
                quarantine.write({**sample, "json": _with_reason(sample, verdict["quarantine"])})
                reason = {"reasons": [verdict["quarantine"]], "stage": "ingest"}
                reasons.write({"key": sample["__key__"], "source_ref": verdict["source_ref"], **reason})
            else:
                duplicates.write({"key": sample["__key__"], **verdict})


def _read_jsonl(manifest: Manifest, sidecar: str, config: Config) -> Iterator[dict[str, Any]]:
    key = manifest.meta.get("sidecars", {}).get(sidecar)
    if not key:
        return
    with manifest.open(key, config.storage) as f:
        for line in io.TextIOWrapper(f, encoding="utf-8"):
            if line.strip():
                yield json.loads(line)


def _relative(root: str, base: str) -> str:
    if not root.startswith(base.rstrip("/") + "/"):
        raise ValueError(f"partition {root} is not inside the dataset {base}")
    return root[len(base.rstrip("/")) + 1 :].rstrip("/")


def _with_reason(sample: dict[str, Any], reason: str) -> dict[str, Any]:
    meta = json.loads(sample.get("json") or b"{}")
    return {**meta, "reasons": [*meta.get("reasons", []), reason]}
