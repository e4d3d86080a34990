"""The `photogenic` command line."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click
import yaml

from photogenic.config import PRESETS, Config, ConfigError, field_docs, load_config, to_dict
from photogenic.manifest import ManifestError
from photogenic.redact import secret_env_values
from photogenic.storage import StoreError, open_store, split_parent
from photogenic.train.distributed import RankLostError

__all__ = ["main"]


_QUIET = ("great_expectations", "botocore", "urllib3", "alembic", "mlflow", "kfp")


class _RedactingFilter(logging.Filter):
    """Replaces the values of credential environment variables in every log record, and keeps
    libraries' INFO chatter out of the stage log (they set their own logger levels on import)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        quiet = record.name.startswith(_QUIET) or "/kfp/" in record.pathname.replace("\\", "/")  # kfp logs as root
        if record.levelno < max(self.level, logging.WARNING) and quiet:
            return False
        secrets = secret_env_values()
        if secrets:
            message = record.getMessage()
            for secret in secrets:
                message = message.replace(secret, "<redacted>")
            record.msg, record.args = message, None
        return True


def setup_logging(level: int = logging.INFO) -> None:
    # MLflow installs its own handler at import time; its table-creation chatter is not news.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_RedactingFilter(level))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


_DEBUG = {"on": False}  # set by `photogenic --debug`


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors print one clear line and exit 1 instead of a traceback (`photogenic --debug` shows it)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, StoreError, ManifestError, RankLostError) as exc:
            if _DEBUG["on"]:
                raise
            raise click.ClickException(str(exc)) from exc
        except click.ClickException:
            raise
        except Exception as exc:
            if _DEBUG["on"]:
                raise
            raise click.ClickException(
                f"{type(exc).__name__}: {exc} (an unexpected error: run `photogenic --debug ...` for the traceback)"
            ) from exc

    return wrapper


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--preset, --config, --workspace and trailing `key=value` overrides, resolved into `config: Config`."""

    @click.option("--preset", "-p", default=None, help=f"Named preset: {', '.join(PRESETS)} (default: demo).")
    @click.option("--config", "-c", "config_file", type=click.Path(dir_okay=False), help="YAML config file.")
    @click.option("--workspace", "-w", envvar="PHOTOGENIC_WORKSPACE", help="Workspace folder (store, MLflow, reports).")
    @click.argument("overrides", nargs=-1)
    @functools.wraps(fn)
    def wrapper(
        preset: str | None, config_file: str | None, workspace: str | None, overrides: tuple[str, ...], **kw: Any
    ) -> Any:
        extra = [f"workspace={workspace}"] if workspace else []
        try:
            config = load_config(preset, config_file, [*extra, *overrides])
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        return fn(config=config, **kw)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--debug", is_flag=True, help="Debug logging, and a traceback with every error.")
def main(verbose: bool, debug: bool) -> None:
    """Photogenic: quality-tuning for text-to-image models (Emu's recipe) as a Kubeflow pipeline.

    Every command takes the same config: a --preset, a --config YAML file and `dotted.key=value`
    overrides, in that order of precedence.
    """
    _DEBUG["on"] = debug
    setup_logging(logging.DEBUG if verbose or debug else logging.INFO)


# --------------------------------------------------------------------------------------------- config


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.option("--docs", is_flag=True, help="Print each key's one-line doc beside its value.")
@config_options
def config_show(config: Config, docs: bool) -> None:
    """Print the resolved config as YAML, with its fingerprint."""
    if docs:
        flat_docs = field_docs()
        from photogenic.config import flatten

        for key, value in flatten(to_dict(config)).items():
            click.echo(f"{key} = {value!r}\n    {flat_docs.get(key, '')}")
    else:
        click.echo(yaml.safe_dump(to_dict(config), sort_keys=False).rstrip())
    click.echo(f"# fingerprint: {config.fingerprint()}")


@config_group.command("presets")
def config_presets() -> None:
    """List the named presets."""
    for name, fn in PRESETS.items():
        click.echo(f"{name:8s} {(fn.__doc__ or '').strip()}")


# --------------------------------------------------------------------------------------------- store


@main.group("store")
def store_group() -> None:
    """Inspect data in any store URI (a local path or s3://bucket/prefix).

    S3 endpoint and credentials come from the standard AWS variables
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE).
    """


@store_group.command("ls")
@click.argument("uri")
@click.option("-l", "--long", "long_", is_flag=True, help="Show size and recorded sha256 too.")
@_friendly_errors
def store_ls(uri: str, long_: bool) -> None:
    """List the objects under URI, recursively."""
    store = open_store(uri)
    count = total = 0
    for info in store.list():
        count, total = count + 1, total + info.size
        if long_:
            sha = info.sha256 or (store.stat(info.key).sha256 if store.root.startswith("s3://") else None)
            click.echo(f"{info.size:>12d}  {sha or '-':64s}  {info.uri}")
        else:
            click.echo(info.uri)
    click.echo(f"# {count} objects, {total} bytes", err=True)


@store_group.command("cat")
@click.argument("uri")
@_friendly_errors
def store_cat(uri: str) -> None:
    """Write one object to standard output (its checksum is verified)."""
    parent, name = split_parent(uri)
    with open_store(parent).open(name) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sys.stdout.buffer.write(chunk)


@store_group.command("get")
@click.argument("uri")
@click.argument("dest", type=click.Path())
@_friendly_errors
def store_get(uri: str, dest: str) -> None:
    """Download one object to DEST (checksum verified before it appears)."""
    parent, name = split_parent(uri)
    path = open_store(parent).get_file(name, dest)
    click.echo(str(path))


@store_group.command("put")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("uri")
@_friendly_errors
def store_put(src: str, uri: str) -> None:
    """Upload the file SRC to URI, recording its sha256."""
    parent, name = split_parent(uri)
    info = open_store(parent).put_file(name, src)
    click.echo(f"{info.uri}  {info.size} bytes  sha256 {info.sha256}")


@store_group.command("mb")
@click.argument("uri")
@_friendly_errors
def store_mb(uri: str) -> None:
    """Create the bucket of an s3:// URI if it does not exist (safe to repeat)."""
    from photogenic.storage import S3Store

    store = open_store(uri)
    if not isinstance(store, S3Store):
        raise click.BadParameter(f"{uri!r} is not an s3:// URI", param_hint="URI")
    created = store.make_bucket()
    click.echo(f"s3://{store.bucket}: {'created' if created else 'exists already'} at {store.endpoint}")


# --------------------------------------------------------------------------------------------- world


@main.group("world")
def world_group() -> None:
    """The generated toy world (the default data: no download needed)."""


@world_group.command("sheet")
@click.option("--out", "-o", default="world-sheet.png", type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--columns", default=8, type=click.IntRange(1, 32), help="Samples per row.")
@config_options
def world_sheet(config: Config, out: str, columns: int) -> None:
    """Write a contact sheet: random haystack samples above the most photogenic ones."""
    from photogenic.world import contact_sheet

    contact_sheet(config.world, columns=columns).save(out)
    click.echo(out)


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
@_friendly_errors
def ingest_cmd(config: Config, source: str, out: str | None, parent_run_id: str | None) -> None:
    """Ingest a source into versioned tar shards; prints the result as JSON."""
    _echo_result(_run_stage("ingest", config, parent_run_id, source=source, out=out))


@main.command("validate")
@click.option("--manifest", "-m", "manifest_uri", required=True, help="The ingested dataset's manifest URI.")
@click.option("--out", default=None, help="Validated dataset URI (default: <store>/datasets/validated-<fingerprint>).")
@_parent_option
@config_options
@_friendly_errors
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
@_friendly_errors
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
@_friendly_errors
def judges_train_cmd(config: Config, purpose: str, out: str | None, parent_run_id: str | None) -> None:
    """Render, train and validate one judge set; prints its URI and held-out agreement with the oracle."""
    _echo_result(_run_stage("judges", config, parent_run_id, purpose=purpose, out=out))


@judges_group.command("import")
@click.option("--clip", "clip_path", required=True, help="A CLIP model folder (transformers CLIPModel + processor).")
@click.option("--aesthetic", required=True, help="LAION-style aesthetic MLP weights (.safetensors or .pth).")
@click.option("--out", required=True, help="Judge set URI in the store.")
@click.option("--purpose", type=click.Choice(["curation", "evaluation"]), default="evaluation")
@config_options
@_friendly_errors
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
@_friendly_errors
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
@_friendly_errors
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
@_friendly_errors
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
@_friendly_errors
def raters_export_cmd(config: Config, evaluation: str, out: str) -> None:
    """Write an evaluation's pairs (sides shuffled) and a page to rate them."""
    from photogenic.raters import export_pairs

    click.echo(str(export_pairs(evaluation, out, config)))


@raters_group.command("import")
@click.argument("pairs", type=click.Path(dir_okay=False, exists=True))
@click.argument("votes", type=click.Path(dir_okay=False, exists=True))
@config_options
@_friendly_errors
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
@_friendly_errors
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


@main.command("run")
@click.option("--source", "-s", default="world", help="What to ingest (see `photogenic ingest --source`).")
@click.option("--partitions", default=2, type=click.IntRange(1, 64), help="Parallel ingestion tasks.")
@click.option(
    "--retries",
    default=0,
    type=click.IntRange(0, 10),
    help="Retries (30 s backoff, doubling) of tasks that touch S3 or MLflow.",
)
@click.option("--approved", default="", help="With curate.review=import: the reviewers' JSON of approved keys.")
@click.option("--summary", "summary_path", default=None, help="JSON summary path (default: <workspace>/summary.json).")
@click.option(
    "--containers",
    is_flag=True,
    help="Run every task in a container of --image, as uid 10001 (Docker, or podman without a daemon).",
)
@click.option("--image", default=None, help="With --containers: the image (default: localhost/photogenic:local).")
@config_options
@_friendly_errors
def run_cmd(
    config: Config,
    source: str,
    partitions: int,
    retries: int,
    approved: str,
    summary_path: str | None,
    containers: bool,
    image: str | None,
) -> None:
    """Run the pipeline on this machine through kfp.local (every stage a local task) and print a summary.

    A stage that finished in an earlier run (same inputs and config) is reused, not redone. With
    --containers each task runs in our image with only a pod's environment (S3 credentials, AWS and
    MLflow endpoints, PHOTOGENIC_STORE_ROOT), on the host's network.
    """
    from photogenic.config import overrides_from
    from photogenic.pipelines.containers import LOCAL_IMAGE, ContainerError, Containers
    from photogenic.pipelines.local import LocalRunError, run_locally

    if image and not containers:
        raise click.UsageError("--image is for --containers")
    overrides = overrides_from(config)  # every task resolves exactly this config from preset + overrides
    boxes = Containers(image or LOCAL_IMAGE) if containers else None
    try:
        summary = run_locally(
            config.preset,
            overrides,
            config.workspace,
            source,
            partitions,
            summary_path,
            sys.stderr,
            retries,
            approved,
            containers=boxes,
        )
    except (LocalRunError, ContainerError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_summary(summary, config))


def format_summary(summary: dict[str, Any], config: Config) -> str:
    """The run's summary as the console shows it: the funnel, the win/tie/loss tables, where things are."""
    st = summary["stages"]
    ing, val, ae, pt = st["ingest"], st["validate"], st["autoencoder"], st["pretrain"]
    cur, qt, ev, reg = st["curate"], st["quality_tune"], st["evaluate"], st["register"]
    m = ev["metrics"]

    def wtl(name: str) -> str:
        if f"{name}_win" not in m:
            return "n/a"
        return " / ".join(
            f"{m[f'{name}_{k}']:.0%} [{m[f'{name}_{k}_lo']:.0%}, {m[f'{name}_{k}_hi']:.0%}]"
            for k in ("win", "tie", "loss")
        )

    judges = st["judges"]["evaluation"]["metrics"]
    panel = "judge_panel_appeal_agreement" in m
    rater = "ground-truth panel" if panel else "judges"
    proxy = (
        [
            f"    judges (a proxy):    appeal {wtl('judge_appeal')}",
            f"    judges vs panel on these pairs: appeal {m['judge_panel_appeal_agreement']:.3f}, faithfulness "
            f"{m['judge_panel_faithfulness_agreement']:.3f} (valid proxies at {config.evaluate.min_panel_agreement})",
            f"    panel explained A {m['panel_explained_a']:.0%}, B {m['panel_explained_b']:.0%} of the images",
        ]
        if panel
        else []
    )
    alias = f"alias '{reg['alias']}'" if reg["alias"] else f"no alias: {reg['gate']}"
    lines = [
        "",
        f"Photogenic run ({config.preset} preset, config {summary['config_fingerprint'][:12]})",
        f"  ingest    {ing['counts']['input']:>7d} in  -> {ing['counts']['samples']:>7d} samples, "
        f"{ing['counts']['duplicates']} duplicates, {ing['counts']['quarantined']} quarantined"
        f"   dataset {ing['fingerprint'][:12]}",
        f"  validate  {val['counts']['input']:>7d} in  -> {val['counts']['clean']:>7d} clean, "
        f"{val['counts']['quarantined']} quarantined   dataset {val['fingerprint'][:12]}",
        f"  autoencoder {ae['steps']:>7d} steps -> model {ae['fingerprint'][:12]}",
        f"  pretrain    {pt['steps']:>7d} steps -> model {pt['fingerprint'][:12]}  (final loss {pt['final_loss']:.4f})",
        "  curate      " + " -> ".join(f"{n} {k}" for n, k in cur["funnel"]),
        f"  quality-tune -> model {qt['fingerprint'][:12]}",
        "",
        "  Quality-tuned (A) vs pretrained (B), test split, same prompts and seeds; win / tie / loss for A "
        f"[95% CI], rated by the {rater}:",
        f"    visual appeal        {wtl('appeal')}",
        f"    text faithfulness    {wtl('faithfulness')}",
        f"    appeal, held-out     {wtl('appeal_held_out')}",
        f"    faithful., held-out  {wtl('faithfulness_held_out')}",
        *proxy,
        f"    judges vs oracle (held-out renders): appeal agreement {judges['appeal_pairwise_agreement']:.3f}, "
        f"concept accuracy {judges['concept_accuracy']:.3f}",
        *([] if ev["trustworthy"] else ["    -> NOT TRUSTWORTHY: see the evaluation report"]),
        "",
        f"  registered model:  {reg['name']} version {reg['version']} ({alias})",
        f"  evaluation report: {ev['report_uri']}",
        f"  QT dataset:        {cur['manifest_uri']}",
        f"  pretrained model:  {pt['model_uri']}",
        f"  quality-tuned:     {qt['model_uri']}",
        f"  validation report: {val['report_uri']}",
        f"  summary:           {summary['summary_path']}",
        f"  task log:          {summary['log_path']}",
        f"  compare runs:      {summary['mlflow']['ui_command']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- cluster


@main.group("job")
def job_group() -> None:
    """Training jobs on Kubeflow's training operator, for teams that train outside KFP."""


def _job_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--backend",
            type=click.Choice(["trainjob", "pytorchjob"]),
            default="trainjob",
            help="Kubeflow Trainer v2 TrainJob (runtime torch-distributed), or a training-operator v1 PyTorchJob.",
        ),
        click.option("--recipe", type=click.Choice(["autoencoder", "pretrain", "quality-tune"]), default="pretrain"),
        click.option("--data", "-d", "data_uri", required=True, help="Manifest URI of the training dataset."),
        click.option("--base", "-b", default="", help="Model to start from."),
        click.option("--judges", default="", help="Curation judge set (quality-tune)."),
        click.option("--rehearsal-data", "rehearsal", default="", help="Dataset to rehearse (quality-tune)."),
        click.option("--out", default=None, help="Run URI (default: <store>/runs/<recipe>-<fingerprint>)."),
        click.option("--name", default=None, help="Job name (default: photogenic-<recipe>-<run fingerprint>)."),
        click.option("--namespace", "-n", default="kubeflow", help="Namespace of the job."),
        click.option("--image", default=None, help="Training image (default: components/images.json)."),
        click.option(
            "--image-pull-secret",
            "pull_secrets",
            multiple=True,
            help="Secret for pulling the image; repeat (default: components/images.json's).",
        ),
        click.option("--nodes", default=1, type=click.IntRange(1), help="Nodes."),
        click.option("--gpus-per-node", default=8, type=click.IntRange(0), help="GPUs (and processes) per node."),
        click.option("--node-selector", multiple=True, help="key=value; repeat."),
        click.option("--gpu-toleration/--no-gpu-toleration", default=True, help="Tolerate nvidia.com/gpu taints."),
        click.option("--cache-pvc", default="", help="PVC mounted at /cache on every node (default: an emptyDir)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _training_job(config: Config, kw: dict[str, Any]) -> Any:
    from photogenic.components.images import PULL_SECRETS, TRAIN_IMAGE
    from photogenic.config import overrides_from
    from photogenic.launcher import GPU_TOLERATIONS, train_args, training_job
    from photogenic.train.run import run_uri

    recipe = kw["recipe"].replace("-", "_")
    out = run_uri(
        recipe, config, kw["data_uri"], kw["base"] or None, kw["judges"] or None, kw["out"], kw["rehearsal"] or None
    )
    overrides = [o for o in overrides_from(config) if not o.startswith("workspace=")]
    return training_job(
        recipe,
        out,
        train_args(
            recipe, kw["data_uri"], out, config.preset, overrides, kw["base"], kw["judges"], "", kw["rehearsal"]
        ),
        image=kw["image"] or TRAIN_IMAGE,
        namespace=kw["namespace"],
        nodes=kw["nodes"],
        gpus_per_node=kw["gpus_per_node"],
        name=kw["name"] or "",
        node_selector=dict(item.split("=", 1) for item in kw["node_selector"]),
        tolerations=GPU_TOLERATIONS if kw["gpu_toleration"] else (),
        cache_pvc=kw["cache_pvc"],
        image_pull_secrets=kw["pull_secrets"] or PULL_SECRETS,
    )


@job_group.command("render")
@_job_options
@config_options
@_friendly_errors
def job_render_cmd(config: Config, **kw: Any) -> None:
    """Print the job as YAML (for `kubectl apply -f -` or GitOps): the same job the pipeline launches."""
    from photogenic.launcher import pytorchjob, trainjob

    job = _training_job(config, kw)
    body = pytorchjob(job) if kw["backend"] == "pytorchjob" else trainjob(job)
    click.echo(yaml.safe_dump(body, sort_keys=False), nl=False)


@job_group.command("launch")
@_job_options
@click.option("--timeout-hours", default=168.0, type=float, help="Fail and delete the job after this long.")
@config_options
@_friendly_errors
def job_launch_cmd(config: Config, timeout_hours: float, **kw: Any) -> None:
    """Create the job, stream the master's log, wait, delete it (uses your kubeconfig)."""
    from photogenic.launcher import LaunchError, launch

    try:
        launch(_training_job(config, kw), backend=kw["backend"], timeout_s=timeout_hours * 3600)
    except LaunchError as exc:
        raise click.ClickException(str(exc)) from exc


def _kfp(host: str | None) -> Any:
    from photogenic.pipelines import client as kfp_client

    try:
        return kfp_client.connect(host)
    except kfp_client.UnreachableError as exc:
        raise click.ClickException(str(exc)) from exc


@main.group("pipeline")
def pipeline_group() -> None:
    """Compile the pipeline, upload it to Kubeflow Pipelines, run it there."""


@pipeline_group.command("compile")
@click.option(
    "--out", "-o", default=None, type=click.Path(dir_okay=False), help="YAML to write (default: the checked-in one)."
)
@click.option(
    "--kubernetes-manifest",
    is_flag=True,
    help="Write KFP Pipeline and PipelineVersion resources (for GitOps) instead of the plain pipeline spec.",
)
def pipeline_compile_cmd(out: str | None, kubernetes_manifest: bool) -> None:
    """Compile the pipeline to YAML, versioned by the package version and git commit."""
    from photogenic.pipelines.compiler import COMPILED, compile_pipeline

    click.echo(compile_pipeline(out or COMPILED, kubernetes_manifest=kubernetes_manifest))


_host_option = click.option(
    "--host", envvar="KF_PIPELINES_ENDPOINT", default=None, help="KFP API endpoint (env KF_PIPELINES_ENDPOINT)."
)
_package_option = click.option(
    "--package", default=None, type=click.Path(exists=True, dir_okay=False), help="Compiled pipeline YAML."
)


@pipeline_group.command("upload")
@_host_option
@_package_option
@click.option("--name", default=None, help="Pipeline name (default: photogenic-quality-tuning).")
def pipeline_upload_cmd(host: str | None, package: str | None, name: str | None) -> None:
    """Upload the compiled pipeline: a new pipeline, or a new version of an existing one (nothing if the
    server has this version already)."""
    from photogenic.pipelines import client as kfp_client
    from photogenic.pipelines.compiler import COMPILED
    from photogenic.pipelines.quality_tuning import PIPELINE_NAME

    uploaded = kfp_client.upload(_kfp(host), package or COMPILED, name or PIPELINE_NAME)
    click.echo(json.dumps(uploaded.__dict__, indent=2))


@pipeline_group.command("run")
@_host_option
@_package_option
@click.option("--experiment", "-e", default="photogenic", help="KFP experiment.")
@click.option("--run-name", default=None, help="Run name (default: photogenic-<preset>-<time>).")
@click.option("--preset", "-p", default="demo", help="Config preset for every stage.")
@click.option("--set", "overrides", multiple=True, help="Config override key=value; repeat.")
@click.option(
    "--param",
    "params",
    multiple=True,
    help="Other pipeline parameter name=value (typed as the pipeline declares); repeat.",
)
@click.option(
    "--upload", "do_upload", is_flag=True, help="Upload as a new pipeline version first and run that version."
)
@click.option("--wait", "wait_s", default=0, type=int, help="Wait up to this many seconds for the run to end.")
@click.option("--service-account", default=None, help="ServiceAccount for the run's pods.")
def pipeline_run_cmd(
    host: str | None,
    package: str | None,
    experiment: str,
    run_name: str | None,
    preset: str,
    overrides: tuple[str, ...],
    params: tuple[str, ...],
    do_upload: bool,
    wait_s: int,
    service_account: str | None,
) -> None:
    """Create a run of the pipeline on Kubeflow Pipelines."""
    import time

    from photogenic.config import load_config
    from photogenic.pipelines import client as kfp_client
    from photogenic.pipelines.compiler import COMPILED

    load_config(preset, overrides=overrides)  # a wrong key fails here, not in the cluster an hour later
    arguments: dict[str, Any] = {"preset": preset, "overrides": list(overrides)}
    try:
        arguments.update(kfp_client.parse_arguments(params, package or COMPILED))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--param") from exc
    client = _kfp(host)
    uploaded = kfp_client.upload(client, package or COMPILED) if do_upload else None
    name = run_name or f"photogenic-{preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = kfp_client.submit(
        client, experiment, arguments, name, uploaded, package or COMPILED, wait_s, service_account
    )
    click.echo(json.dumps(result, indent=2))
    if wait_s and result["state"] != "SUCCEEDED":
        raise click.ClickException(f"run {result['run_id']} ended {result['state']}: {result.get('error', '')}")


if __name__ == "__main__":  # pragma: no cover
    main()
