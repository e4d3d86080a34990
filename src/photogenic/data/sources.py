"""Where ingestion reads from: the toy world, a folder or S3 prefix with a captions table, or existing tar shards.

A source hands out small, picklable chunks; a worker process turns one chunk into raw records.
Only chunk descriptors travel through the main process, so memory stays bounded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from photogenic.config import StorageConfig, WorldConfig
from photogenic.storage import ObjectNotFoundError, StoreError, join_uri, open_store, split_parent

__all__ = ["RawRecord", "Chunk", "Source", "WorldSource", "TableSource", "ShardSource", "make_source", "SourceError"]

_CHUNK_ROWS = 256
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")


class SourceError(StoreError):
    """A source cannot be read at all (as opposed to one bad row, which is quarantined)."""


@dataclass
class RawRecord:
    """One input sample before any checks. `problem` says why it cannot become a sample, if so."""

    key: str
    image: bytes | None
    caption: bytes | None
    source_ref: str
    image_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    oracle: dict[str, Any] | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Chunk:
    """A small, picklable unit of work."""

    kind: str
    index: int
    payload: Any
    storage: StorageConfig


class Source:
    """Base class: `description` identifies the input, `chunks()` splits it, `load()` reads one chunk."""

    kind = ""

    def description(self) -> dict[str, Any]:
        raise NotImplementedError

    def count(self) -> int | None:
        return None

    def chunks(self) -> Iterator[Chunk]:
        raise NotImplementedError


def load_chunk(chunk: Chunk) -> list[RawRecord]:
    """Read one chunk into raw records (runs in a worker process)."""
    return _LOADERS[chunk.kind](chunk)


# --------------------------------------------------------------------------------------------- world


@dataclass
class WorldSource(Source):
    """The generated toy world (its oracle verdicts travel beside, never inside, the samples)."""

    world: WorldConfig
    storage: StorageConfig
    kind = "world"

    def description(self) -> dict[str, Any]:
        from photogenic.config import to_dict
        from photogenic.world import WORLD_VERSION

        return {"kind": "world", "world": to_dict(self.world), "renderer": WORLD_VERSION}

    def count(self) -> int:
        return self.world.num_samples

    def chunks(self) -> Iterator[Chunk]:
        for i, start in enumerate(range(0, self.world.num_samples, _CHUNK_ROWS)):
            stop = min(start + _CHUNK_ROWS, self.world.num_samples)
            yield Chunk("world", i, (self.world, start, stop), self.storage)


def _load_world(chunk: Chunk) -> list[RawRecord]:
    from photogenic.world import iter_world

    world, start, stop = chunk.payload
    return [
        RawRecord(
            key=s.key,
            image=s.image,
            caption=s.caption.encode(),
            source_ref=f"world:{world.seed}/{s.index}",
            image_name=f"{s.key}.png",
            oracle=s.oracle,
        )
        for s in iter_world(world, start, stop)
    ]


# --------------------------------------------------------------------------------------------- table


@dataclass
class TableSource(Source):
    """Images in a folder or S3 prefix, captions in a JSONL, CSV or Parquet table (columns: key,
    caption, image). Image paths are relative to the table's folder unless they are URIs."""

    table_uri: str
    storage: StorageConfig
    kind = "table"
    _folder: str = ""
    _name: str = ""

    def __post_init__(self) -> None:
        self._folder, self._name = split_parent(self.table_uri)
        if not self._name.lower().endswith(_TABLE_SUFFIXES):
            raise SourceError(f"captions table {self.table_uri!r} must end in {', '.join(_TABLE_SUFFIXES)}")

    def _store(self) -> Any:
        return open_store(self._folder, self.storage)

    def description(self) -> dict[str, Any]:
        store = self._store()
        try:
            table = store.stat(self._name)
        except ObjectNotFoundError as exc:
            raise SourceError(f"captions table {self.table_uri} does not exist") from exc
        table_sha = table.sha256 or hashlib.sha256(store.get_bytes(self._name)).hexdigest()
        listing = hashlib.sha256()
        for info in store.list():
            if info.key.lower().endswith(_IMAGE_SUFFIXES):
                listing.update(f"{info.key}\t{info.size}\n".encode())
        return {"kind": "table", "uri": self.table_uri, "sha256": table_sha, "images": listing.hexdigest()}

    def rows(self) -> Iterator[dict[str, Any]]:
        """Rows of the table, streamed; caption values keep their raw bytes where they are not UTF-8."""
        store, name = self._store(), self._name.lower()
        if name.endswith(".parquet"):
            yield from self._parquet_rows()
            return
        with store.open(self._name) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
            if name.endswith(".csv"):
                for line_no, row in enumerate(csv.DictReader(text), start=2):
                    yield {**row, "__row__": f"line {line_no}"}
            else:
                for line_no, line in enumerate(text, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        row = {"__problem__": f"line {line_no} of {self.table_uri} is not valid JSON: {exc.msg}"}
                    if not isinstance(row, dict):
                        row = {"__problem__": f"line {line_no} of {self.table_uri} is not a JSON object"}
                    yield {**row, "__row__": f"line {line_no}"}

    def _parquet_rows(self) -> Iterator[dict[str, Any]]:
        import pyarrow.parquet as pq

        with self._store().open(self._name) as raw:
            data = raw.read()  # parquet needs random access; the table (not the images) is read whole
        table = pq.ParquetFile(io.BytesIO(data))
        row_no = 0
        for batch in table.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                row_no += 1
                yield {**row, "__row__": f"row {row_no}"}

    def chunks(self) -> Iterator[Chunk]:
        seen_images: set[str] = set()
        batch: list[dict[str, Any]] = []
        index = 0
        for row in self.rows():
            image = _first(row, "image", "image_path", "path", "file")
            if isinstance(image, str) and image:
                seen_images.add(self._resolve(image))
            batch.append(row)
            if len(batch) >= _CHUNK_ROWS:
                yield Chunk("table", index, (self._folder, self.table_uri, batch), self.storage)
                index, batch = index + 1, []
        if batch:
            yield Chunk("table", index, (self._folder, self.table_uri, batch), self.storage)
            index += 1
        # Images nobody captioned: they cannot be used, but they are reported, never ignored.
        orphans = [
            info.key
            for info in self._store().list()
            if info.key.lower().endswith(_IMAGE_SUFFIXES) and join_uri(self._folder, info.key) not in seen_images
        ]
        for start in range(0, len(orphans), _CHUNK_ROWS):
            yield Chunk("orphans", index, (self._folder, orphans[start : start + _CHUNK_ROWS]), self.storage)
            index += 1

    def _resolve(self, image: str) -> str:
        return image if "://" in image or image.startswith("/") else join_uri(self._folder, image)


def _first(row: dict[str, Any], *names: str) -> Any:
    for name in names:
        if row.get(name) not in (None, ""):
            return row[name]
    return None


def _caption_bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    # Undecodable bytes were kept as surrogates; turn them back into the original bytes.
    return str(value).encode("utf-8", errors="surrogateescape")


def _read_image(uri: str, storage: StorageConfig) -> tuple[bytes | None, str | None]:
    parent, name = split_parent(uri)
    try:
        return open_store(parent, storage).get_bytes(name), None
    except ObjectNotFoundError:
        return None, f"caption row names image {uri}, which does not exist"


def _load_table(chunk: Chunk) -> list[RawRecord]:
    folder, table_uri, rows = chunk.payload
    out = []
    for row in rows:
        ref = f"{table_uri} {row['__row__']}"
        key = _first(row, "key", "id")
        if row.get("__problem__"):
            out.append(
                RawRecord(key=str(key or ref), image=None, caption=None, source_ref=ref, problem=row["__problem__"])
            )
            continue
        image = _first(row, "image", "image_path", "path", "file")
        caption = _caption_bytes(row.get("caption"))
        extra = {
            k: v
            for k, v in row.items()
            if k not in {"key", "id", "caption", "image", "image_path", "path", "file", "__row__"}
        }
        extra = {k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool)) or v is None}
        problem = None
        data = None
        if not image:
            problem = "caption row names no image"
        else:
            uri = image if "://" in image or image.startswith("/") else join_uri(folder, image)
            data, problem = _read_image(uri, chunk.storage)
        if key is None:
            key = str(image).rsplit("/", 1)[-1] if image else ""
        out.append(
            RawRecord(
                key=str(key),
                image=data,
                caption=caption,
                source_ref=ref,
                image_name=str(image or ""),
                extra=extra,
                problem=problem,
            )
        )
    return out


def _load_orphans(chunk: Chunk) -> list[RawRecord]:
    folder, keys = chunk.payload
    store = open_store(folder, chunk.storage)
    out = []
    for key in keys:
        out.append(
            RawRecord(
                key=key.rsplit("/", 1)[-1],
                image=store.get_bytes(key),
                caption=None,
                source_ref=join_uri(folder, key),
                image_name=key,
                problem=f"image {join_uri(folder, key)} has no caption row",
            )
        )
    return out


# --------------------------------------------------------------------------------------------- shards


@dataclass
class ShardSource(Source):
    """Existing webdataset tar shards: one `.tar` URI, or a folder / S3 prefix holding them."""

    uri: str
    storage: StorageConfig
    kind = "shards"

    def _shards(self) -> list[tuple[str, str, str, int]]:
        if self.uri.endswith(".tar"):
            parent, name = split_parent(self.uri)
            try:
                info = open_store(parent, self.storage).stat(name)
            except ObjectNotFoundError as exc:
                raise SourceError(f"shard {self.uri} does not exist") from exc
            return [(parent, name, info.sha256 or "", info.size)]
        shards = [(self.uri, o.key, o.sha256 or "", o.size) for o in open_store(self.uri, self.storage).list()]
        shards = [s for s in shards if s[1].endswith(".tar")]
        if not shards:
            raise SourceError(f"no .tar shards under {self.uri}")
        return shards

    def description(self) -> dict[str, Any]:
        listing = hashlib.sha256()
        for parent, key, sha, size in self._shards():
            listing.update(f"{join_uri(parent, key)}\t{sha}\t{size}\n".encode())
        return {"kind": "shards", "uri": self.uri, "shards": listing.hexdigest()}

    def chunks(self) -> Iterator[Chunk]:
        for i, (parent, key, _, _) in enumerate(self._shards()):
            yield Chunk("shards", i, (parent, key), self.storage)


_KEY_EXTS = ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "bin")


def _load_shard(chunk: Chunk) -> list[RawRecord]:
    from photogenic.data.shards import iter_shard

    parent, key = chunk.payload
    uri = join_uri(parent, key)
    out = []
    with open_store(parent, chunk.storage).open(key) as f:
        for sample in iter_shard(f, uri):
            ext = next((e for e in _KEY_EXTS if e in sample), None)
            meta: dict[str, Any] = {}
            if "json" in sample:
                try:
                    meta = json.loads(sample["json"])
                except (json.JSONDecodeError, UnicodeDecodeError):
                    meta = {"source_json_error": "metadata JSON could not be read"}
            caption = sample.get("txt", sample.get("caption"))
            problem = None if ext else f"shard sample has no image member (members: {_members(sample)})"
            out.append(
                RawRecord(
                    key=str(sample["__key__"]).rsplit("/", 1)[-1],
                    image=sample.get(ext) if ext else None,
                    caption=caption,
                    source_ref=f"{uri}#{sample['__key__']}",
                    image_name=f"{sample['__key__']}.{ext or ''}",
                    extra={k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
                    if isinstance(meta, dict)
                    else {},
                    problem=problem,
                )
            )
        while f.read(1 << 20):  # the tar padding, so the recorded checksum is checked
            pass
    return out


def _members(sample: dict[str, Any]) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


_LOADERS = {"world": _load_world, "table": _load_table, "orphans": _load_orphans, "shards": _load_shard}


def make_source(spec: str, world: WorldConfig, storage: StorageConfig) -> Source:
    """A source from a CLI spec: `world`, a captions table URI (.jsonl/.csv/.parquet), or a shard URI/prefix."""
    if spec == "world":
        return WorldSource(world, storage)
    if spec.lower().endswith(_TABLE_SUFFIXES):
        return TableSource(spec, storage)
    return ShardSource(spec, storage)
