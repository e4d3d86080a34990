"""All device and process-group setup in one place: the same code runs as 1 CPU process or N GPU ranks."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["Dist", "RankLostError", "rank_lost", "setup_distributed", "torch_extensions_dir", "prebuild_ops"]


@dataclass(frozen=True)
class Dist:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torch_extensions_dir() -> str:
    """Where DeepSpeed keeps JIT-built ops: $TORCH_EXTENSIONS_DIR, else a folder in this environment,
    so the ops `make setup` built are found by every later run.

    Loading a built op still takes a lock file beside it, so ops built into an image that the task's
    user cannot write (ours: built as root, run as uid 10001) are copied once to a folder of that user's
    under the temp dir, and loaded from there."""
    path = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path(sys.prefix) / "torch_extensions")
    if path.is_dir() and not _writable_tree(path):
        path = _writable_copy(path)
    os.environ["TORCH_EXTENSIONS_DIR"] = str(path)
    return str(path)


def _writable_tree(path: Path) -> bool:
    return all(os.access(p, os.W_OK) for p in (path, *(c for c in path.iterdir() if c.is_dir())))


def _writable_copy(path: Path) -> Path:
    """A copy of `path` this user can write (made once; file times kept, so nothing rebuilds)."""
    import shutil
    import tempfile

    copy = Path(tempfile.gettempdir()) / f"photogenic-torch-extensions-{os.getuid()}"
    if not copy.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f"{copy.name}-", dir=copy.parent))
        shutil.copytree(path, staging, dirs_exist_ok=True)
        try:
            staging.rename(copy)
        except OSError:  # another rank made it first
            shutil.rmtree(staging, ignore_errors=True)
    return copy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup_distributed(timeout_s: float = 600.0) -> Dist:
    """Join (or, run alone, create) the process group and pick the device.

    Under torchrun the usual variables are set; a plain process becomes rank 0 of 1 on a free
    loopback port. Backend: NCCL on GPUs, gloo on CPUs. A collective that waits longer than `timeout_s`
    for another rank fails this rank (and torchrun then stops the job).
    """
    import datetime

    import torch

    torch_extensions_dir()
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    import deepspeed
    from torch.distributed import distributed_c10d

    timeout = datetime.timedelta(seconds=timeout_s)
    # DeepSpeed runs ZeRO's collectives on a clone of the world group made by `new_group(ranks)`, which
    # takes torch's default timeout (30 minutes for gloo, 10 for NCCL), not the world group's: without this a stalled
    # rank holds the others in an all-reduce for half an hour whatever `timeout_s` says.
    distributed_c10d.default_pg_timeout = timeout
    if isinstance(distributed_c10d.default_pg_nccl_timeout, datetime.timedelta):  # torch built with NCCL
        distributed_c10d.default_pg_nccl_timeout = timeout
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, timeout=timeout)
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device)


class RankLostError(RuntimeError):
    """A collective failed because another rank died or stopped answering."""


# What gloo and NCCL say when a peer dies (its sockets close) or stalls (the timeout runs out).
_PEER_FAILURES = (
    "Timed out waiting",
    "Connection closed by peer",
    "Connection reset by peer",
    "Watchdog caught collective operation timeout",
    "NCCL communicator was aborted",
)


def rank_lost(exc: BaseException, timeout_s: float) -> RankLostError | None:
    """A clear error for a collective that failed because another rank was lost, else None."""
    text = str(exc)
    if not isinstance(exc, RuntimeError) or not any(marker in text for marker in _PEER_FAILURES):
        return None
    rank = os.environ.get("RANK", "?")
    world = os.environ.get("WORLD_SIZE", "?")
    reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return RankLostError(
        f"rank {rank} of {world}: another rank died or stopped answering for more than {timeout_s:g}s "
        f"(train.collective_timeout_s) during a collective ({reason}); restart the job: it resumes from "
        "the last complete checkpoint"
    )


def prebuild_ops() -> None:
    """Build the DeepSpeed ops a CPU run needs (the shared-memory collective) ahead of time, so no
    test or training run pays the one-off JIT build (about a minute)."""
    torch_extensions_dir()
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()


if __name__ == "__main__":
    prebuild_ops()
