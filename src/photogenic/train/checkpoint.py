"""DeepSpeed checkpoints in any store: written by every rank, published when complete, resumed safely.

Layout under `<run>/checkpoints/`:

    step-00000200/            every rank's DeepSpeed files
    step-00000200/checkpoint.json   a manifest (sha256 of every file), written after all ranks finished
    latest                    the newest complete tag, written after its manifest

A tag without its manifest, or whose files do not match it, is incomplete or corrupt: resuming
falls back to the newest good one and says so.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from photogenic.config import ConfigError
from photogenic.manifest import Manifest, ManifestError, ObjectRef, publish, read_manifest
from photogenic.storage import ObjectNotFoundError, Store, StoreError
from photogenic.train.distributed import Dist

__all__ = ["Checkpoints", "CheckpointMismatchError"]

log = logging.getLogger(__name__)


class CheckpointMismatchError(ConfigError):
    """The run's checkpoints were written by a different model, recipe or parallel layout."""


def _tag(step: int) -> str:
    return f"step-{step:08d}"


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _broadcast(value: Any, dist: Dist) -> Any:
    if dist.world_size == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@dataclass
class Checkpoints:
    """Save and resume DeepSpeed checkpoints of one run.

    Args:
        store: the run's `checkpoints/` prefix.
        local_dir: scratch space on this node (each rank uses its own sub-folder).
        dist: this process's place in the job.
        keep: most checkpoints kept.
        signature: what must match for a checkpoint to be loaded (model, recipe, ZeRO stage, ranks).
    """

    store: Store
    local_dir: Path
    dist: Dist
    keep: int
    signature: dict[str, Any]

    @property
    def _mine(self) -> Path:
        return self.local_dir / f"rank{self.dist.rank}"

    def save(self, engine: Any, step: int, client_state: dict[str, Any]) -> str:
        """Write a checkpoint from every rank; rank 0 publishes it and moves `latest` once all are done."""
        tag = _tag(step)
        engine.save_checkpoint(str(self._mine), tag=tag, client_state=client_state)
        folder = self._mine / tag
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                self.store.put_file(f"{tag}/{path.relative_to(folder).as_posix()}", path)
        _barrier()  # every rank's files are in the store
        if self.dist.is_main:
            tag_store = self.store.child(tag)
            refs = [ObjectRef.of(tag_store.stat(o.key)) for o in tag_store.list() if o.key != "checkpoint.json"]
            manifest = Manifest(
                kind="checkpoint", root=tag_store.root, objects=refs, meta={"step": step, "signature": self.signature}
            )
            publish(manifest, tag_store.uri("checkpoint.json"))
            self.store.put_bytes("latest", tag.encode())
            self._retain()
        _barrier()
        shutil.rmtree(folder, ignore_errors=True)
        return tag

    def _tags(self) -> list[str]:
        tags = {o.key.split("/", 1)[0] for o in self.store.list("step-")}
        return sorted(tags, reverse=True)

    def _retain(self) -> None:
        complete = [t for t in self._tags() if self.store.exists(f"{t}/checkpoint.json")]
        for old in complete[self.keep :]:
            self.store.delete_prefix(f"{old}/")
            log.info("checkpoint %s deleted (keeping the newest %d)", old, self.keep)

    def _check(self, tag: str) -> Manifest:
        """Download and verify one checkpoint into this rank's scratch folder."""
        manifest = read_manifest(self.store.uri(f"{tag}/checkpoint.json"))
        if manifest.meta.get("signature") != self.signature:
            raise CheckpointMismatchError(
                f"checkpoint {self.store.uri(tag)} was written with {manifest.meta.get('signature')}, "
                f"this run has {self.signature}: resume with the same config, or write to a new --out"
            )
        target = self._mine / tag
        store = manifest.store()
        for ref in manifest.objects:
            store.get_file(ref.key, target / ref.key, sha256=ref.sha256)
        return manifest

    def resume(self, engine: Any) -> dict[str, Any] | None:
        """Load the newest complete, intact checkpoint; None when there is none.

        Raises:
            CheckpointMismatchError: the checkpoints belong to a different config.
        """
        choice: str | None = None
        if self.dist.is_main:
            choice = self._choose()
        choice = _broadcast(choice, self.dist)
        if choice is None:
            return None
        if not self.dist.is_main:
            self._check(choice)
        _barrier()
        _, client_state = engine.load_checkpoint(str(self._mine), tag=choice)
        if client_state is None:
            raise StoreError(f"DeepSpeed could not load checkpoint {self.store.uri(choice)}")
        shutil.rmtree(self._mine / choice, ignore_errors=True)
        log.info("resumed from %s (step %d)", self.store.uri(choice), client_state["step"])
        return client_state

    def _choose(self) -> str | None:
        try:
            latest = self.store.get_bytes("latest").decode().strip()
        except ObjectNotFoundError:
            latest = None
        candidates = self._tags()
        if latest in candidates:
            candidates.remove(latest)
            candidates.insert(0, latest)
        for tag in candidates:
            try:
                self._check(tag)
                return tag
            except CheckpointMismatchError:
                raise
            except (ManifestError, StoreError) as exc:
                log.warning(
                    "checkpoint %s is incomplete or corrupt (%s); trying the previous one", self.store.uri(tag), exc
                )
        return None
