"""The main job on one machine: every stage, in order, under one MLflow parent run."""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from photogenic.config import Config
from photogenic.curate import curate
from photogenic.data.ingest import ingest
from photogenic.data.validate import validate
from photogenic.evaluate import evaluate
from photogenic.judges import train_judges
from photogenic.tracking import Tracker, tracking_uri
from photogenic.train.trainer import train

__all__ = ["run_local"]

log = logging.getLogger(__name__)


def sample_grid(model_uri: str, config: Config, path: Path) -> Path:
    """A grid of the fixed sample prompts (rows) and seeds 0..3 (columns) from an exported model."""
    from photogenic.models.pipeline import draw, image_grid
    from photogenic.train.trainer import SAMPLE_PROMPTS, load_model_pipeline

    jobs = [(prompt, seed) for prompt in SAMPLE_PROMPTS for seed in range(4)]
    images = draw(
        load_model_pipeline(model_uri, config), jobs, config.evaluate.sampling_steps, config.evaluate.guidance_scale
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, columns=4, scale=3).save(path)
    return path


def run_local(config: Config, source: str = "world", summary_path: str | Path | None = None) -> dict[str, Any]:
    """Run ingest -> validate -> autoencoder -> pretrain -> judges -> curate -> quality-tune -> evaluate,
    with tracking; write and return a summary.

    Args:
        config: the resolved config.
        source: what to ingest (see `photogenic ingest --source`).
        summary_path: where to write the JSON summary; default `<workspace>/summary.json`.

    Returns:
        The summary: each stage's result, the MLflow run ids, and the command to browse them.
    """
    tracker = Tracker(config)
    tags = {"photogenic.preset": config.preset, "photogenic.config_fingerprint": config.fingerprint()}
    with tracker.pipeline_run(f"photogenic-{config.preset}", tags=tags) as parent:
        parent.log_config(config)
        with tracker.stage_run("ingest", parent.run_id) as run:
            ingested = ingest(source, config, run=run)
        with tracker.stage_run("validate", parent.run_id) as run:
            validated = validate(ingested.manifest_uri, config, run=run)
        with tracker.stage_run("train-autoencoder", parent.run_id) as run:
            autoencoder = train("autoencoder", config, validated.manifest_uri, run=run)
        with tracker.stage_run("train-pretrain", parent.run_id) as run:
            pretrained = train("pretrain", config, validated.manifest_uri, base=autoencoder.model_uri, run=run)
            grid = sample_grid(pretrained.model_uri, config, Path(config.workspace, "reports", "pretrain-samples.png"))
            run.log_artifact(grid, "samples")
        judges = {}
        for purpose in ("curation", "evaluation"):
            with tracker.stage_run(f"judges-{purpose}", parent.run_id) as run:
                judges[purpose] = train_judges(config, purpose, run=run)
        with tracker.stage_run("curate", parent.run_id) as run:
            curated = curate(validated.manifest_uri, judges["curation"].uri, config, run=run)
        with tracker.stage_run("train-quality-tune", parent.run_id) as run:
            tuned = train(
                "quality_tune",
                config,
                curated.manifest_uri,
                base=pretrained.model_uri,
                run=run,
                judges=judges["curation"].uri,
            )
            qt_grid = sample_grid(tuned.model_uri, config, Path(config.workspace, "reports", "qt-samples.png"))
            run.log_artifact(qt_grid, "samples")
        with tracker.stage_run("evaluate", parent.run_id) as run:
            evaluation = evaluate(tuned.model_uri, pretrained.model_uri, judges["evaluation"].uri, config, run=run)
        parent.set_tags(
            {
                "photogenic.dataset.clean": validated.fingerprint,
                "photogenic.dataset.qt": curated.fingerprint,
                "photogenic.model.pretrain": pretrained.fingerprint,
                "photogenic.model.quality_tune": tuned.fingerprint,
            }
        )
        parent.log_metrics({f"eval/{k}": v for k, v in evaluation.metrics.items()})
    uri = tracking_uri(config)
    summary = {
        "preset": config.preset,
        "config_fingerprint": config.fingerprint(),
        "stages": {
            "ingest": asdict(ingested),
            "validate": asdict(validated),
            "autoencoder": asdict(autoencoder),
            "pretrain": asdict(pretrained),
            "judges": {k: asdict(v) for k, v in judges.items()},
            "curate": asdict(curated),
            "quality_tune": asdict(tuned),
            "evaluate": asdict(evaluation),
        },
        "pretrain_samples": str(grid),
        "qt_samples": str(qt_grid),
        "mlflow": {
            "tracking_uri": uri,
            "experiment": config.tracking.experiment,
            "parent_run_id": parent.run_id,
            "ui_command": f"mlflow ui --backend-store-uri {shlex.quote(uri)}",
        },
        "tracking_failures": tracker.failures,
    }
    path = Path(summary_path) if summary_path else Path(config.workspace, "summary.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    summary["summary_path"] = str(path)
    return summary
