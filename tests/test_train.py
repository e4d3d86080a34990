"""The trainer on the tiny preset: recipes, DeepSpeed ZeRO stages against a bare loop, checkpoints and
resume (also after SIGKILL and with a corrupt checkpoint), two ranks under torchrun, export and generate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from safetensors.torch import load_file

from photogenic.config import Config, ConfigError, load_config
from photogenic.data.ingest import ingest
from photogenic.data.validate import validate
from photogenic.models import build_unet, latent_size
from photogenic.storage import open_store
from photogenic.train.checkpoint import CheckpointMismatchError
from photogenic.train.deepspeed_config import cpu_has_bf16
from photogenic.train.diffusion import DiffusionTrainer
from photogenic.train.rehearsal import rehearsal_counts
from photogenic.train.run import run_uri, train
from photogenic.train.trainer import freeze_matching
from tests.helpers import (
    assert_same_weights,
    child_env,
    latest_checkpoint_step,
    tiny_config,
    unet_weights,
)

PHOTOGENIC = str(Path(sys.executable).with_name("photogenic"))


_config = tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_shared: dict[str, Any]) -> dict[str, Any]:
    """This module's workspace, and the shared tiny world and 2-step autoencoder (read only)."""
    return {"ws": tmp_path_factory.mktemp("train-ws"), "data": tiny_shared["data"], "ae": tiny_shared["ae"]}


@pytest.fixture(scope="module")
def rehearsal_set(tiny: dict[str, Any]) -> str:
    """Another validated tiny world (its own seed): a set to rehearse."""
    other = _config(tiny["ws"], "world.seed=1")
    return validate(ingest("world", other, progress=False).manifest_uri, other).manifest_uri


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained: str) -> str:
    """The shared 2-step pretrained model on the tiny world, read (never trained further in place) by the
    tests that quality-tune or draw from it."""
    return tiny_pretrained


def test_autoencoder_export_has_16_latent_channels_and_a_scaling_factor(tiny: dict[str, Any]) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(tiny["ae"], "vae"))
    assert vae.config.latent_channels == 16
    assert vae.config.scaling_factor > 0 and vae.config.scaling_factor != 0.18215
    z = vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mode()
    assert z.shape == (1, 16, 16, 16)


def test_pretrain_exports_a_diffusers_pipeline_that_generates(tiny: dict[str, Any], tmp_path: Path) -> None:
    from photogenic.models.pipeline import PhotogenicPipeline

    config = _config(tiny["ws"])
    result = train("pretrain", config, tiny["data"], out=str(tmp_path / "run"), base=tiny["ae"], progress=False)
    assert result.steps == 2 and not result.reused and result.resumed_from is None
    pipe = PhotogenicPipeline.from_pretrained(result.model_uri)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        ["a red circle on a sky background"] * 2,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (2, 32, 32, 3) and images.min() >= 0 and images.max() <= 1
    # Frozen parts are exported unchanged: the autoencoder is the one we started from.
    assert load_file(str(Path(result.model_uri, "vae", "diffusion_pytorch_model.safetensors"))).keys()
    again = train("pretrain", config, tiny["data"], out=str(tmp_path / "run"), base=tiny["ae"], progress=False)
    assert again.reused and again.fingerprint == result.fingerprint


class _Crash(RuntimeError):
    pass


class _CrashingTrainer(DiffusionTrainer):
    """Dies right after a given step's checkpoint, like a node lost mid-run."""

    crash_after = 0

    def _save(self, step: int) -> None:
        super()._save(step)
        if step == self.crash_after:
            raise _Crash(f"simulated crash after step {step}")


def _run(trainer_cls: type, config: Config, data: str, out: str, base: str, crash_after: int = 0) -> Any:
    trainer = trainer_cls(config=config, data_uri=data, out=out, base=base, progress=False, recipe="pretrain")
    trainer.crash_after = crash_after
    return trainer.train()


def test_resume_after_a_crash_reaches_the_same_weights(tiny: dict[str, Any], tmp_path: Path) -> None:
    config = _config(
        tiny["ws"], "train.pretrain.steps=4", "train.pretrain.checkpoint_every=1", "train.pretrain.keep_checkpoints=3"
    )
    straight = train("pretrain", config, tiny["data"], out=str(tmp_path / "a"), base=tiny["ae"], progress=False)
    with pytest.raises(_Crash):
        _run(_CrashingTrainer, config, tiny["data"], str(tmp_path / "b"), tiny["ae"], crash_after=2)
    resumed = train("pretrain", config, tiny["data"], out=str(tmp_path / "b"), base=tiny["ae"], progress=False)
    assert resumed.resumed_from == 2 and resumed.steps == 4
    assert_same_weights(unet_weights(straight.model_uri), unet_weights(resumed.model_uri))


@pytest.mark.parametrize("damage", ["corrupt", "partial"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous(
    tiny: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    config = _config(
        tiny["ws"], "train.pretrain.steps=4", "train.pretrain.checkpoint_every=1", "train.pretrain.keep_checkpoints=3"
    )
    out = tmp_path / "run"
    with pytest.raises(_Crash):
        _run(_CrashingTrainer, config, tiny["data"], str(out), tiny["ae"], crash_after=3)
    checkpoints = open_store(str(out / "checkpoints"))
    assert checkpoints.get_bytes("latest") == b"step-00000003"
    if damage == "corrupt":  # bytes damaged on disk after publishing
        victim = next(o for o in checkpoints.list("step-00000003/") if o.key.endswith("model_states.pt"))
        path = Path(checkpoints.root, victim.key)
        path.write_bytes(path.read_bytes()[:-100] + b"\0" * 100)
    else:  # the writer died before the manifest: files without checkpoint.json
        checkpoints.delete("step-00000003/checkpoint.json")
    with caplog.at_level("WARNING"):
        resumed = train("pretrain", config, tiny["data"], out=str(out), base=tiny["ae"], progress=False)
    assert resumed.resumed_from == 2
    assert "step-00000003 is incomplete or corrupt" in caplog.text
    straight = train("pretrain", config, tiny["data"], out=str(tmp_path / "ref"), base=tiny["ae"], progress=False)
    assert_same_weights(unet_weights(straight.model_uri), unet_weights(resumed.model_uri))


def test_checkpoint_retention_keeps_the_newest(tiny: dict[str, Any], tmp_path: Path) -> None:
    config = _config(
        tiny["ws"], "train.pretrain.steps=4", "train.pretrain.checkpoint_every=1", "train.pretrain.keep_checkpoints=2"
    )
    train("pretrain", config, tiny["data"], out=str(tmp_path / "run"), base=tiny["ae"], progress=False)
    tags = {o.key.split("/")[0] for o in open_store(str(tmp_path / "run" / "checkpoints")).list("step-")}
    assert tags == {"step-00000003", "step-00000004"}


def test_checkpoint_from_another_config_is_refused(tiny: dict[str, Any], tmp_path: Path) -> None:
    config = _config(tiny["ws"], "train.pretrain.steps=3", "train.pretrain.checkpoint_every=1")
    with pytest.raises(_Crash):
        _run(_CrashingTrainer, config, tiny["data"], str(tmp_path / "run"), tiny["ae"], crash_after=1)
    other = _config(tiny["ws"], "train.pretrain.steps=3", "model.unet_channels=[16, 48]")
    with pytest.raises(CheckpointMismatchError, match="was written with .* resume with the same config"):
        train("pretrain", other, tiny["data"], out=str(tmp_path / "run"), base=tiny["ae"], progress=False)


class _BareEngine:
    """A plain PyTorch + AdamW loop behind the engine interface: the reference for ZeRO."""

    def __init__(self, model: torch.nn.Module, optimizer: Any, scheduler: Any, accum: int, clip: float) -> None:
        self.module, self.optimizer, self.scheduler, self.accum, self.clip = model, optimizer, scheduler, accum, clip
        self.micro = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accum).backward()

    def step(self) -> None:
        self.micro += 1
        if self.micro % self.accum:
            return
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def is_gradient_accumulation_boundary(self) -> bool:
        return (self.micro + 1) % self.accum == 0

    def zero_optimization_stage(self) -> int:
        return 0


class _LossRecorder(DiffusionTrainer):
    bare = False

    def build(self) -> None:
        if self.bare:
            import photogenic.train.trainer as trainer_module
            from photogenic.train.deepspeed_config import lr_lambda

            def bare_wrap(model: Any, train_cfg: Any, recipe: Any, name: str, world: int) -> Any:
                opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(recipe))
                return _BareEngine(model, opt, sched, recipe.grad_accum_steps, recipe.grad_clip), opt, sched

            original = trainer_module.wrap
            trainer_module.wrap = bare_wrap
            try:
                super().build()
            finally:
                trainer_module.wrap = original
        else:
            super().build()
        self.losses: list[float] = []

    def train_step(self, step: int) -> float:
        loss = super().train_step(step)
        self.losses.append(loss)
        return loss

    def _save(self, step: int) -> None:
        if not self.bare:
            super()._save(step)

    def _export(self, *args: Any) -> Any:
        return None


@pytest.mark.slow
def test_zero_stages_match_a_bare_pytorch_loop(tiny: dict[str, Any], tmp_path: Path) -> None:
    overrides = [
        "train.pretrain.steps=3",
        "train.pretrain.checkpoint_every=0",
        "train.pretrain.grad_accum_steps=2",
        "train.pretrain.ema_decay=0",
    ]
    losses = {}
    for stage in ("bare", 0, 1, 2, 3):  # ZeRO-0: DeepSpeed without ZeRO, the trainer clipping (one rank's default)
        config = _config(
            tiny["ws"], *overrides, f"train.zero_stage={0 if stage == 'bare' else stage}", "train.zero_on_one_rank=true"
        )
        trainer = _LossRecorder(
            config=config,
            data_uri=tiny["data"],
            out=str(tmp_path / f"z{stage}"),
            base=tiny["ae"],
            progress=False,
            recipe="pretrain",
        )
        trainer.bare = stage == "bare"
        trainer.train()
        losses[stage] = trainer.losses
    for stage in (0, 1, 2, 3):
        assert losses[stage] == pytest.approx(losses["bare"], rel=1e-4), (stage, losses)


def test_a_compiled_denoiser_trains_as_the_eager_one(tiny: dict[str, Any], tmp_path: Path) -> None:
    """`train.pretrain.compile` (torch.compile through DeepSpeed, inductor's C++ on CPU) computes the same
    training as eager PyTorch, up to float rounding, and its run keeps the eager module's weight names."""
    overrides = ["train.pretrain.steps=3", "train.pretrain.checkpoint_every=0", "train.pretrain.ema_decay=0"]
    runs = {}
    for compiled in (False, True):
        config = _config(tiny["ws"], *overrides, f"train.pretrain.compile={str(compiled).lower()}")
        trainer = _LossRecorder(
            config=config, data_uri=tiny["data"], out=str(tmp_path / f"c{compiled}"), base=tiny["ae"],
            progress=False, recipe="pretrain",
        )  # fmt: skip
        trainer.train()
        assert trainer.engine.is_compiled is compiled
        runs[compiled] = trainer
    assert runs[True].losses == pytest.approx(runs[False].losses, rel=1e-4)
    eager, compiled = (runs[c].model.state_dict() for c in (False, True))
    assert eager.keys() == compiled.keys()
    # Adam's first steps move a weight whose gradient is near zero by about the learning rate whichever way
    # rounding tips it, so weights are compared as a whole, and by what the two models compute.
    flat = {c: torch.cat([v.flatten().float() for v in sd.values()]) for c, sd in ((False, eager), (True, compiled))}
    assert (flat[True] - flat[False]).norm() < 1e-3 * flat[False].norm()
    unet = runs[False].model
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size, generator=g)
    context = torch.randn(2, 4, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        out = {c: runs[c].model(x, torch.tensor([10, 500]), encoder_hidden_states=context).sample for c in runs}
    torch.testing.assert_close(out[True], out[False], rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16 (avx512_bf16 or AMX), which the test needs")
def test_bf16_on_cpu_runs_the_forward_in_bf16_and_keeps_fp32_weights(tiny: dict[str, Any], tmp_path: Path) -> None:
    """`train.precision=bf16` on CPU: the denoiser's convolutions compute in bf16 under autocast while its
    weights, gradients and optimizer stay fp32, and the training follows the fp32 one up to bf16 rounding."""
    overrides = ["train.pretrain.steps=3", "train.pretrain.checkpoint_every=0", "train.pretrain.ema_decay=0"]
    seen: list[torch.dtype] = []

    class Recorder(_LossRecorder):
        def build(self) -> None:
            super().build()
            self.model.conv_in.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))

    runs = {}
    for precision in ("fp32", "bf16"):
        seen.clear()
        trainer = Recorder(
            config=_config(tiny["ws"], *overrides, f"train.precision={precision}"), data_uri=tiny["data"],
            out=str(tmp_path / precision), base=tiny["ae"], progress=False, recipe="pretrain",
        )  # fmt: skip
        trainer.train()
        assert seen and set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}, precision
        assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
        runs[precision] = trainer
    assert runs["bf16"].losses == pytest.approx(runs["fp32"].losses, rel=0.05)
    assert runs["bf16"].losses != runs["fp32"].losses  # a different computation, not fp32 under another name


def test_bf16_on_a_cpu_without_it_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from photogenic.train.deepspeed_config import cpu_autocast, use_bf16

    train = load_config("tiny", overrides=["train.precision=bf16"]).train
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="'train.precision' is 'bf16'.*avx512_bf16"):
        cpu_autocast(train, torch.device("cpu"))
    with pytest.raises(ConfigError, match="'train.precision' is 'bf16'"):
        use_bf16(train)
    auto = load_config("tiny").train
    assert not cpu_autocast(auto, torch.device("cpu")) and not use_bf16(auto)  # auto: fp32 on CPU


def test_compiling_the_autoencoder_is_a_clear_error(tiny: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="train.autoencoder.compile"):  # when the config loads, before any work
        _config(tiny["ws"], "train.autoencoder.compile=true", "train.autoencoder.steps=1")


def test_a_runs_identity_is_its_inputs_its_recipe_and_the_shared_settings(tmp_path: Path) -> None:
    """Tuning one recipe must not send the others to train again; what does change a result must."""
    recipes = ("autoencoder", "pretrain", "quality_tune")

    store = tmp_path / "versions"
    versions = {name: _version_at(store / name, name) for name in ("data", "base", "judges", "haystack", "other")}

    def uris(*overrides: str, rehearsal: str | None = None) -> dict[str, str]:
        config = tiny_config(tmp_path, *overrides)
        return {
            r: run_uri(r, config, versions["data"], str(store / "base"), str(store / "judges"), rehearsal=rehearsal)
            for r in recipes
        }

    base = uris()
    qt_lr = uris("train.quality_tune.learning_rate=3e-4")
    assert qt_lr["quality_tune"] != base["quality_tune"]
    assert {r: qt_lr[r] for r in recipes[:2]} == {r: base[r] for r in recipes[:2]}
    pretrain_steps = uris("train.pretrain.steps=7")
    assert [pretrain_steps[r] == base[r] for r in recipes] == [True, False, True]
    seed = uris("train.seed=1")
    assert all(seed[r] != base[r] for r in recipes)
    # the autoencoder is built from its own model fields only: a U-Net change keeps it, a latent change not
    unet = uris("model.attention_levels=1", "model.unet_channels=[16,16]")
    assert [unet[r] == base[r] for r in recipes] == [True, False, False]
    assert all(v != base[r] for r, v in uris("model.latent_channels=4").items())
    # a U-Net builder that makes a different network of the same settings retrains the diffusion recipes
    with mock.patch("photogenic.models.build.UNET_REVISION", -1):
        assert [v == base[r] for r, v in uris().items()] == [True, False, False]
    assert uris("train.collective_timeout_s=5") == base
    # quality-tuning picks its checkpoint by images drawn with the evaluation's sampler
    sampler = uris("evaluate.sampling_steps=3")
    assert [sampler[r] == base[r] for r in recipes] == [True, True, False]
    assert (
        uris("evaluate.sampling_steps=3", "train.quality_tune.validate_every=0")["quality_tune"]
        == uris("train.quality_tune.validate_every=0")["quality_tune"]
    )
    # rehearsal: off, a rehearsal set changes nothing; on, the fraction and the rehearsal set are the
    # quality-tuning run's inputs
    assert uris(rehearsal=versions["haystack"]) == base
    rehearsed = uris("train.quality_tune.rehearsal_fraction=0.25", rehearsal=versions["haystack"])
    assert [rehearsed[r] == base[r] for r in recipes] == [True, True, False]
    other_set = uris("train.quality_tune.rehearsal_fraction=0.25", rehearsal=versions["other"])
    assert other_set["quality_tune"] != rehearsed["quality_tune"]


def _version_at(root: Path, content: str, kind: str = "dataset") -> str:
    """Publish a one-object manifest holding `content` at `root`; returns the manifest's URI."""
    from photogenic.manifest import Manifest, ObjectRef, publish
    from photogenic.storage import open_store

    store = open_store(str(root))
    ref = ObjectRef.of(store.put_bytes("data.bin", content.encode()))
    return publish(Manifest(kind=kind, root=store.root, objects=(ref,)), store.uri("manifest.json"))


def test_a_runs_identity_follows_its_inputs_content_not_their_uris(tmp_path: Path) -> None:
    """The same dataset copied to another place is the same run; new data written over an old URI is not."""
    config = tiny_config(tmp_path)
    here = _version_at(tmp_path / "here", "samples v1")
    there = _version_at(tmp_path / "there", "samples v1")
    base = _version_at(tmp_path / "base", "weights", "model")
    first = run_uri("pretrain", config, here, str(tmp_path / "base"), None)
    assert run_uri("pretrain", config, there, str(tmp_path / "base"), None) == first
    _version_at(tmp_path / "here", "samples v2")
    assert run_uri("pretrain", config, here, str(tmp_path / "base"), None) != first
    _version_at(tmp_path / "base", "other weights", "model")
    assert run_uri("pretrain", config, there, base.rsplit("/", 1)[0], None) != first


def test_unet_attention_heads_are_as_wide_as_configured(tmp_path: Path) -> None:
    """`model.attention_head_dim` is a head's width in every attention layer, self and cross."""
    from photogenic.models import build_unet

    model = tiny_config(tmp_path).model
    unet = build_unet(model, 8, 24)
    blocks = [b for b in (*unet.down_blocks, unet.mid_block, *unet.up_blocks) if hasattr(b, "attentions")]
    layers = [a for b in blocks for t in b.attentions for blk in t.transformer_blocks for a in (blk.attn1, blk.attn2)]
    assert len(layers) >= 4
    assert {a.inner_dim // a.heads for a in layers} == {model.attention_head_dim}
    assert {a.heads for a in layers} == {c // model.attention_head_dim for c in model.unet_channels}


def test_rehearsal_fraction_of_every_batch_comes_from_the_rehearsal_set(
    tiny: dict[str, Any], rehearsal_set: str, tmp_path: Path
) -> None:
    """Rehearsal: a fixed share of each micro-batch is drawn from the rehearsal set (its own captions and
    latents, its own seeded order), the rest from the training set, and the run trains and exports."""
    rehearsal = rehearsal_set
    config = _config(tiny["ws"], "train.pretrain.rehearsal_fraction=0.5")
    trainer = DiffusionTrainer(
        config=config,
        data_uri=tiny["data"],
        out=str(tmp_path / "run"),
        base=tiny["ae"],
        progress=False,
        recipe="pretrain",
        rehearsal=rehearsal,
    )
    result = trainer.train()
    assert result.steps == config.train.pretrain.steps and Path(result.model_uri, "unet").is_dir()
    own, rehearsed = trainer.data, trainer.rehearsal_data
    assert rehearsed is not None and rehearsed.keys != own.keys
    assert len(trainer.latents) == len(trainer.captions) == len(own) + len(rehearsed)
    assert trainer.captions[len(own) :] == rehearsed.captions
    count = trainer.micro // 2
    seen: set[int] = set()
    for step in range(6):
        idx = trainer.batch_indices(step, 0)
        assert len(idx) == trainer.micro
        assert torch.equal(idx, trainer.batch_indices(step, 0))  # a pure function of the step: resumable
        assert (idx[:-count] < len(own)).all() and (idx[-count:] >= len(own)).all()
        assert (idx < len(own) + len(rehearsed)).all()
        seen.update((idx[-count:] - len(own)).tolist())
    assert len(seen) == min(6 * count, len(rehearsed))  # an epoch-wise permutation: no sample twice
    # the paper's recipe, rehearsal off, draws its batches exactly as before the option existed
    plain = DiffusionTrainer(
        config=_config(tiny["ws"]), data_uri=tiny["data"], out="", base=tiny["ae"], recipe="pretrain"
    )
    plain.data, plain.micro, plain.dist, plain.rehearsal_data, plain.rehearsal_count = (
        own,
        trainer.micro,
        trainer.dist,
        None,
        0,
    )
    assert torch.equal(plain.batch_indices(3, 0), own.indices(3, 0, trainer.micro, 1, config.train.seed))


def test_guidance_preservation_holds_the_base_models_guidance(
    tiny: dict[str, Any], rehearsal_set: str, pretrained: str, tmp_path: Path
) -> None:
    """The preservation term is zero while the denoiser is still the base model, positive once it has
    moved, and the base copy it is compared with stays frozen."""
    config = _config(
        tiny["ws"],
        "train.quality_tune.guidance_preservation=1",
        "train.quality_tune.validate_every=0",
        "train.quality_tune.learning_rate=1e-2",
    )

    def quality_tuning() -> DiffusionTrainer:
        return DiffusionTrainer(
            config=config,
            data_uri=tiny["data"],
            out=str(tmp_path / "qt"),
            base=pretrained,
            progress=False,
            recipe="quality_tune",
            rehearsal=rehearsal_set,
        )

    def preservation_term(trainer: DiffusionTrainer) -> float:
        batch = trainer.batch_indices(0, 0)
        with torch.no_grad():
            total = float(trainer.compute_loss(batch, 0, 0))
            trainer.preserve_count, count = 0, trainer.preserve_count
            denoising = float(trainer.compute_loss(batch, 0, 0))
        trainer.preserve_count = count
        return total - denoising

    fresh = quality_tuning()
    fresh.build()
    assert fresh.preserve_count == 1 and fresh.teacher is not None
    assert len(fresh.latents) == len(fresh.data)  # the rehearsal set lends captions only: no pixels encoded
    assert abs(preservation_term(fresh)) < 1e-6
    trained = quality_tuning()
    trained.train()
    assert trained.teacher is not None
    assert_same_weights(trained.teacher.state_dict(), unet_weights(pretrained), atol=0)
    term = preservation_term(trained)
    assert term > 1e-6
    assert trained.step_metrics() == {"guidance_preservation_loss": pytest.approx(term, rel=1e-4)}  # logged


def test_frozen_params_stay_bit_identical_and_the_rest_trains(
    tiny: dict[str, Any], pretrained: str, tmp_path: Path
) -> None:
    """Quality-tuning with the cross-attention's caption keys and values frozen: exactly those tensors
    keep the base model's values (also in the EMA export), every other one moves."""
    frozen = r"attn2\.to_[kv]\."
    config = _config(
        tiny["ws"],
        f"train.quality_tune.frozen_params={frozen}",
        "train.quality_tune.validate_every=0",
        "train.quality_tune.learning_rate=1e-2",
    )
    tuned = train("quality_tune", config, tiny["data"], out=str(tmp_path / "qt"), base=pretrained, progress=False)
    before, after = unet_weights(pretrained), unet_weights(tuned.model_uri)
    kept = {k for k in before if re.search(frozen, k)}
    assert kept and all(k.endswith(("to_k.weight", "to_v.weight")) and ".attn2." in k for k in kept)
    assert_same_weights({k: after[k] for k in kept}, {k: before[k] for k in kept}, atol=0)
    moved = [k for k in before if k not in kept and not torch.equal(before[k], after[k])]
    assert len(moved) == len(before) - len(kept)


def test_quality_tuning_by_default_tunes_the_decoder_side_of_the_denoiser() -> None:
    """The QT recipe's default `frozen_params` on the demo U-Net: the encoder half, the middle block and
    the caption's ways in (cross-attention keys and values, the pooled-caption embedding) stay frozen;
    the decoder's ResNets, attention (but its keys and values), upsamplers and output layers train."""
    config = load_config("demo")
    unet = build_unet(config.model, latent_size(config.model, config.world.image_size), 384)
    frozen = set(freeze_matching(unet, config.train.quality_tune.frozen_params, "train.quality_tune.frozen_params"))
    trained = [name for name, p in unet.named_parameters() if p.requires_grad]
    assert trained and all(name not in frozen for name in trained)
    assert all(name.startswith(("up_blocks.", "conv_norm_out.", "conv_out.")) for name in trained)
    assert not any(".attn2.to_k." in name or ".attn2.to_v." in name for name in trained)
    assert any(name.startswith("up_blocks.0.resnets.") for name in trained)
    assert any(name.startswith("up_blocks.0.attentions.") and ".attn2.to_q." in name for name in trained)
    assert {name.split(".")[0] for name in frozen} >= {"conv_in", "time_embedding", "add_embedding", "down_blocks"}


@pytest.mark.parametrize(
    ("pattern", "error"),
    [("nothing_is_called_this", "matches none of"), (".", "matches all of"), ("attn2[", "is not a regular expression")],
)
def test_frozen_params_errors_name_the_setting(tiny: dict[str, Any], tmp_path: Path, pattern: str, error: str) -> None:
    config = _config(tiny["ws"], f"train.pretrain.frozen_params={pattern}")
    with pytest.raises(ConfigError, match=rf"'train.pretrain.frozen_params' \('.*'\) {error}"):
        train("pretrain", config, tiny["data"], out=str(tmp_path / "x"), base=tiny["ae"], progress=False)


def test_rehearsal_counts_spread_the_batch_share_over_the_ranks() -> None:
    assert rehearsal_counts(64, 1, 0.05) == [3] and rehearsal_counts(64, 1, 0.1) == [6]
    spread = rehearsal_counts(8, 8, 0.05)  # a batch of 64 on 8 ranks: 3 rehearsed samples in all
    assert sum(spread) == 3 and set(spread) == {0, 1}
    assert rehearsal_counts(4, 2, 0.25) == [1, 1] and rehearsal_counts(4, 1, 0.0) == [0]


def test_rehearsal_errors_name_the_setting(tiny: dict[str, Any], tmp_path: Path) -> None:
    on = "train.pretrain.rehearsal_fraction=0.5"
    with pytest.raises(ConfigError, match=r"'train.pretrain.rehearsal_fraction' \(0.5\) needs --rehearsal-data"):
        train(
            "pretrain", _config(tiny["ws"], on), tiny["data"], out=str(tmp_path / "a"), base=tiny["ae"], progress=False
        )
    with pytest.raises(ConfigError, match="recipe autoencoder does not rehearse data"):
        config = _config(tiny["ws"], "train.autoencoder.rehearsal_fraction=0.5")
        train("autoencoder", config, tiny["data"], out=str(tmp_path / "b"), rehearsal=tiny["data"], progress=False)

    def pretrain_with_rehearsal(override: str, out: str) -> None:
        config, data = _config(tiny["ws"], override), tiny["data"]
        train("pretrain", config, data, out=str(tmp_path / out), base=tiny["ae"], rehearsal=data, progress=False)

    with pytest.raises(ConfigError, match="must leave at least one sample to each side"):
        pretrain_with_rehearsal("train.pretrain.rehearsal_fraction=0.99", "c")
    with pytest.raises(ConfigError, match="has no denoiser"):
        pretrain_with_rehearsal("train.pretrain.guidance_preservation=1", "d")


def test_impossible_configs_are_clear_errors(tiny: dict[str, Any], tmp_path: Path) -> None:
    config = _config(tiny["ws"], "train.pretrain.global_batch_size=6", "train.pretrain.grad_accum_steps=4")
    with pytest.raises(
        ConfigError, match=r"'train.pretrain.global_batch_size' \(6\) must be divisible by world size x"
    ):
        train("pretrain", config, tiny["data"], out=str(tmp_path / "x"), base=tiny["ae"], progress=False)
    with pytest.raises(ConfigError, match=r"'train.zero_stage' must be one of \[0, 1, 2, 3\], got 4"):
        _config(tiny["ws"], "train.zero_stage=4")
    with pytest.raises(ConfigError, match="needs --base"):
        train("pretrain", _config(tiny["ws"]), tiny["data"], out=str(tmp_path / "y"), progress=False)


def test_cli_bad_model_uris_are_one_clear_line(tiny: dict[str, Any], tmp_path: Path) -> None:
    env = child_env(tiny["ws"])
    gen = subprocess.run(
        [PHOTOGENIC, "generate", "--model", str(tmp_path), "--prompt", "x", "--preset", "tiny"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert gen.returncode == 1 and f"Error: no Photogenic model at {tmp_path}" in gen.stderr
    base = subprocess.run(
        [PHOTOGENIC, "train", "pretrain", "--data", tiny["data"], "--base", str(tmp_path / "none"), "--preset", "tiny"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert base.returncode == 1 and "no Photogenic model at" in base.stderr and "Traceback" not in base.stderr


def test_generate_writes_a_grid(tiny: dict[str, Any], pretrained: str, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "grid.png"
    env = child_env(tiny["ws"])
    done = subprocess.run(
        [
            PHOTOGENIC,
            "generate",
            "--model",
            pretrained,
            "--prompt",
            "a red circle on a sky background",
            "--prompt",
            "a blue star on a night background",
            "-n",
            "3",
            "--steps",
            "2",
            "-o",
            str(out),
            "--preset",
            "tiny",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (3 * 64, 2 * 64)  # 3 seeds x 2 prompts, 32 px upscaled 2x


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_resumes_and_matches(tiny: dict[str, Any], tmp_path: Path) -> None:
    """Kill `photogenic train` with SIGKILL after its second checkpoint; the restarted command resumes
    from the last complete checkpoint and ends with the weights of an uninterrupted run."""
    overrides = ["train.pretrain.steps=12", "train.pretrain.checkpoint_every=2", "train.pretrain.keep_checkpoints=3"]
    env = child_env(tiny["ws"])
    cmd = [
        PHOTOGENIC,
        "train",
        "pretrain",
        "--data",
        tiny["data"],
        "--base",
        tiny["ae"],
        "--preset",
        "tiny",
        *overrides,
    ]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while latest_checkpoint_step(out / "checkpoints") < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = latest_checkpoint_step(out / "checkpoints")
    assert 4 <= killed_at < 12, f"the run was not killed mid-way (latest checkpoint: step {killed_at})"
    restarted = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    result = json.loads(restarted.stdout)
    assert result["steps"] == 12 and result["resumed_from"] >= killed_at
    straight = subprocess.run([*cmd, "--out", str(tmp_path / "straight")], env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert_same_weights(unet_weights(json.loads(straight.stdout)["model_uri"]), unet_weights(result["model_uri"]))


@pytest.mark.slow
def test_two_ranks_under_torchrun(tiny: dict[str, Any], tmp_path: Path) -> None:
    """ZeRO-2 across two gloo ranks on CPU: each rank writes its optimizer shard, rank 0 the model."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "ddp"
    env = child_env(tiny["ws"])
    done = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "photogenic",
            "train",
            "pretrain",
            "--data",
            tiny["data"],
            "--base",
            tiny["ae"],
            "--out",
            str(out),
            "--preset",
            "tiny",
            "train.pretrain.steps=3",
            "train.pretrain.checkpoint_every=2",
            "train.zero_stage=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["steps"] == 3
    names = {p.name for p in (out / "checkpoints" / "step-00000003").iterdir()}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= names
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_ema_update_is_the_libraries_ema_step_in_one_pass() -> None:
    """The trainer's one-`lerp` EMA gives diffusers' EMAModel.step, with its decay warm-up; frozen tensors
    keep the values they started with."""
    from diffusers.training_utils import EMAModel

    from photogenic.train.diffusion import ema_update

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    net[1].weight.requires_grad_(False)
    params = list(net.parameters())
    ours, theirs = EMAModel(params, decay=0.9), EMAModel(params, decay=0.9)
    for _ in range(20):
        with torch.no_grad():
            for p in params:
                if p.requires_grad:
                    p.add_(torch.randn_like(p))
        ema_update(ours, params)
        theirs.step(params)
    assert ours.optimization_step == theirs.optimization_step == 20
    assert ours.cur_decay_value == theirs.cur_decay_value < 0.9  # still warming up, as the library does
    for a, b in zip(ours.shadow_params, theirs.shadow_params, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(ours.shadow_params[0], params[0])  # an average, not a copy
