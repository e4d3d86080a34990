"""The one place that turns our config into a DeepSpeed config and wraps the trainable model."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from photogenic.config import ConfigError, RecipeConfig, TrainConfig

log = logging.getLogger(__name__)

__all__ = [
    "adamw",
    "clips_in_trainer",
    "micro_batch_size",
    "zero_stage",
    "deepspeed_config",
    "use_bf16",
    "cpu_autocast",
    "cpu_has_bf16",
    "lr_lambda",
    "wrap",
    "gathered_copy",
    "compile_engine",
]


def micro_batch_size(recipe: RecipeConfig, world_size: int, name: str) -> int:
    """The per-rank micro-batch: the global batch divided by ranks and accumulation steps."""
    per_step = world_size * recipe.grad_accum_steps
    if recipe.global_batch_size % per_step:
        raise ConfigError(
            f"config key 'train.{name}.global_batch_size' ({recipe.global_batch_size}) must be divisible by "
            f"world size x 'train.{name}.grad_accum_steps' ({world_size} x {recipe.grad_accum_steps} = {per_step})"
        )
    return recipe.global_batch_size // per_step


def use_bf16(train: TrainConfig) -> bool:
    """DeepSpeed's bf16 (bf16 weights, fp32 master copy) on a GPU that has it: asked for, or `auto`.
    On CPU, `bf16` means autocast instead (`cpu_autocast`) and DeepSpeed stays in fp32."""
    gpu_bf16 = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if train.precision == "bf16" and not gpu_bf16:
        _require_cpu_bf16()  # a machine with no bf16 at all
    return gpu_bf16 and train.precision != "fp32"


def cpu_autocast(train: TrainConfig, device: torch.device) -> bool:
    """Whether a CPU run's forward passes run under `torch.autocast('cpu', torch.bfloat16)`: with
    `train.precision=bf16`, on a CPU with bf16 instructions (weights, gradients and optimizer stay fp32).
    `auto` keeps CPU runs in fp32: the demo's pretraining in bf16 took 0.94x the time a step and learned
    no shapes (bench/results/concept_accuracy.md), and a CPU run's model should not depend on whether
    its CPU has bf16."""
    if device.type != "cpu" or train.precision != "bf16":
        return False
    _require_cpu_bf16()
    return True


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (emulated bf16 is slower than fp32)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def _require_cpu_bf16() -> None:
    if not cpu_has_bf16():
        raise ConfigError(
            "config key 'train.precision' is 'bf16' but this machine has neither a bf16-capable GPU nor a CPU with "
            "bf16 instructions (avx512_bf16 or amx_bf16); set it to 'fp32' or 'auto'"
        )


def zero_stage(train: TrainConfig, world_size: int) -> int:
    """The ZeRO stage a job runs: the configured one, or 0 on a single rank unless asked
    (`train.zero_on_one_rank`): with one rank there is nothing to partition."""
    return train.zero_stage if world_size > 1 or train.zero_on_one_rank else 0


def clips_in_trainer(train: TrainConfig, world_size: int) -> bool:
    """Whether the trainer clips gradients itself (`torch.nn.utils.clip_grad_norm_`, one batched norm)
    instead of DeepSpeed (a Python loop over tensors, 8 ms of a 0.47 s demo step on CPU, measured): without
    ZeRO and in fp32 the engine's parameters hold the reduced gradients, so the two clip the same values.
    ZeRO's partitions and bf16's fp32 gradient buffers are DeepSpeed's to clip."""
    return zero_stage(train, world_size) == 0 and not use_bf16(train)


def deepspeed_config(train: TrainConfig, recipe: RecipeConfig, name: str, world_size: int) -> dict[str, Any]:
    """DeepSpeed's JSON config for one recipe. The optimizer and LR schedule are client objects
    (torch AdamW, LambdaLR): DeepSpeed's own Adam would JIT-build a fused op on first use."""
    stage = zero_stage(train, world_size)
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2 and torch.cuda.is_available():
        # Overlapping communication needs CUDA streams; on CPU it only adds copies (measured).
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_scatter=True)
    if stage == 3:
        # Parameters under 10k elements (norms, biases) stay whole on every rank: cheap to keep,
        # costly to gather one by one. DeepSpeed's default (100k) kept 44% of the demo U-Net whole.
        zero.update(stage3_param_persistence_threshold=10**4, stage3_max_live_parameters=10**8)
    return {
        "train_batch_size": recipe.global_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size(recipe, world_size, name),
        "gradient_accumulation_steps": recipe.grad_accum_steps,
        "gradient_clipping": 0.0 if clips_in_trainer(train, world_size) else recipe.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": use_bf16(train)},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def lr_lambda(recipe: RecipeConfig) -> Any:
    """Linear warm-up, then cosine decay to 10% of the peak, over `recipe.steps`."""
    warmup, total = recipe.warmup_steps, recipe.steps

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def wrap(
    model: torch.nn.Module, train: TrainConfig, recipe: RecipeConfig, name: str, world_size: int
) -> tuple[Any, Any, Any]:
    """Wrap the trainable model in a DeepSpeed engine with AdamW and the warm-up/cosine schedule.

    Returns:
        (engine, optimizer, lr_scheduler)
    """
    import deepspeed

    optimizer = adamw([p for p in model.parameters() if p.requires_grad], recipe)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(recipe))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(train, recipe, name, world_size),
    )
    if world_size == 1 and zero_stage(train, world_size) == 0:
        # One rank has no gradients to average: skip the flatten, all-reduce and unflatten of every
        # gradient after each backward (about 7 ms of a 0.5 s demo step on CPU, measured). ZeRO's
        # optimizers gather their partitions' gradients in that same call, so they keep it.
        engine.enable_backward_allreduce = False
    return engine, optimizer, scheduler


def adamw(params: list[torch.nn.Parameter], recipe: RecipeConfig) -> torch.optim.AdamW:
    """The recipe's AdamW, fused: one kernel over all tensors instead of a loop of small ops per tensor
    (on CPU as on GPU; 7% of a demo step on 2 CPU cores, measured)."""
    return torch.optim.AdamW(
        params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay, betas=(0.9, 0.999), fused=True
    )


def compile_engine(engine: Any, recipe: str, device: torch.device) -> None:
    """`train.<recipe>.compile`: torch.compile the engine's module in place (DeepSpeed's `engine.compile`,
    inductor). Copies of the module (EMA export, sample grids, validation) stay eager."""
    key = f"train.{recipe}.compile"
    if device.type == "cpu":
        import shutil

        compiler = os.environ.get("CXX") or "g++"
        if not (shutil.which(compiler) or shutil.which("clang++")):
            raise ConfigError(
                f"config key {key!r} is true but this machine has no C++ compiler ({compiler!r} is not on PATH), "
                f"which torch.compile needs on CPU: install g++ or set {key}=false"
            )
    log.info("%s: compiling the model (torch.compile, inductor); the first step takes minutes", recipe)
    engine.compile()


def gathered_copy(engine: Any) -> torch.nn.Module:
    """A full, unpartitioned CPU copy of the engine's model (gathers ZeRO-3 shards)."""
    import copy

    import deepspeed

    module = engine.module
    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=engine.zero_optimization_stage() == 3):
        clone = copy.deepcopy(module).to("cpu").float()
    return clone
