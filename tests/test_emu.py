"""The Emu method on the tiny preset: judges, the curation funnel, quality-tuning with early stopping,
and the pairwise evaluation. Shared stages are built once per module."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from photogenic.config import ConfigError
from photogenic.curate import FILTERS, ReviewNeeded, curate, parse_caption, pixel_features
from photogenic.evaluate import (
    agreement,
    benchmark_prompts,
    compare,
    evaluate,
    outcome_table,
    panel_pairs,
)
from photogenic.judges import load_judge, pairwise_agreement, render_labelled, train_judges
from photogenic.manifest import ObjectRef, publish, read_manifest
from photogenic.raters import export_pairs, import_votes
from photogenic.storage import join_uri, open_store
from photogenic.train.run import train
from photogenic.world import WorldConfig, labelled_renders
from tests.helpers import tiny_config

_config = tiny_config


@pytest.fixture(scope="module")
def emu(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_shared: dict[str, Any],
    tiny_pretrained: str,
    tiny_judges: dict[str, Any],
) -> dict[str, Any]:
    """This module's workspace; the shared tiny world, pretrained model and both judge sets (read only)."""
    ws = tmp_path_factory.mktemp("emu-ws")
    return {"ws": ws, "data": tiny_shared["data"], "pretrained": tiny_pretrained, "judges": tiny_judges}


# ------------------------------------------------------------------------------------------ judges


def test_judges_publish_validate_reload_and_reuse(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    result = emu["judges"]["evaluation"]
    assert result.uri != emu["judges"]["curation"].uri  # disjoint sets from different seeds
    for key in ("appeal_pairwise_agreement", "text_accuracy", "shape_accuracy", "concept_accuracy"):
        assert 0.0 <= result.metrics[key] <= 1.0
    judge = load_judge(result.uri, config)
    images, _ = labelled_renders(WorldConfig(seed=99, num_samples=8), 0, 8)
    again = load_judge(result.uri, config).score(images)
    assert np.array_equal(judge.score(images)["appeal"], again["appeal"])
    assert train_judges(config, "evaluation", out=result.uri).reused  # the same request where it was published


def test_judge_sets_are_rendered_from_different_seeds(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    meta = {p: load_judge(r.uri, config).meta["train_world"]["seed"] for p, r in emu["judges"].items()}
    assert meta["curation"] != meta["evaluation"] != config.world.seed


def test_judges_render_in_worker_processes_the_same_arrays_as_one_process() -> None:
    world = WorldConfig(seed=7, num_samples=1_234)  # not a multiple of the block size
    expected_images, expected_labels = labelled_renders(world, 0, world.num_samples)
    for workers in (1, 2):
        images, labels = render_labelled(world, workers=workers)
        assert images.shape == expected_images.shape and np.array_equal(images, expected_images)
        # the same layout too: torch picks its convolution algorithms (and their sums) by the strides
        assert images.flags.c_contiguous and images.strides == expected_images.strides
        assert labels.keys() == expected_labels.keys()
        assert all(np.array_equal(labels[k], expected_labels[k]) for k in labels)


def test_pairwise_agreement_counts_only_pairs_beyond_the_margin() -> None:
    truth = np.array([0.1, 0.2, 0.5, 0.9])
    assert pairwise_agreement(truth * 2, truth, margin=0.05) == 1.0
    assert pairwise_agreement(-truth, truth, margin=0.05) == 0.0
    with pytest.raises(ValueError, match="tie margin"):
        pairwise_agreement(truth, np.zeros(4), margin=0.05)


# ------------------------------------------------------------------------------------------ curation


def test_parse_caption_and_pixel_features() -> None:
    assert parse_caption("photo of a red star against sand") == {"shape": "star", "color": "red", "background": "sand"}
    assert parse_caption("IMG_1234.JPG") == {}
    rng = np.random.default_rng(0)
    flat = np.full((1, 3, 32, 32), 128, dtype=np.uint8)
    edge = flat.copy()
    edge[..., 8:24, 8:24] = 240
    noisy = np.clip(edge.astype(int) + rng.normal(0, 20, edge.shape), 0, 255).astype(np.uint8)
    f = {name: pixel_features(x) for name, x in (("flat", flat), ("edge", edge), ("noisy", noisy))}
    assert f["edge"]["sharpness"][0] > f["flat"]["sharpness"][0]
    assert f["noisy"]["noise"][0] > 10 * max(f["edge"]["noise"][0], 1e-4)
    assert f["flat"]["clipped"][0] == 0.0


def _rejected(uri: str) -> list[dict[str, Any]]:
    manifest = read_manifest(uri)
    with manifest.open("rejected.jsonl") as f:
        return [json.loads(line) for line in f]


def test_the_funnel_accounts_for_every_sample(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    result = curate(emu["data"], emu["judges"]["curation"].uri, config)
    counts = [n for _, n in result.funnel]
    assert counts == sorted(counts, reverse=True), result.funnel
    names = [n for n, _ in result.funnel]
    assert names[: len(FILTERS) + 2] == ["input", *FILTERS, "balance"]
    assert names[-3:] == ["generalists", "specialists", "held_out"]
    manifest = read_manifest(result.manifest_uri)
    rejected = _rejected(result.manifest_uri)
    source = read_manifest(emu["data"])
    assert manifest.counts["input"] == source.counts["clean"]
    assert manifest.counts["samples"] + len(rejected) == manifest.counts["input"]
    assert manifest.counts["samples"] == counts[-1] > 0
    assert all(r["reasons"] and r["stage"] in names for r in rejected)
    # the QT captions are the clean ones, and held-out concepts are gone
    from photogenic.data.shards import iter_dataset

    captions = [s["txt"].decode() for s in iter_dataset(manifest)]
    assert all(c.endswith(" background") and "star" not in c for c in captions)
    # the rehearsal set: what the automatic stage kept, with its web caption, less every sample whose caption
    # names a held-out concept or in which the curation judges see one
    rehearsal = read_manifest(result.rehearsal_uri)
    assert manifest.meta["rehearsal"] == result.rehearsal_uri
    web = {s["__key__"]: s["txt"].decode() for s in iter_dataset(source)}
    rehearsed = {s["__key__"]: s["txt"].decode() for s in iter_dataset(rehearsal)}
    assert len(rehearsed) == rehearsal.counts["samples"] <= dict(result.funnel)["balance"]
    assert all(web[k] == c for k, c in rehearsed.items())
    assert not any("star" in c for c in rehearsed.values())
    assert rehearsal.meta["funnel"][-1] == ["held_out", len(rehearsed)]
    again = curate(emu["data"], emu["judges"]["curation"].uri, config)
    assert again.reused and again.rehearsal_uri == result.rehearsal_uri


def _with_shuffled_oracle(data_uri: str, seed: int) -> str:
    """A copy of the dataset's manifest whose oracle sidecar has the verdicts shuffled between keys."""
    manifest = read_manifest(data_uri)
    store = manifest.store()
    with manifest.open("oracle.jsonl") as f:
        rows = [json.loads(line) for line in f]
    keys = [r["key"] for r in rows]
    random.Random(seed).shuffle(keys)
    body = "".join(json.dumps({**r, "key": k}) + "\n" for r, k in zip(rows, keys, strict=True)).encode()
    ref = ObjectRef.of(store.put_bytes("oracle-shuffled.jsonl", body))
    objects = tuple(o for o in manifest.objects if o.key != "oracle.jsonl") + (ref,)
    meta = {**manifest.meta, "sidecars": {**manifest.meta["sidecars"], "oracle": "oracle-shuffled.jsonl"}}
    copy = dataclasses.replace(manifest, objects=objects, meta=meta)
    return publish(copy, store.uri("manifest-shuffled.json"))


def test_curation_filters_never_see_the_oracle(emu: dict[str, Any], tmp_path: Path) -> None:
    """Shuffling the oracle sidecar changes who the (simulated) reviewers keep, never what the automatic
    filters and concept balancing decide."""
    config = _config(emu["ws"])
    automatic = {*FILTERS, "balance"}
    decisions = []
    for i, data in enumerate((emu["data"], _with_shuffled_oracle(emu["data"], seed=1))):
        result = curate(data, emu["judges"]["curation"].uri, config, out=str(tmp_path / f"c{i}"))
        decisions.append(
            (
                {
                    r["key"]: (r["stage"], r["reasons"])
                    for r in _rejected(result.manifest_uri)
                    if r["stage"] in automatic
                },
                [(n, k) for n, k in result.funnel if n in automatic],
            )
        )
    assert decisions[0] == decisions[1]
    assert decisions[0][0], "the automatic filters rejected nothing: the test would prove nothing"


def test_review_export_then_import(emu: dict[str, Any], tmp_path: Path) -> None:
    config = _config(emu["ws"], "curate.review=export")
    out = str(tmp_path / "review")
    with pytest.raises(ReviewNeeded, match="candidates for review"):
        curate(emu["data"], emu["judges"]["curation"].uri, config, out=out)
    candidates = json.loads(Path(out, "candidates.json").read_text())["candidates"]
    assert candidates and Path(out, "review.html").read_text().count("<img") == len(candidates)
    chosen = [c for c in candidates if "star" not in c["caption"]][:3]
    approved = [{"key": chosen[0]["key"], "caption": "a red circle on a sky background"}] + [
        c["key"] for c in chosen[1:]
    ]
    Path(tmp_path, "approved.json").write_text(json.dumps({"approved": approved}))
    config = _config(emu["ws"], "curate.review=import")
    result = curate(emu["data"], emu["judges"]["curation"].uri, config, approved=str(tmp_path / "approved.json"))
    assert result.funnel[-2] == ("review", 3)
    from photogenic.data.shards import iter_dataset

    kept = {s["__key__"]: s["txt"].decode() for s in iter_dataset(read_manifest(result.manifest_uri))}
    assert set(kept) <= {c["key"] for c in chosen}
    assert kept.get(chosen[0]["key"], "a red circle on a sky background") == "a red circle on a sky background"
    Path(tmp_path, "bad.json").write_text(json.dumps(["no-such-key"]))
    with pytest.raises(ConfigError, match="no-such-key"):
        curate(emu["data"], emu["judges"]["curation"].uri, config, approved=str(tmp_path / "bad.json"))


def test_simulated_review_needs_an_oracle_and_curation_its_own_judges(emu: dict[str, Any], tmp_path: Path) -> None:
    config = _config(emu["ws"])
    manifest = read_manifest(emu["data"])
    meta = {**manifest.meta, "sidecars": {k: v for k, v in manifest.meta["sidecars"].items() if k != "oracle"}}
    bare = publish(dataclasses.replace(manifest, meta=meta), manifest.store().uri("manifest-no-oracle.json"))
    with pytest.raises(ConfigError, match="oracle sidecar"):
        curate(bare, emu["judges"]["curation"].uri, config, out=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="curation needs its own"):
        curate(emu["data"], emu["judges"]["evaluation"].uri, config, out=str(tmp_path / "y"))


# ------------------------------------------------------------------------------------------ quality-tuning


def _files(model_uri: str) -> dict[str, str]:
    return {o.key: o.sha256 for o in read_manifest(join_uri(model_uri, "manifest.json")).objects}


def test_quality_tuning_changes_only_the_denoiser_and_stops_early(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    qt_data = curate(emu["data"], emu["judges"]["curation"].uri, config).manifest_uri
    result = train(
        "quality_tune", config, qt_data, base=emu["pretrained"], progress=False, judges=emu["judges"]["curation"].uri
    )
    before, after = _files(emu["pretrained"]), _files(result.model_uri)
    frozen = [k for k in before if k.startswith(("vae/", "text_encoder/")) and k.endswith(".safetensors")]
    frozen += [k for k in before if k.startswith("tokenizer/")]
    assert len(frozen) == 4 and all(before[k] == after[k] for k in frozen)  # weights and tokenizer, byte for byte
    for key in (k for k in before if k.startswith(("vae/", "text_encoder/")) and k.endswith("config.json")):
        a, b = (json.loads(Path(m, key).read_text()) for m in (emu["pretrained"], result.model_uri))
        assert {**a, "_name_or_path": ""} == {**b, "_name_or_path": ""}  # diffusers records the load path
    assert before["unet/diffusion_pytorch_model.safetensors"] != after["unet/diffusion_pytorch_model.safetensors"]
    meta = read_manifest(join_uri(result.model_uri, "manifest.json")).meta
    history = meta["early_stopping"]["history"]
    assert [step for step, _ in history] == [1, 2] or len(history) == 1 + config.train.quality_tune.patience
    assert meta["early_stopping"]["best_score"] == max(score for _, score in history)


def test_quality_tuning_rehearses_the_rehearsal_set_curated_beside_its_data(
    emu: dict[str, Any], tmp_path: Path
) -> None:
    """With `rehearsal_fraction` on and no --rehearsal-data, quality-tuning rehearses the curated set's own
    rehearsal set; a training set without one is a clear error. (Nothing is held out here: the tiny
    judges read most images as one shape, and rehearsal leaves out what they see of a held-out one.)"""
    config = _config(
        emu["ws"],
        "train.quality_tune.rehearsal_fraction=0.25",
        "train.quality_tune.validate_every=0",
        "curate.holdout_concepts=[]",
    )
    curated = curate(emu["data"], emu["judges"]["curation"].uri, _config(emu["ws"], "curate.holdout_concepts=[]"))
    result = train("quality_tune", config, curated.manifest_uri, base=emu["pretrained"], progress=False)
    assert read_manifest(join_uri(result.model_uri, "manifest.json")).meta["rehearsal_uri"] == curated.rehearsal_uri
    with pytest.raises(ConfigError, match=r"rehearsal_fraction' \(0.25\) needs --rehearsal-data.*no rehearsal set"):
        train("quality_tune", config, emu["data"], base=emu["pretrained"], out=str(tmp_path / "r"), progress=False)


def test_quality_tuning_with_validation_needs_judges(emu: dict[str, Any], tmp_path: Path) -> None:
    config = _config(emu["ws"])
    with pytest.raises(ConfigError, match="--judges"):
        train("quality_tune", config, emu["data"], base=emu["pretrained"], out=str(tmp_path / "r"), progress=False)


# ------------------------------------------------------------------------------------------ evaluation


def test_benchmark_covers_every_concept_and_flags_held_out_ones(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    prompts = benchmark_prompts(config)
    from photogenic.world import COLORS, SHAPES

    assert {(p.shape, p.color) for p in prompts} == {(s, c) for s in SHAPES for c in COLORS}
    assert any(p.paraphrase for p in prompts) and all(p.held_out == ("star" in p.text) for p in prompts)
    assert len({p.text for p in prompts}) == len(prompts)


def test_outcome_table_and_compare_count_wins_ties_and_losses(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    outcomes = np.array([1, 1, 1, 0, -1, 1])
    table = outcome_table(outcomes, np.arange(6), samples=500)
    assert table["win"] == pytest.approx(4 / 6) and table["tie"] == pytest.approx(1 / 6)
    assert table["win_lo"] <= table["win"] <= table["win_hi"]
    assert table["net"] == pytest.approx(3 / 6) and table["net_lo"] <= table["net"] <= table["net_hi"]
    even = outcome_table(np.array([1, -1] * 20), np.arange(40), samples=500)
    assert even["net"] == 0 and even["net_lo"] < 0 < even["net_hi"]
    prompts = benchmark_prompts(config)[:4]
    a = np.array([0.9, 0.5, 0.5, 0.1])
    tables, rows = compare(a, a - 0.2, np.array([1, 1, 0, 0]), np.array([1, 0, 1, 0]), prompts, 1, config, 0.05)
    assert tables["appeal"]["win"] == 1.0
    assert (tables["faithfulness"]["win"], tables["faithfulness"]["tie"], tables["faithfulness"]["loss"]) == (
        0.25,
        0.5,
        0.25,
    )
    assert [r["appeal"] for r in rows] == [1, 1, 1, 1]


def test_a_model_against_itself_ties(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    result = evaluate(emu["pretrained"], emu["pretrained"], emu["judges"]["evaluation"].uri, config)
    m = result.metrics
    assert m["appeal_tie"] == 1.0 and m["faithfulness_tie"] == 1.0  # the panel, and the judges too
    assert m["judge_appeal_tie"] == 1.0 and m["judge_faithfulness_tie"] == 1.0
    # the tiny model draws static: the panel explains none of it, so its verdict is not trustworthy
    assert m["panel_explained_a"] < 0.5 and not result.trustworthy
    report = Path(result.report_uri).read_text()
    assert "NOT TRUSTWORTHY" in report and "Rater of record: the ground-truth panel" in report
    assert report.count("<img") >= 1


def test_evaluation_on_a_users_prompts_and_the_dev_split(emu: dict[str, Any], tmp_path: Path) -> None:
    """`--prompts FILE`: the user's prompts with their categories, each category a row; the dev split has
    its own prompts and seeds; the curation judges' agreement with the others is reported."""
    config = _config(emu["ws"])
    prompts = tmp_path / "mine.jsonl"
    prompts.write_text(
        '{"prompt": "a red star on a sky background", "category": "held"}\n'
        '{"prompt": "a blue circle", "category": "simple"}\n{"prompt": "green", "category": "simple"}\n'
    )
    mine = evaluate(
        emu["pretrained"],
        emu["pretrained"],
        emu["judges"]["evaluation"].uri,
        config,
        prompts_file=prompts,
        curation_judges_uri=emu["judges"]["curation"].uri,
    )
    doc = json.loads(open_store(mine.manifest_uri.rsplit("/", 1)[0]).get_bytes("results.json"))
    assert doc["split"] == "custom" and [p["prompt"] for p in doc["pairs"]][::1] == [
        "a red star on a sky background",
        "a blue circle",
        "green",
    ]
    assert doc["tables"]["appeal/category/simple"]["n"] == 2 and doc["tables"]["appeal/held_out"]["n"] == 1
    m = mine.metrics
    assert 0 <= m["curation_vs_evaluation_judges_faithfulness_agreement"] <= 1
    assert 0 <= m["judge_panel_faithfulness_agreement"] <= 1 and m["judges_valid"] in (0.0, 1.0)
    assert "appeal/category/simple" in Path(mine.report_uri).read_text()
    dev = evaluate(emu["pretrained"], emu["pretrained"], emu["judges"]["evaluation"].uri, config, split="dev")
    assert dev.manifest_uri != mine.manifest_uri and read_manifest(dev.manifest_uri).meta["split"] == "dev"
    (tmp_path / "cats.txt").write_text("a red star\na photo of a cat\n")
    with pytest.raises(ConfigError, match=r"cats.txt, prompt 2 \('a photo of a cat'\) names no shape, colour"):
        evaluate(
            emu["pretrained"],
            emu["pretrained"],
            emu["judges"]["evaluation"].uri,
            config,
            prompts_file=tmp_path / "cats.txt",
        )


def test_the_two_judge_sets_are_independent(emu: dict[str, Any]) -> None:
    """Own renders, own initial weights and batch order, and a different network."""
    metas = {k: read_manifest(v.manifest_uri).meta for k, v in emu["judges"].items()}
    cur, ev = metas["curation"], metas["evaluation"]
    assert cur["seed"] != ev["seed"] and cur["train_world"]["seed"] != ev["train_world"]["seed"]
    assert (cur["width"], cur["blocks"]) != (ev["width"], ev["blocks"])
    assert set(load_judge(emu["judges"]["curation"].uri).net.state_dict()) != set(
        load_judge(emu["judges"]["evaluation"].uri).net.state_dict()
    )


def test_evaluation_refuses_the_curation_judges(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    with pytest.raises(ConfigError, match="evaluation judges"):
        evaluate(emu["pretrained"], emu["pretrained"], emu["judges"]["curation"].uri, config)


def test_store_layout_of_an_evaluation(emu: dict[str, Any]) -> None:
    config = _config(emu["ws"])
    args = (emu["pretrained"], emu["pretrained"], emu["judges"]["evaluation"].uri, config)
    evaluate(*args)  # made here, or by an earlier test of this module: the test does not depend on which
    result = evaluate(*args)
    assert result.reused
    names = {o.key for o in read_manifest(result.manifest_uri).objects}
    n = len(benchmark_prompts(config)) * config.evaluate.seeds_per_prompt
    assert {"results.json", "report.html", "side_by_side.png"} <= names
    assert sum(k.startswith("images/") for k in names) == 2 * n
    doc = json.loads(open_store(result.manifest_uri.rsplit("/", 1)[0]).get_bytes("results.json"))
    assert len(doc["pairs"]) == n


def test_human_votes_round_trip(emu: dict[str, Any], tmp_path: Path) -> None:
    """Export pairs for raters with sides shuffled, vote as a rater who always prefers A, import: the
    table credits A every time, whatever side it was shown on."""
    config = _config(emu["ws"])
    result = evaluate(emu["pretrained"], emu["pretrained"], emu["judges"]["evaluation"].uri, config)
    folder = export_pairs(result.manifest_uri, tmp_path / "raters", config)
    doc = json.loads((folder / "pairs.json").read_text())
    assert {s["left"] for s in doc["_sides"].values()} == {"a", "b"}  # both orders occur
    assert all((folder / p["left"]).exists() and (folder / p["right"]).exists() for p in doc["pairs"])
    votes = []
    for p in doc["pairs"]:
        a_side = "left" if doc["_sides"][str(p["pair"])]["left"] == "a" else "right"
        votes.append({"pair": p["pair"], "appeal": a_side, "faithfulness": "both" if p["pair"] % 2 else a_side})
    tables = import_votes(folder / "pairs.json", votes, config)
    assert tables["appeal"]["win"] == 1.0 and tables["appeal"]["loss"] == 0.0
    (tmp_path / "votes.json").write_text(json.dumps(votes))
    from click.testing import CliRunner

    from photogenic.cli import main

    args = ["raters", "import", str(folder / "pairs.json"), str(tmp_path / "votes.json"), "-p", "tiny"]
    cli = CliRunner().invoke(main, [*args, "-w", str(emu["ws"])], catch_exceptions=False)
    assert cli.exit_code == 0 and json.loads(cli.stdout)["appeal"]["win"] == 1.0
    assert 0 < tables["faithfulness"]["tie"] < 1 and tables["faithfulness"]["loss"] == 0.0
    with pytest.raises(ConfigError, match="unknown pair"):
        import_votes(folder / "pairs.json", [{"pair": 10**6, "appeal": "left", "faithfulness": "both"}], config)
    with pytest.raises(ConfigError, match="appeal vote"):
        import_votes(folder / "pairs.json", [{"pair": 0, "appeal": "up", "faithfulness": "both"}], config)


# ------------------------------------------------------------------------------------------ existing models


def _tiny_clip_tokenizer(folder: Path) -> Any:
    """A real CLIP BPE tokenizer over a tiny hand-written vocabulary (no hub access)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = ["a", "red", "blue", "circle", "square", "on", "sky", "sand", "background", "star", "of"]
    chars = sorted({c for w in words for c in w})
    vocab = chars + [f"{c}</w>" for c in chars] + [f"{w}</w>" for w in words]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def _tiny_sd15(folder: Path) -> Path:
    """A randomly initialised Stable Diffusion 1.5-layout pipeline at 32 px, saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
    )
    text = CLIPTextModel(
        CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2, vocab_size=64)
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=vae,
        unet=unet,
        text_encoder=text,
        tokenizer=_tiny_clip_tokenizer(folder.parent / "tok"),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder


def _tiny_clip_judges(folder: Path) -> tuple[Path, Path]:
    """A random CLIP (with processor) and a random LAION-layout aesthetic MLP saved as a .pth."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from photogenic.judges import AestheticMLP

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "vocab_size": 64,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder / "clip")
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=_tiny_clip_tokenizer(folder / "tok")).save_pretrained(
        folder / "clip"
    )
    torch.save(AestheticMLP(16).state_dict(), folder / "aesthetic.pth")
    return folder / "clip", folder / "aesthetic.pth"


def test_existing_sd15_model_is_quality_tuned_and_evaluated_with_clip_judges(
    emu: dict[str, Any], tmp_path: Path
) -> None:
    """The path for users' own models: import a Stable Diffusion 1.5-layout folder, quality-tune it with its
    own text encoder and tokenizer, export it in its own pipeline class, and evaluate it with imported
    real-image judges (aesthetic MLP on CLIP embeddings, CLIP score). Everything is randomly initialised
    and built here: no hub access."""
    from diffusers import StableDiffusionPipeline

    from photogenic.judges import ClipJudge, import_clip_judges
    from photogenic.models.io import import_model

    config = _config(emu["ws"], "train.quality_tune.validate_every=0")
    base = str(tmp_path / "store" / "sd15")
    import_model(str(_tiny_sd15(tmp_path / "sd15-src")), base, config)
    qt_data = curate(emu["data"], emu["judges"]["curation"].uri, config).manifest_uri
    tuned = train("quality_tune", config, qt_data, base=base, out=str(tmp_path / "qt"), progress=False)
    before, after = _files(base), _files(tuned.model_uri)
    assert before["text_encoder/model.safetensors"] == after["text_encoder/model.safetensors"]
    assert before["unet/diffusion_pytorch_model.safetensors"] != after["unet/diffusion_pytorch_model.safetensors"]
    pipe = StableDiffusionPipeline.from_pretrained(tuned.model_uri, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe(["a red circle"], num_inference_steps=2, output_type="np").images.shape == (1, 32, 32, 3)

    clip, mlp = _tiny_clip_judges(tmp_path / "judge-src")
    judges = import_clip_judges(str(clip), str(mlp), str(tmp_path / "store" / "clip-judges"), config)
    judge = load_judge(judges.rsplit("/", 1)[0], config)
    assert isinstance(judge, ClipJudge)
    result = evaluate(tuned.model_uri, base, judges.rsplit("/", 1)[0], config, out=str(tmp_path / "eval"))
    m = result.metrics
    assert m["appeal_win"] + m["appeal_tie"] + m["appeal_loss"] == pytest.approx(1.0)
    assert m["faithfulness_mean_a"] >= 0 and not result.trustworthy
    assert "NOT VALIDATED" in Path(result.report_uri).read_text()


def test_import_refuses_what_is_not_a_text_to_image_model(emu: dict[str, Any], tmp_path: Path) -> None:
    from photogenic.manifest import ManifestError
    from photogenic.models.io import import_model

    config = _config(emu["ws"])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model_index.json").write_text("{}")
    (tmp_path / "half" / "unet").mkdir()
    (tmp_path / "half" / "unet" / "config.json").write_text("{}")
    with pytest.raises(ManifestError, match="lacks vae, text_encoder, tokenizer, scheduler"):
        import_model(str(tmp_path / "half"), str(tmp_path / "out"), config)
    with pytest.raises(ManifestError, match="no model_index.json"):
        import_model(str(tmp_path / "store"), str(tmp_path / "out"), config)


@pytest.mark.slow
def test_deliberately_degraded_images_lose(tmp_path: Path) -> None:
    """Judges trained for a minute (not the tiny ones) compare, prompt by prompt, a clean well-composed
    render of the prompted scene (A) with the same scene degraded the way the haystack degrades pictures
    (B: under-exposed, blurred, noisy, JPEG-compressed): A wins on appeal far more often than it loses,
    and it is never less faithful overall."""
    from photogenic.evaluate import judge_pairs
    from photogenic.world import Scene, render_scene

    config = _config(
        tmp_path,
        "judges.train_samples=3000",
        "judges.holdout_samples=500",
        "judges.epochs=5",
        "judges.evaluation_width=16",
    )
    judge = load_judge(train_judges(config, "evaluation").uri, config)
    prompts = benchmark_prompts(config)[::4]
    good, bad = [], []
    for i, p in enumerate(prompts):
        scene = Scene(
            p.shape, p.color, p.background, 0.5, 0.5, 0.3, 0, 1.0, 0.5, 225, 0.9, 0.8, 0, 0, 0, 100, "", True, i
        )
        worse = dataclasses.replace(scene, exposure=0.55, blur=1.0, noise=0.05, jpeg_quality=15, photogenic=False)
        good.append(render_scene(scene, 32))
        bad.append(render_scene(worse, 32))
    judged = judge_pairs(judge, good, bad, prompts, 1, config)
    appeal, faith = judged.tables["appeal"], judged.tables["faithfulness"]
    assert appeal["win"] >= 0.8 and appeal["win_lo"] > 0.5 and appeal["loss"] <= 0.1, appeal
    assert faith["win"] >= faith["loss"], faith
    flipped = judge_pairs(judge, bad, good, prompts, 1, config).tables["appeal"]
    assert flipped["loss"] == appeal["win"] and flipped["win"] == appeal["loss"]
    # the ground-truth panel on the same pairs: every clean render explained as its own scene
    panel = panel_pairs(good, bad, prompts, 1, config)
    assert panel.tables["appeal"]["win"] >= 0.9 and panel.tables["appeal"]["loss"] == 0, panel.tables["appeal"]
    assert all(
        r["faithful_a"] and r["scene_a"].startswith(f"{p.color} {p.shape} on {p.background}")
        for r, p in zip(panel.rows, prompts, strict=True)
    )
    assert agreement(judged, panel)["appeal"] >= 0.8
