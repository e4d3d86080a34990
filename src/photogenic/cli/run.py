"""`photogenic run`: the whole pipeline on this machine through kfp.local, and its summary."""

from __future__ import annotations

import sys
from typing import Any

import click

from photogenic.cli.base import config_options, friendly_errors, main
from photogenic.config import Config


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
@friendly_errors
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
    overrides = overrides_from(config)  # the pipeline's inputs: open-run resolves exactly this config from them
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
        *(
            f"  {label:<19}{then}{summary['mlflow'][key]}"
            for label, then, key in _MLFLOW_LINES
            if key in summary["mlflow"]
        ),
        *_times(summary),
    ]
    return "\n".join(lines)


# The summary's MLflow lines after `compare runs` (label, lead-in, key in summary["mlflow"]), where present
_MLFLOW_LINES = (
    ("", "then open ", "run_page"),
    ("load the model:", "", "load_command"),
    ("serve it:", "", "serve_command"),
)


def _times(summary: dict[str, Any]) -> list[str]:
    """Where the run's time went: each task's seconds (a stage's parallel tasks summed), longest first."""
    from photogenic.progress import format_duration

    tasks = summary.get("task_seconds") or {}
    if not tasks:
        return []
    longest = sorted(tasks.items(), key=lambda kv: -kv[1])
    parts = ", ".join(f"{name} {format_duration(s)}" for name, s in longest if s >= 1)
    return ["", f"  time: {format_duration(summary.get('wall_seconds', sum(tasks.values())))} in all; {parts}"]
