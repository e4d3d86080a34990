"""Training data: a rank's disjoint share of a dataset's shards, cached locally, in a deterministic order.

Every batch is a pure function of (seed, step, rank), so a resumed run sees exactly the batches an
uninterrupted run would have seen, without any data-loader state in the checkpoint.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from photogenic.config import StorageConfig
from photogenic.data.shards import dataset_shards, iter_shard
from photogenic.manifest import read_manifest

__all__ = ["RankData", "load_rank_data"]

log = logging.getLogger(__name__)


@dataclass
class RankData:
    """One rank's share of a dataset, decoded: uint8 images (N, 3, H, W) and their captions."""

    images: torch.Tensor
    captions: list[str]
    keys: list[str]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.captions)

    def indices(self, step: int, micro_step: int, micro_batch: int, accum: int, seed: int) -> torch.Tensor:
        """Sample indices of one micro-batch: epochs are seeded permutations; position follows the step."""
        n = len(self)
        start = (step * accum + micro_step) * micro_batch
        out = []
        while len(out) < micro_batch:
            epoch, offset = divmod(start + len(out), n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            take = min(micro_batch - len(out), n - offset)
            out.extend(perm[offset : offset + take].tolist())
        return torch.tensor(out)

    def batch(
        self, step: int, micro_step: int, micro_batch: int, accum: int, seed: int
    ) -> tuple[torch.Tensor, list[str]]:
        """Images in [-1, 1] (float32) and captions of one micro-batch."""
        idx = self.indices(step, micro_step, micro_batch, accum, seed)
        images = self.images[idx].float().div_(127.5).sub_(1.0)
        return images, [self.captions[i] for i in idx.tolist()]


def load_rank_data(
    manifest_uri: str,
    rank: int,
    world_size: int,
    cache_dir: str | Path,
    storage: StorageConfig | None = None,
    image_size: int | None = None,
) -> RankData:
    """Read this rank's share (sample i goes to rank i mod world_size) of a dataset.

    Shards are downloaded once into `cache_dir`, named by their sha256 and verified, so a restarted
    run reads nothing twice. The share is decoded into memory: fine for the toy world and for
    quality-tuning sets (thousands of images); a web-scale haystack needs a streaming loader.
    """
    from PIL import Image

    manifest = read_manifest(manifest_uri, storage)
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    images: list[np.ndarray] = []
    captions: list[str] = []
    keys: list[str] = []
    index = 0
    for ref in dataset_shards(manifest):
        local = cache / f"{ref.sha256}.tar"
        if not local.exists():
            manifest.store(storage).get_file(ref.key, local, sha256=ref.sha256)
        with open(local, "rb") as f:
            for sample in iter_shard(f, str(local)):
                mine = index % world_size == rank
                index += 1
                if not mine:
                    continue
                ext = next(e for e in ("png", "jpg", "jpeg", "webp") if e in sample)
                with Image.open(io.BytesIO(sample[ext])) as im:
                    rgb = im.convert("RGB")
                    if image_size is not None and rgb.size != (image_size, image_size):
                        rgb = rgb.resize((image_size, image_size), Image.BICUBIC)
                    images.append(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1).copy())
                captions.append(sample.get("txt", b"").decode("utf-8", errors="replace"))
                keys.append(sample["__key__"])
    if not images:
        raise ValueError(f"rank {rank} of {world_size} got no samples from {manifest_uri} ({index} in all)")
    log.info("rank %d: %d of %d samples from %s", rank, len(images), index, manifest_uri)
    return RankData(torch.from_numpy(np.stack(images)), captions, keys, manifest.fingerprint)
