"""One command per stage (`ingest`, `validate`, `train`, `judges`, `curate`, `evaluate`), run exactly as the
pipeline's tasks run them (`photogenic.stages.run_stage`); models, human raters and sampling."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import click

from photogenic.cli.base import config_options, friendly_errors, main
from photogenic.config import Config

# --------------------------------------------------------------------------------------------- stages


def _run_stage(stage: str, config: Config, parent_run_id: str | None, **inputs: Any) -> Any:
    """Run a stage exactly as the pipeline's task does (`photogenic.stages.run_stage`)."""
    from photogenic.stages import run_stage

    return run_stage(stage, config, parent_run_id, **inputs)


def _echo_result(result: Any) -> None:
    import json

    from photogenic.stages import result_dict

    click.echo(json.dumps(result_dict(result), indent=2))


_parent_option = click.option(
    "--parent-run-id", default=None, help="MLflow parent run (the pipeline run) to log under."
)


@main.command("ingest")
@click.option("--source", "-s", default="world", help="'world', a captions table (.jsonl/.csv/.parquet) or tar shards.")
@click.option("--out", default=None, help="Dataset URI (default: <store>/datasets/ingest-<fingerprint>).")
@_parent_option
@config_options
@friendly_errors
def ingest_cmd(config: Config, source: str, out: str | None, parent_run_id: str | None) -> None:
    """Ingest a source into versioned tar shards; prints the result as JSON."""
    _echo_result(_run_stage("ingest", config, parent_run_id, source=source, out=out))


@main.command("validate")
@click.option("--manifest", "-m", "manifest_uri", required=True, help="The ingested dataset's manifest URI.")
@click.option("--out", default=None, help="Validated dataset URI (default: <store>/datasets/validated-<fingerprint>).")
@_parent_option
@config_options
@friendly_errors
def validate_cmd(config: Config, manifest_uri: str, out: str | None, parent_run_id: str | None) -> None:
    """Validate a dataset with Great Expectations; failing samples are quarantined with reasons."""
    _echo_result(_run_stage("validate", config, parent_run_id, manifest_uri=manifest_uri, out=out))


@main.command("train")
@click.argument("recipe", type=click.Choice(["autoencoder", "pretrain", "quality-tune"]))
@click.option("--data", "-d", "data_uri", required=True, help="Manifest URI of the validated training dataset.")
@click.option(
    "--base",
    "-b",
    default=None,
    help="Model to start from: the autoencoder (pretrain), the pretrained model (quality-tune).",
)
@click.option(
    "--out", default=None, help="Run URI for checkpoints and the model (default: <store>/runs/<recipe>-<fingerprint>)."
)
@click.option("--judges", default=None, help="Curation judge set, for early stopping (quality-tune).")
@click.option(
    "--rehearsal-data",
    "rehearsal",
    default=None,
    help="Dataset manifest that `train.<recipe>.rehearsal_fraction` and `guidance_preservation` read (quality-tune; "
    "default: the rehearsal set curated beside --data).",
)
@_parent_option
@config_options
@friendly_errors
def train_cmd(
    config: Config,
    recipe: str,
    data_uri: str,
    base: str | None,
    out: str | None,
    judges: str | None,
    rehearsal: str | None,
    parent_run_id: str | None,
) -> None:
    """Train one recipe with DeepSpeed (in-process, or under torchrun for several ranks); resumes
    from the run's latest checkpoint and exports the model in diffusers format."""
    inputs = {"data_uri": data_uri, "out": out, "base": base, "judges": judges, "rehearsal": rehearsal}
    with contextlib.redirect_stdout(sys.stderr):  # DeepSpeed prints to stdout; keep stdout for the JSON result
        result = _run_stage("train", config, parent_run_id, recipe=recipe.replace("-", "_"), **inputs)
    if int(os.environ.get("RANK", "0")) == 0:
        _echo_result(result)


@main.group("judges")
def judges_group() -> None:
    """The learned judges: appeal, text overlay and concepts, trained on oracle-labelled renders."""


@judges_group.command("train")
@click.option(
    "--purpose",
    type=click.Choice(["curation", "evaluation"]),
    required=True,
    help="'curation': the rating set behind the automatic filters; 'evaluation': the raters of `evaluate`.",
)
@click.option("--out", default=None, help="Judge set URI (default: <store>/judges/<purpose>-<fingerprint>).")
@_parent_option
@config_options
@friendly_errors
def judges_train_cmd(config: Config, purpose: str, out: str | None, parent_run_id: str | None) -> None:
    """Render, train and validate one judge set; prints its URI and held-out agreement with the oracle."""
    _echo_result(_run_stage("judges", config, parent_run_id, purpose=purpose, out=out))


@judges_group.command("import")
@click.option("--clip", "clip_path", required=True, help="A CLIP model folder (transformers CLIPModel + processor).")
@click.option("--aesthetic", required=True, help="LAION-style aesthetic MLP weights (.safetensors or .pth).")
@click.option("--out", required=True, help="Judge set URI in the store.")
@click.option("--purpose", type=click.Choice(["curation", "evaluation"]), default="evaluation")
@config_options
@friendly_errors
def judges_import_cmd(config: Config, clip_path: str, aesthetic: str, out: str, purpose: str) -> None:
    """Register judges for real images: aesthetic MLP on CLIP image embeddings, and CLIP score."""
    from photogenic.judges import import_clip_judges

    click.echo(import_clip_judges(clip_path, aesthetic, out, config, purpose))  # type: ignore[arg-type]


@main.command("curate")
@click.option("--data", "-d", "data_uri", required=True, help="Manifest URI of the validated dataset.")
@click.option("--judges", required=True, help="The curation judge set (`photogenic judges train --purpose curation`).")
@click.option("--approved", default=None, help="With curate.review=import: the reviewers' JSON of approved keys.")
@click.option("--out", default=None, help="QT dataset URI (default: <store>/datasets/curated-<fingerprint>).")
@_parent_option
@config_options
@friendly_errors
def curate_cmd(
    config: Config, data_uri: str, judges: str, approved: str | None, out: str | None, parent_run_id: str | None
) -> None:
    """Run the curation funnel: automatic filters, two review rounds, held-out concepts; prints the funnel."""
    from photogenic.curate import ReviewNeeded

    try:
        result = _run_stage(
            "curate", config, parent_run_id, data_uri=data_uri, judges_uri=judges, out=out, approved=approved
        )
    except ReviewNeeded as exc:  # not a failure here; in the pipeline it stops the run with this message
        click.echo(str(exc))
        return
    _echo_result(result)


@main.command("evaluate")
@click.option("--a", "model_a", required=True, help="Candidate model URI (a 'win' means A is better).")
@click.option("--b", "model_b", required=True, help="Reference model URI.")
@click.option(
    "--judges", required=True, help="The evaluation judge set (`photogenic judges train --purpose evaluation`)."
)
@click.option(
    "--prompts",
    "prompts_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="Your prompt set instead of the benchmark: .txt (one a line), .jsonl (prompt, category) or .csv/.tsv "
    "(Prompt and Category columns, as PartiPrompts).",
)
@click.option(
    "--split",
    type=click.Choice(["test", "dev"]),
    default="test",
    show_default=True,
    help="Benchmark split: test for reported results and the gate, dev for choosing a recipe.",
)
@click.option(
    "--curation-judges", default=None, help="The curation judge set, to report its agreement with the others."
)
@click.option("--out", default=None, help="Evaluation URI (default: <store>/evaluations/<fingerprint>).")
@_parent_option
@config_options
@friendly_errors
def evaluate_cmd(
    config: Config,
    model_a: str,
    model_b: str,
    judges: str,
    prompts_file: str | None,
    split: str,
    curation_judges: str | None,
    out: str | None,
    parent_run_id: str | None,
) -> None:
    """Compare two models pairwise: appeal and faithfulness win/tie/loss. World models are rated by the
    ground-truth panel, with the learned judges beside it; real models by the imported judges."""
    result = _run_stage(
        "evaluate",
        config,
        parent_run_id,
        a=model_a,
        b=model_b,
        judges_uri=judges,
        out=out,
        prompts_file=prompts_file,
        split=split,
        curation_judges_uri=curation_judges,
    )
    _echo_result(result)


@main.group("model")
def model_group() -> None:
    """Models in the store."""


@model_group.command("import")
@click.argument("src")
@click.option("--out", required=True, help="Model URI in the store, e.g. s3://bucket/photogenic/models/sd15.")
@config_options
@friendly_errors
def model_import_cmd(config: Config, src: str, out: str) -> None:
    """Import an existing diffusers model (Stable Diffusion 1.5 layout) from a folder or store prefix,
    to quality-tune and evaluate it like a pretrained one."""
    from photogenic.models.io import import_model

    manifest_uri, version = import_model(src, out, config)
    click.echo(json.dumps({"model_uri": out, "manifest_uri": manifest_uri, "fingerprint": version}, indent=2))


@main.group("raters")
def raters_group() -> None:
    """Human raters: export an evaluation's pairs, import their votes."""


@raters_group.command("export")
@click.argument("evaluation")
@click.option(
    "--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder for pairs.json, rate.html, images."
)
@config_options
@friendly_errors
def raters_export_cmd(config: Config, evaluation: str, out: str) -> None:
    """Write an evaluation's pairs (sides shuffled) and a page to rate them."""
    from photogenic.raters import export_pairs

    click.echo(str(export_pairs(evaluation, out, config)))


@raters_group.command("import")
@click.argument("pairs", type=click.Path(dir_okay=False, exists=True))
@click.argument("votes", type=click.Path(dir_okay=False, exists=True))
@config_options
@friendly_errors
def raters_import_cmd(config: Config, pairs: str, votes: str) -> None:
    """Turn raters' votes (a JSON list) into win/tie/loss tables for A, with 95% intervals."""
    from pathlib import Path

    from photogenic.raters import import_votes

    click.echo(json.dumps(import_votes(pairs, json.loads(Path(votes).read_text()), config), indent=2))


@main.command("generate")
@click.option("--model", "-m", "model_uri", required=True, help="An exported model (local path or s3:// URI).")
@click.option("--prompt", "prompts", multiple=True, required=True, help="Prompt; repeat for several.")
@click.option("-n", "count", default=16, type=click.IntRange(1, 1024), help="Images per prompt (seeds 0..n-1).")
@click.option("--out", "-o", default="grid.png", type=click.Path(dir_okay=False), help="Grid PNG to write.")
@click.option("--steps", default=None, type=int, help="Sampler steps (default: evaluate.sampling_steps).")
@click.option("--guidance", default=None, type=float, help="Guidance scale (default: evaluate.guidance_scale).")
@config_options
@friendly_errors
def generate_cmd(
    config: Config,
    model_uri: str,
    prompts: tuple[str, ...],
    count: int,
    out: str,
    steps: int | None,
    guidance: float | None,
) -> None:
    """Generate images with an exported model into one grid (a row per prompt)."""
    from photogenic.models.io import load_model_pipeline
    from photogenic.models.pipeline import draw, image_grid

    images = draw(
        load_model_pipeline(model_uri, config),
        [(prompt, seed) for prompt in prompts for seed in range(count)],
        steps or config.evaluate.sampling_steps,
        config.evaluate.guidance_scale if guidance is None else guidance,
    )
    image_grid(images, columns=count, scale=2).save(out)
    click.echo(out)
