"""Ingestion: any source into versioned webdataset tar shards, de-duplicated, with nothing silently dropped."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

from photogenic.config import Config, fingerprint, to_dict
from photogenic.data.imaging import NearDuplicateIndex, inspect_image
from photogenic.data.shards import ShardSink, TarSample, scratch_dir, tar_sample
from photogenic.data.sources import Chunk, RawRecord, Source, SourceError, load_chunk, make_source
from photogenic.manifest import SCHEMA_VERSION, Manifest, ObjectRef, stage_output
from photogenic.progress import Progress
from photogenic.storage import Store, join_uri, open_store

__all__ = [
    "ingest",
    "partition_plan",
    "IngestResult",
    "tar_key",
    "EmptyDatasetError",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

_INGEST_VERSION = 2  # bump when the shard layout changes, so old outputs are not reused
_EXT_OF_FORMAT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif"}


@dataclass(frozen=True)
class IngestResult:
    """What ingestion produced: the dataset manifest's URI, its version, counts, and whether it was reused."""

    manifest_uri: str
    fingerprint: str
    counts: dict[str, int]
    reused: bool = False
    seconds: float = 0.0
    bytes_in: int = 0


@dataclass
class Prepared:
    """A raw record plus what a worker learnt about its image (and its oracle line, pre-encoded)."""

    record: RawRecord
    info: dict[str, Any]
    phash: int | None
    key: str = ""  # the tar key
    meta: dict[str, Any] = field(default_factory=dict)
    oracle_json: str | None = None
    members: TarSample | None = None  # the sample's tar members, built off the single consumer process


def _prepare_chunk(chunk: Chunk) -> list[Prepared]:
    out = []
    for record in load_chunk(chunk):
        info, phash = inspect_image(record.image)
        key = tar_key(record.key)
        ext = _EXT_OF_FORMAT.get(info.get("format", ""), _source_ext(record.image_name))
        meta = {"key": record.key, "source_ref": record.source_ref, **info, "image_member": ext}
        if record.extra:
            meta["extra"] = record.extra
        # JSON and tar members are made here, in the workers: the single consumer process is the bottleneck.
        meta_json = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
        oracle_json = None
        if record.oracle is not None:
            oracle_json = json.dumps({"key": key, **record.oracle}, sort_keys=True)
            record.oracle = None
        members = None
        if key and not record.problem:  # what the consumer writes unless it finds a duplicate or a key clash
            members = tar_sample({"__key__": key, ext: record.image, "txt": record.caption or b"", "json": meta_json})
        out.append(Prepared(record, info, phash, key, meta, oracle_json, members))
    return out


_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


def tar_key(key: str) -> str:
    """A key safe for webdataset (no dots, no slashes): other characters become `_`."""
    return _KEY_CHARS.sub("_", key)


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int, window: int = 0) -> Iterator[R]:
    """`map` over a process pool with at most `window` tasks in flight, results in input order."""
    if workers <= 1:
        yield from map(fn, items)
        return
    window = window or 4 * workers  # enough queued work to ride out a stall in the consumer
    pool_args = {"mp_context": get_context("fork"), "initializer": _die_with_parent, "initargs": (os.getpid(),)}
    with ProcessPoolExecutor(workers, **pool_args) as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _die_with_parent(parent: int) -> None:
    """Make a pool worker end with the process that started it, even one killed with SIGKILL.

    A killed parent runs no clean-up, and its workers would wait on their task queue forever, holding
    memory. Linux delivers SIGKILL to the worker when its parent dies (PR_SET_PDEATHSIG); elsewhere a
    thread watches the parent's pid.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    else:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="photogenic-parent-watch").start()
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)


@dataclass
class _JsonLines:
    """A JSONL sidecar built in a local temporary file and uploaded at the end."""

    name: str
    path: Path
    count: int = 0
    _file: Any = None

    def write(self, row: dict[str, Any] | str) -> None:
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        line = row if isinstance(row, str) else json.dumps(row, sort_keys=True, ensure_ascii=False)
        self._file.write(line + "\n")
        self.count += 1

    def upload(self, store: Store) -> ObjectRef | None:
        if self._file is None:
            return None
        self._file.close()
        return ObjectRef.of(store.put_file(self.name, self.path))


@dataclass
class _Ingestor:
    config: Config
    store: Store
    tmp: Path
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("input", "samples", "duplicates", "quarantined"), 0)
    )
    bytes_in: int = 0
    partitioned: bool = False
    first_reasons: list[str] = field(default_factory=list)  # for the error when nothing is left

    def __post_init__(self) -> None:
        data = self.config.data
        self.samples = ShardSink(self.store, "shards", data.shard_max_samples, data.shard_max_bytes)
        self.quarantine = ShardSink(
            self.store, "quarantine", data.shard_max_samples, data.shard_max_bytes, name="ingest"
        )
        self.reasons = _JsonLines("quarantine.jsonl", self.tmp / "quarantine.jsonl")
        self.duplicates = _JsonLines("duplicates.jsonl", self.tmp / "duplicates.jsonl")
        self.oracle = _JsonLines("oracle.jsonl", self.tmp / "oracle.jsonl")
        # A partition also lists each kept sample's hashes and shard, for the cross-partition merge.
        self.index = _JsonLines("index.jsonl", self.tmp / "index.jsonl") if self.partitioned else None
        self.keys: dict[str, tuple[str, str]] = {}  # tar key -> (key, source ref) of its first owner
        self.exact: dict[str, str] = {}  # sha256 -> key
        self.near = NearDuplicateIndex(data.near_duplicate_distance) if data.near_duplicate_distance >= 0 else None

    def add(self, item: Prepared) -> None:
        record, key = item.record, item.key
        self.counts["input"] += 1
        self.bytes_in += len(record.image or b"")
        if record.problem:
            return self._quarantine(key, record, item.meta, [record.problem])
        if not key:
            return self._quarantine(record.source_ref, record, item.meta, ["the sample has no key"])
        if key in self.keys:
            reason = _key_clash(record.key, key, *self.keys[key])
            return self._quarantine(f"{key}__dup{self.counts['input']}", record, item.meta, [reason])
        self.keys[key] = (record.key, record.source_ref)
        if item.info.get("decodable") and self._is_duplicate(key, item):
            return
        assert item.members is not None
        self.samples.append(item.members)
        if item.oracle_json is not None:
            self.oracle.write(item.oracle_json)
        if self.index is not None:
            # The sample is in the shard being written; finished shards were appended before it.
            shard = len(self.samples.shards)
            phash = None if item.phash is None else format(item.phash, "x")
            self.index.write(
                {
                    "key": key,
                    "source_key": record.key,
                    "sha256": item.info.get("sha256"),
                    "phash": phash,
                    "shard": shard,
                    "ref": record.source_ref,
                }
            )
        self.counts["samples"] += 1

    def _is_duplicate(self, key: str, item: Prepared) -> bool:
        sha = item.info["sha256"]
        if sha in self.exact:
            self.duplicates.write(
                {
                    "key": key,
                    "duplicate_of": self.exact[sha],
                    "kind": "exact",
                    "distance": 0,
                    "source_ref": item.record.source_ref,
                }
            )
            self.counts["duplicates"] += 1
            return True
        self.exact[sha] = key
        if self.near is not None and item.phash is not None:
            hit = self.near.find(item.phash)
            if hit is not None:
                self.duplicates.write(
                    {
                        "key": key,
                        "duplicate_of": hit[0],
                        "kind": "near",
                        "distance": hit[1],
                        "source_ref": item.record.source_ref,
                    }
                )
                self.counts["duplicates"] += 1
                return True
            self.near.add(item.phash, key)
        return False

    def _quarantine(self, key: str, record: RawRecord, meta: dict[str, Any], reasons: list[str]) -> None:
        sample: dict[str, Any] = {
            "__key__": tar_key(key) or f"row{self.counts['input']}",
            "json": {**meta, "reasons": reasons},
        }
        if record.image is not None:
            sample[_source_ext(record.image_name)] = record.image
        if record.caption is not None:
            sample["txt"] = record.caption
        self.quarantine.write(sample)
        self.reasons.write({"key": record.key, "source_ref": record.source_ref, "reasons": reasons, "stage": "ingest"})
        if len(self.first_reasons) < 3:
            self.first_reasons.append(f"{record.key}: {'; '.join(reasons)}")
        self.counts["quarantined"] += 1

    def finish(self, source: Source, request: str) -> Manifest:
        self.samples.close()
        self.quarantine.close()
        refs = [s.ref for s in self.samples.shards] + [s.ref for s in self.quarantine.shards]
        sidecars = {}
        for sidecar in (self.reasons, self.duplicates, self.oracle, self.index):
            if sidecar is None:
                continue
            ref = sidecar.upload(self.store)
            if ref is not None:
                refs.append(ref)
                sidecars[sidecar.name.split(".")[0]] = ref.key
        return Manifest(
            kind="dataset",
            root=self.store.root,
            objects=refs,
            counts=dict(self.counts),
            config=to_dict(self.config),
            meta={
                "stage": "ingest",
                "request": request,
                "source": source.description(),
                "shards": [{"key": s.ref.key, "samples": s.samples} for s in self.samples.shards],
                "quarantine": [{"key": s.ref.key, "samples": s.samples} for s in self.quarantine.shards],
                "sidecars": sidecars,
            },
        )


def _key_clash(key: str, tar: str, first_key: str, first_ref: str) -> str:
    """Why a sample's key cannot be used: the same key again, or another key with the same tar name."""
    if key == first_key:
        return f"duplicate key {key!r}: first seen at {first_ref}"
    return (
        f"key {key!r} and key {first_key!r} (first seen at {first_ref}) both become the tar key {tar!r} "
        "(characters other than letters, digits, '_' and '-' become '_')"
    )


def _source_ext(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if ext in ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff") else "bin"


def request_fingerprint(source: Source, config: Config, partitions: int = 1) -> str:
    """Same input and same ingestion settings: same fingerprint, and the earlier output is reused."""
    data = config.data
    settings = {
        "shard_max_samples": data.shard_max_samples,
        "shard_max_bytes": data.shard_max_bytes,
        "near_duplicate_distance": data.near_duplicate_distance,
    }
    request = {"source": source.description(), "data": settings, "schema": SCHEMA_VERSION, "v": _INGEST_VERSION}
    if partitions > 1:  # a partitioned ingest lays out its shards differently
        request["partitions"] = partitions
    return fingerprint(request)


@dataclass
class PartitionSource(Source):
    """One contiguous block of another source's chunks: partition `index` of `of`."""

    source: Source
    index: int
    of: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.of:
            raise ValueError(f"partition {self.index} of {self.of} does not exist")
        self.kind = self.source.kind

    def _describe(self) -> dict[str, Any]:
        return {**self.source.description(), "partition": [self.index, self.of]}

    def chunks(self) -> Iterator[Chunk]:
        chunks = list(self.source.chunks())  # payloads are small: row ranges, file lists
        lo, hi = len(chunks) * self.index // self.of, len(chunks) * (self.index + 1) // self.of
        yield from chunks[lo:hi]


def dataset_uri(source: str | Source, config: Config, partitions: int = 1) -> str:
    """Where ingesting `source` publishes by default: `<store>/datasets/ingest-<request fingerprint>`."""
    src = source if isinstance(source, Source) else make_source(source, config)
    request = request_fingerprint(src, config, partitions)
    return open_store(join_uri(config.store_root(), "datasets", f"ingest-{request[:16]}"), config.storage).root


def partition_plan(source: str, config: Config, partitions: int) -> list[dict[str, Any]]:
    """The partitions a scaled-out ingestion runs in parallel, as small JSON-able dicts.

    Args:
        source: the source spec (see `ingest`).
        config: the resolved config.
        partitions: how many; capped at the source's number of chunks (256 rows each).

    Returns:
        One `{"index", "count", "out"}` per partition; `out` is the partition's dataset URI.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    src = make_source(source, config)
    n = max(1, min(partitions, sum(1 for _ in src.chunks())))
    root = dataset_uri(src, config, n)
    return [{"index": i, "count": n, "out": join_uri(root, "parts", f"{i:04d}-of-{n:04d}")} for i in range(n)]


def ingest(
    source: str | Source,
    config: Config,
    out: str | None = None,
    run: Any = None,
    progress: bool = True,
    partition: tuple[int, int] | None = None,
) -> IngestResult:
    """Ingest a source into tar shards under `out` and publish a dataset manifest.

    Args:
        source: `world`, a captions table URI (.jsonl/.csv/.parquet with key, caption, image), a tar
            shard URI or prefix, or a Source.
        config: the resolved config (`world` for the world source, `data` for shards and dedup).
        out: dataset URI; default `<store root>/datasets/ingest-<request fingerprint>`.
        run: an optional tracking Run for counts and throughput.
        progress: log a progress line every few seconds (`photogenic.progress`).
        partition: `(index, count)`: ingest only that block of the source's chunks, de-duplicated
            within it and listing each sample's hashes for `merge_partitions` (default out:
            `<the whole dataset's URI>/parts/<index>-of-<count>`).

    Returns:
        The manifest's URI, the dataset version (content fingerprint) and the counts:
        input = samples + duplicates + quarantined.
    """
    started = time.perf_counter()
    src = source if isinstance(source, Source) else make_source(source, config)
    if partition is not None:
        index, count = partition
        out = out or join_uri(dataset_uri(src, config, count), "parts", f"{index:04d}-of-{count:04d}")
        src = PartitionSource(src, index, count)
    output = stage_output("ingest", request_fingerprint(src, config), config, out, "datasets/ingest-{request}")
    store, request, manifest_uri, reused = output.store, output.request, output.manifest_uri, output.previous
    out = store.root  # absolute: other processes read it
    if reused is not None:
        result = IngestResult(manifest_uri, reused.fingerprint, dict(reused.counts), reused=True)
        _log_result(run, result)
        return result

    what = "ingest" if partition is None else f"ingest partition {partition[0] + 1}/{partition[1]}"
    with scratch_dir("ingest") as tmp:
        ingestor = _Ingestor(config, store, Path(tmp), partitioned=partition is not None)
        bar = Progress(what, src.count(), "image", enabled=progress)
        try:
            for prepared in bounded_map(_prepare_chunk, src.chunks(), config.data.workers):
                for item in prepared:
                    ingestor.add(item)
                bar.update(len(prepared))
        except BaseException:
            ingestor.samples.close(upload=False)
            ingestor.quarantine.close(upload=False)
            raise
        bar.close()
        manifest = ingestor.finish(src, request)
    if partition is None:  # a partition may hold only orphans: the merge checks the whole
        _check_not_empty(manifest, src, store, ingestor.first_reasons)
    output.publish(manifest)
    counts = dict(manifest.counts)
    assert counts["input"] == counts["samples"] + counts["duplicates"] + counts["quarantined"], counts
    result = IngestResult(
        manifest_uri, manifest.fingerprint, counts, seconds=time.perf_counter() - started, bytes_in=ingestor.bytes_in
    )
    log.info(
        "ingest: %s; dataset %s at %s (%.1fs)", _counts_line(counts), manifest.fingerprint[:12], out, result.seconds
    )
    _log_result(run, result)
    return result


class EmptyDatasetError(SourceError):
    """Ingestion ended with no sample: a dataset of nothing is never published."""


def _check_not_empty(manifest: Manifest, source: Source, store: Store, first_reasons: list[str]) -> None:
    """Fail, naming the source, the counts and the first reasons, when ingestion kept no sample.

    The shards and the quarantine list stay where they were written (under the dataset's folder, with
    no manifest), so the user can read every reason; nothing downstream can take them for a dataset.
    """
    counts = manifest.counts
    if counts["samples"] > 0:
        return
    where = source.description().get("uri") or source.kind
    if counts["input"] == 0:
        raise EmptyDatasetError(f"ingestion of {where} found no rows at all: nothing to ingest")
    message = f"ingestion of {where} kept no sample: {_counts_line(counts)}"
    if counts["quarantined"]:
        message += f"; every reason is in {store.uri('quarantine.jsonl')}"
    if first_reasons:
        message += "; the first reasons:" + "".join(f"\n  {r}" for r in first_reasons)
    raise EmptyDatasetError(message)


def _counts_line(counts: dict[str, int]) -> str:
    return (
        f"{counts['input']} in -> {counts['samples']} samples, {counts['duplicates']} duplicates, "
        f"{counts['quarantined']} quarantined"
    )


def _log_result(run: Any, result: IngestResult) -> None:
    if run is None:
        return
    metrics: dict[str, float] = {f"ingest/{k}": v for k, v in result.counts.items()}
    if result.seconds > 0:
        metrics["ingest/images_per_s"] = result.counts["input"] / result.seconds
        metrics["ingest/mb_per_s"] = result.bytes_in / 2**20 / result.seconds
    run.log_metrics(metrics)
    run.set_tags({"photogenic.dataset.raw": result.fingerprint, "photogenic.dataset.raw_uri": result.manifest_uri})
