"""The main job on one machine: every stage that exists, in order, under one MLflow parent run."""

from __future__ import annotations

import json
import logging
import shlex
from dataclasses import asdict
from pathlib import Path
from typing import Any

from photogenic.config import Config
from photogenic.data.ingest import ingest
from photogenic.data.validate import validate
from photogenic.tracking import Tracker, tracking_uri

__all__ = ["run_local"]

log = logging.getLogger(__name__)


def run_local(config: Config, source: str = "world", summary_path: str | Path | None = None) -> dict[str, Any]:
    """Run ingest -> validate with tracking; write and return a summary.

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
        parent.set_tags({"photogenic.dataset.clean": validated.fingerprint})
    uri = tracking_uri(config)
    summary = {
        "preset": config.preset,
        "config_fingerprint": config.fingerprint(),
        "stages": {"ingest": asdict(ingested), "validate": asdict(validated)},
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
