"""Helpers shared by the test modules that train on the tiny preset."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from photogenic.config import Config, load_config
from photogenic.data.ingest import ingest
from photogenic.data.validate import validate
from photogenic.train.run import train


def tiny_config(workspace: Path, *overrides: str) -> Config:
    """The tiny preset in `workspace`, with `a.b=value` overrides."""
    return load_config("tiny", overrides=[f"workspace={workspace}", *overrides])


def tiny_world_and_autoencoder(workspace: Path) -> tuple[str, str]:
    """A validated tiny world and a 2-step autoencoder: (dataset manifest URI, autoencoder model URI)."""
    config = tiny_config(workspace)
    data = validate(ingest("world", config, progress=False).manifest_uri, config).manifest_uri
    return data, train("autoencoder", config, data, progress=False).model_uri


def child_env(workspace: Path) -> dict[str, str]:
    """The environment for a child `photogenic` process: without the process-group variables that
    in-process training set in this one (a child must pick its own port)."""
    dist_vars = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    return {**env, "PHOTOGENIC_WORKSPACE": str(workspace), "OMP_NUM_THREADS": "1"}


def unet_weights(model_uri: str) -> dict[str, torch.Tensor]:
    """The exported denoiser's weights."""
    return load_file(str(Path(model_uri, "unet", "diffusion_pytorch_model.safetensors")))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, f"weights differ by up to {worst}"


def latest_checkpoint_step(checkpoints: Path) -> int:
    """The step the run's `latest` pointer names (0 before the first complete checkpoint)."""
    try:
        return int((checkpoints / "latest").read_text().split("-")[1])
    except (FileNotFoundError, ValueError, IndexError):
        return 0
