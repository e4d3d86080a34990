"""The container images the components run in, named in one place: `images.json` (`make images` writes it)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["IMAGES", "CPU_IMAGE", "TRAIN_IMAGE"]

IMAGES: dict[str, str] = json.loads((Path(__file__).parent / "images.json").read_text())
CPU_IMAGE = IMAGES["photogenic"]  # data, curation, judges, evaluation, tracking, the job launcher
TRAIN_IMAGE = IMAGES["photogenic-train"]  # CUDA PyTorch + DeepSpeed: training in the task's own pod
