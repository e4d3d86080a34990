"""Webdataset tar shards in any store: a writer that uploads each finished shard, and a verifying reader."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photogenic.config import StorageConfig
from photogenic.manifest import Manifest, ObjectRef
from photogenic.storage import Store

__all__ = ["ShardSink", "ShardInfo", "iter_shard", "iter_dataset", "dataset_shards", "IMAGE_EXTS", "scratch_dir"]

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff", "bin")
_MTIME = 0  # fixed member times: the same samples give byte-identical shards


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


@dataclass
class ShardSink:
    """Writes samples into tar shards of bounded size under `prefix` of a store.

    Each finished shard is uploaded at once and its local copy removed, so memory and local disk
    stay bounded by one shard. An object that already holds the same bytes is not uploaded again,
    which makes re-runs cheap.
    """

    store: Store
    prefix: str
    max_samples: int
    max_bytes: int
    name: str = "shard"
    shards: list[ShardInfo] = field(default_factory=list)
    uploaded: int = 0
    reused: int = 0
    _writer: Any = None
    _tmp: tempfile.TemporaryDirectory | None = None
    _count: int = 0

    def __enter__(self) -> ShardSink:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(upload=exc_type is None)

    def write(self, sample: dict[str, Any]) -> None:
        """Write one sample: `__key__` plus extension -> bytes (or str, or a JSON-able dict for `json`)."""
        if self._writer is None:
            import webdataset as wds

            self._tmp = scratch_dir("shards")
            self._writer = wds.ShardWriter(
                f"{self._tmp.name}/{self.name}-%05d.tar",
                maxcount=self.max_samples,
                maxsize=self.max_bytes,
                post=self._finished,
                verbose=0,
                mtime=_MTIME,
                user="photogenic",
                group="photogenic",
                encoder=False,
            )
        encoded = {k: _encode(k, v) for k, v in sample.items()}
        self._writer.write(encoded)  # may finish the previous shard first (-> _finished)
        self._count += 1

    def _finished(self, path: str) -> None:
        count, self._count = self._count, 0
        if count == 0:
            return
        key = f"{self.prefix}/{Path(path).name}"
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
        Path(path).unlink()
        self.shards.append(ShardInfo(ObjectRef.of(info), count))

    def close(self, upload: bool = True) -> None:
        if self._writer is not None:
            if upload:
                self._writer.close()
            else:  # an error is on its way out: drop the half-written shard
                self._writer.tarstream.close()
            self._writer = None
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
