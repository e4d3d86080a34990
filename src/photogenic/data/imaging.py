"""What ingestion reads from an image's bytes: format and size, a decoder's error in words, and a
perceptual hash for near-duplicates."""

from __future__ import annotations

import functools
import io
import re
from typing import Any

__all__ = ["inspect_image", "decoder_message", "NearDuplicateIndex"]


def inspect_image(data: bytes | None) -> tuple[dict[str, Any], int | None]:
    """Decode an image fully and describe it; a per-channel perceptual hash (3 x 64 bits) for near-duplicates.

    Returns:
        (info, phash): info has sha256, size, decodable, format, width, height or decode_error;
        phash is None when the image cannot be decoded.
    """
    import hashlib

    from PIL import Image

    if data is None:
        return {"decodable": False, "decode_error": "no image bytes"}, None
    info: dict[str, Any] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    if not data:
        return {**info, "decodable": False, "decode_error": "zero-byte image"}, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # a full decode: truncated files fail here, not later in training
            info.update(decodable=True, format=im.format or "", width=im.width, height=im.height)
            rgb = im.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a property of the input
        return {**info, "decodable": False, "decode_error": decoder_message(exc)}, None
    return info, _channel_phash(rgb)


_ADDRESS = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def decoder_message(exc: BaseException) -> str:
    """A decoder's error as deterministic text: `repr`s of objects lose their memory address, so the
    same bad input gives the same reason, the same dataset version and the same report on every run."""
    return _ADDRESS.sub(r"<\1>", f"{type(exc).__name__}: {exc}")


@functools.lru_cache(maxsize=1)
def _dct_rows() -> Any:
    """The first 8 rows of the (unnormalised, type-II) 32-point DCT matrix, as scipy's `dct` uses."""
    import numpy as np

    n = np.arange(32)
    k = np.arange(8)[:, None]
    return (2 * np.cos(np.pi * k * (2 * n + 1) / 64)).astype(np.float32)


def _channel_phash(rgb: Any) -> int:
    """imagehash's pHash (32x32 DCT, low 8x8 block against its median) on R, G and B at once.

    A grey hash would call a red and a blue circle at the same spot duplicates, so each channel is
    hashed. Only the 8x8 low-frequency block is needed, so it is two small matrix products with the
    DCT's first rows: bit-identical to `imagehash.phash` per channel (a test checks), at a fraction of
    the cost of three calls, which made ingestion miss its throughput target (bench/ingest.py).
    """
    import numpy as np
    from PIL import Image

    if rgb.size != (32, 32):
        rgb = rgb.resize((32, 32), Image.LANCZOS)
    small = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)
    d = _dct_rows()
    low = d @ small @ d.T  # (3, 8, 8)
    bits = low > np.median(low.reshape(3, -1), axis=1)[:, None, None]
    return int.from_bytes(np.packbits(bits.reshape(-1)).tobytes(), "big")


class NearDuplicateIndex:
    """Finds hashes within a Hamming distance, by multi-index hashing.

    The 192-bit hash is cut into `max_distance + 1` bands; two hashes within `max_distance` bits
    agree exactly on at least one band (pigeonhole), so only band matches need a full comparison.
    """

    BITS = 192

    def __init__(self, max_distance: int) -> None:
        self.max_distance = max_distance
        self.n_bands = max_distance + 1
        self.width = self.BITS // self.n_bands
        self._bands: list[dict[int, list[int]]] = [{} for _ in range(self.n_bands)]
        self._hashes: list[int] = []
        self._keys: list[str] = []

    def _band_values(self, h: int) -> list[int]:
        mask = (1 << self.width) - 1
        return [(h >> (i * self.width)) & mask for i in range(self.n_bands)]

    def find(self, h: int) -> tuple[str, int] | None:
        best: tuple[str, int] | None = None
        for band, value in zip(self._bands, self._band_values(h), strict=True):
            for idx in band.get(value, ()):
                d = (self._hashes[idx] ^ h).bit_count()
                if d <= self.max_distance and (best is None or d < best[1]):
                    best = (self._keys[idx], d)
        return best

    def add(self, h: int, key: str) -> None:
        idx = len(self._hashes)
        self._hashes.append(h)
        self._keys.append(key)
        for band, value in zip(self._bands, self._band_values(h), strict=True):
            band.setdefault(value, []).append(idx)
