"""Webdataset tar shards in any store: a writer that uploads each finished shard, and a verifying reader."""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photogenic.config import StorageConfig
from photogenic.manifest import Manifest, ObjectRef
from photogenic.storage import Store

__all__ = [
    "ShardSink",
    "ShardInfo",
    "TarSample",
    "tar_sample",
    "iter_shard",
    "iter_dataset",
    "dataset_shards",
    "IMAGE_EXTS",
    "scratch_dir",
]

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "bin")
_MTIME = 0  # fixed member times: the same samples give byte-identical shards
_OWNER = "photogenic"
_MODE = 0o444


_SCRATCH = re.compile(r"^photogenic-[a-z]+-(\d+)-")


def scratch_dir(stage: str) -> tempfile.TemporaryDirectory:
    """A local scratch folder named after this process, after removing those of processes that died.

    A stage killed with SIGKILL cannot clean up after itself; the next stage on the machine does: a
    folder whose owner process no longer exists is removed. One whose number a live process holds
    is left alone, whoever that process is.
    """
    root = Path(tempfile.gettempdir())
    for entry in root.glob("photogenic-*-*-*"):
        match = _SCRATCH.match(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
    return tempfile.TemporaryDirectory(prefix=f"photogenic-{stage}-{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


@dataclass(frozen=True)
class ShardInfo:
    """One written shard."""

    ref: ObjectRef
    samples: int


@dataclass(frozen=True)
class TarSample:
    """One sample's tar members, ready to append: headers, contents and padding, and the contents' size."""

    members: bytes
    size: int


def tar_sample(sample: dict[str, Any]) -> TarSample:
    """A sample as the tar members webdataset's writer makes of it, byte for byte (USTAR headers, fixed
    owner, mode and time, members in the order of their extensions; fields starting with `_` are left
    out), built wherever it is cheapest: ingestion builds them in its worker processes, so the one
    process that writes the shards only appends bytes."""
    key = sample["__key__"]
    parts, size = [], 0
    for ext in sorted(k for k in sample if not k.startswith("_")):
        data = _encode(ext, sample[ext])
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), _MTIME, _MODE
        info.uname = info.gname = _OWNER
        parts += [info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"), data]
        parts.append(tarfile.NUL * (-len(data) % tarfile.BLOCKSIZE))
        size += len(data)
    return TarSample(b"".join(parts), size)


@dataclass
class ShardSink:
    """Writes samples into tar shards of bounded size under `prefix` of a store.

    Each finished shard is uploaded at once and its local copy removed, so memory and local disk
    stay bounded by one shard. An object that already holds the same bytes is not uploaded again,
    which makes re-runs cheap. A shard is finished before the sample that would go past `max_samples`,
    or after the one that reached `max_bytes` of contents (webdataset's `ShardWriter` rule: the same
    samples give the same shards as before).
    """

    store: Store
    prefix: str
    max_samples: int
    max_bytes: int
    name: str = "shard"
    shards: list[ShardInfo] = field(default_factory=list)
    uploaded: int = 0
    reused: int = 0
    _file: Any = None
    _path: Path | None = None
    _tmp: tempfile.TemporaryDirectory | None = None
    _count: int = 0
    _size: int = 0  # contents written to the open shard
    _written: int = 0  # bytes written to the open shard
    _next_index: int = 0

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(upload=exc_type is None)

    def write(self, sample: dict[str, Any]) -> None:
        """Write one sample: `__key__` plus extension -> bytes (or str, or a JSON-able dict for `json`)."""
        self.append(tar_sample(sample))

    def append(self, sample: TarSample) -> None:
        """Write one sample's ready members (see `tar_sample`)."""
        if self._file is None or self._count >= self.max_samples or self._size >= self.max_bytes:
            self._next_shard()
        self._file.write(sample.members)
        self._written += len(sample.members)
        self._count += 1
        self._size += sample.size

    def _next_shard(self) -> None:
        self._finish_shard()
        if self._tmp is None:
            self._tmp = scratch_dir("shards")
        self._path = Path(self._tmp.name) / f"{self.name}-{self._next_index:05d}.tar"
        self._next_index += 1
        self._file = open(self._path, "wb")  # noqa: SIM115
        self._count = self._size = self._written = 0

    def _finish_shard(self) -> None:
        """End the open shard as tarfile does (two zero blocks, then zeros to a whole record) and upload it."""
        if self._file is None:
            return
        end = tarfile.NUL * (2 * tarfile.BLOCKSIZE)
        end += tarfile.NUL * (-(self._written + len(end)) % tarfile.RECORDSIZE)
        self._file.write(end)
        self._file.close()
        self._file = None
        if self._count:
            self._upload(self._path)

    def _upload(self, path: Path) -> None:
        key = f"{self.prefix}/{path.name}"
        from photogenic.storage import ObjectNotFoundError, sha256_file

        digest = sha256_file(path)
        try:
            existing = self.store.stat(key)
        except ObjectNotFoundError:
            existing = None
        if existing is not None and existing.sha256 == digest:
            info = existing
            self.reused += 1
        else:
            info = self.store.put_file(key, path)
            self.uploaded += 1
        path.unlink()
        self.shards.append(ShardInfo(ObjectRef.of(info), self._count))

    def close(self, upload: bool = True) -> None:
        if upload:
            self._finish_shard()
        elif self._file is not None:  # an error is on its way out: drop the half-written shard
            self._file.close()
            self._file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _encode(ext: str, value: Any) -> Any:
    if ext.startswith("__"):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if ext == "json":
        return json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")
    raise TypeError(f"sample field {ext!r} must be bytes, str or (for json) a dict, got {type(value).__name__}")


def iter_shard(fileobj: Any, url: str = "") -> Iterator[dict[str, Any]]:
    """Samples of one tar shard stream, grouped by key (webdataset's own tar iterators)."""
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def members() -> Iterator[dict[str, Any]]:
        for item in tar_file_iterator(fileobj):
            item["__url__"] = url
            yield item

    yield from group_by_keys(members())


def dataset_shards(manifest: Manifest, group: str = "shards") -> list[ObjectRef]:
    """The shard objects of a dataset manifest (group `shards`, or `quarantine`)."""
    keys = [s["key"] for s in manifest.meta.get(group, [])]
    return [manifest.ref(k) for k in keys]


def iter_dataset(
    manifest: Manifest, config: StorageConfig | None = None, group: str = "shards"
) -> Iterator[dict[str, Any]]:
    """Every sample of a dataset, shard by shard, each shard's checksum verified as it is read."""
    for ref in dataset_shards(manifest, group):
        with manifest.open(ref, config) as f:
            yield from iter_shard(f, manifest.uri(ref))
            # tar readers stop at the end-of-archive marker; read the padding too, so the
            # checksum (checked at the last byte) covers the whole object.
            while f.read(1 << 20):
                pass
