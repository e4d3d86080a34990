"""Where ingestion reads from: the toy world, a captions table (`photogenic.data.tables`), or tar shards.

A source hands out small, picklable chunks; a worker process turns one chunk into raw records.
Only chunk descriptors travel through the main process, so memory stays bounded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from photogenic.config import Config, StorageConfig, WorldConfig
from photogenic.storage import (
    ObjectInfo,
    ObjectNotFoundError,
    StoreError,
    join_uri,
    open_store,
    split_parent,
    split_uri,
)

__all__ = [
    "RawRecord",
    "Chunk",
    "Source",
    "WorldSource",
    "ShardSource",
    "make_source",
    "SourceError",
]

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
        """What identifies the input, computed once per source object: a folder source reads every file
        for it, and ingestion asks for it several times (the request, the manifest, error messages)."""
        if "_description" not in self.__dict__:
            self.__dict__["_description"] = self._describe()
        return self.__dict__["_description"]

    def _describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def count(self) -> int | None:
        return None

    def chunks(self) -> Iterator[Chunk]:
        raise NotImplementedError


def load_chunk(chunk: Chunk) -> list[RawRecord]:
    """Read one chunk into raw records (runs in a worker process)."""
    from photogenic.data.tables import _load_orphans, _load_table

    loaders = {"world": _load_world, "table": _load_table, "orphans": _load_orphans, "shards": _load_shard}
    return loaders[chunk.kind](chunk)


# --------------------------------------------------------------------------------------------- world


@dataclass
class WorldSource(Source):
    """The generated toy world (its oracle verdicts travel beside, never inside, the samples)."""

    world: WorldConfig
    storage: StorageConfig
    kind = "world"

    def _describe(self) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------- shards


@dataclass
class ShardSource(Source):
    """Existing webdataset tar shards: one `.tar` URI, or a folder / S3 prefix holding them."""

    uri: str
    storage: StorageConfig
    kind = "shards"

    def _shards(self) -> list[tuple[str, ObjectInfo]]:
        if self.uri.endswith(".tar"):
            parent, name = split_parent(self.uri)
            try:
                info = open_store(parent, self.storage).stat(name)
            except ObjectNotFoundError as exc:
                raise SourceError(f"shard {self.uri} does not exist") from exc
            return [(parent, info)]
        shards = [(self.uri, o) for o in open_store(self.uri, self.storage).scan() if o.key.endswith(".tar")]
        if not shards:
            raise SourceError(f"no .tar shards under {self.uri}")
        return shards

    def _describe(self) -> dict[str, Any]:
        """Every shard's name and content (its ETag on S3, the sha256 of its bytes locally)."""
        listing = hashlib.sha256()
        for parent, info in self._shards():
            content = open_store(parent, self.storage).content_id(info, 1 << 62)
            listing.update(f"{join_uri(parent, info.key)}\t{content}\n".encode())
        return {"kind": "shards", "uri": self.uri, "shards": listing.hexdigest()}

    def chunks(self) -> Iterator[Chunk]:
        for i, (parent, info) in enumerate(self._shards()):
            if info.kind != "file":
                raise SourceError(f"shard {join_uri(parent, info.key)} is a {info.kind}; only regular files are read")
            yield Chunk("shards", i, (parent, info.key), self.storage)


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


def make_source(spec: str, config: Config) -> Source:
    """A source from a CLI spec: `world`, a captions table URI (.jsonl/.csv/.parquet), or a shard URI/prefix.

    Raises:
        SourceError: the spec is not a usable path or URI (`s3:/x`, an unknown scheme).
    """
    if spec == "world":
        return WorldSource(config.world, config.storage)
    try:
        split_uri(spec)
    except StoreError as exc:
        raise SourceError(f"source {spec!r}: {exc}") from None
    if spec.lower().endswith(_TABLE_SUFFIXES):
        from photogenic.data.tables import TableSource

        folder = split_parent(spec)[0]
        own = sorted({p for p in (_below(folder, config.store_root()), _below(folder, config.workspace)) if p})
        return TableSource(spec, config.storage, config.data.max_image_bytes, tuple(own))
    return ShardSource(spec, config.storage)


def _below(folder: str, uri: str) -> str | None:
    """`uri`'s key prefix under `folder` (both normalised), or None when it is not inside it.

    A workspace inside the source folder (`--source captions.csv` with the default `./photogenic-workspace`)
    holds this run's own outputs: they are neither part of the source's identity nor images to ingest.
    """
    try:
        scheme, rest = split_uri(uri)
    except StoreError:
        return None
    full = f"s3://{rest.rstrip('/')}" if scheme == "s3" else rest.rstrip("/")
    base = folder.rstrip("/") + "/"
    return full[len(base) :] if full.startswith(base) and len(full) > len(base) else None
