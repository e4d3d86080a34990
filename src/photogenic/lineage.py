"""Lineage in MLflow: every stage's run records the datasets and models it read and wrote.

Datasets are MLflow datasets named by their role (`raw`, `ingested`, `validated`, `qt`, `rehearsal`), with
the manifest's content fingerprint as digest and the manifest's store URI as source: the same content has
the same digest wherever it lies. Inputs carry the context the stage read them in (`training`,
`rehearsal`, ...); what a stage wrote is logged with the context `output`, so the run of the next stage
names the same dataset by the same digest. Models are MLflow models (`photogenic.serving`): a training
run logs its model as an output, and runs that read a model (quality-tuning, evaluation) log it as input.

    raw -> [ingest] -> ingested -> [validate] -> validated -> [curate] -> qt, rehearsal
    validated -> [train-pretrain] -> pretrained model -> [train-quality-tune (+ qt, rehearsal)] -> QT model
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photogenic.config import Config

__all__ = ["DatasetRef", "stage_lineage", "dataset_ref", "log_lineage", "ROLE_BY_STAGE"]

log = logging.getLogger(__name__)

# The role of a dataset, by the stage that published it (a manifest's `meta.role` overrides it)
ROLE_BY_STAGE = {"ingest": "ingested", "validate": "validated", "curate": "qt"}
# A stage input that names a dataset's manifest, and the context the stage reads it in
_DATASET_INPUTS = {"manifest_uri": "validation", "data_uri": "training", "rehearsal": "rehearsal"}
_CONTEXT_BY_STAGE = {"curate": "curation"}  # curate reads its data_uri to filter it, not to train on
_MODEL_INPUTS = ("base", "a", "b")  # inputs that name a model (a training base; the models evaluated)
_DIGEST_CHARS = 16  # MLflow keeps at most 36


@dataclass(frozen=True)
class DatasetRef:
    """One dataset as MLflow lists it on a run."""

    name: str
    uri: str
    digest: str
    context: str
    source: Any = None  # a JSON-able description for data made by code (the toy world); else None

    def entity(self) -> Any:
        """The `mlflow.entities.DatasetInput` of this dataset."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        if self.source is not None:
            source = CodeDatasetSource({"generator": self.uri, **self.source})
        else:
            uri = self.uri if "://" in self.uri else Path(self.uri).resolve().as_uri()
            with warnings.catch_warnings():  # "file:" matches two registered sources that are the same class
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(uri)
        dataset = MetaDataset(source=source, name=self.name, digest=self.digest)._to_mlflow_entity()
        return DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, self.context)])


def dataset_ref(manifest_uri: str, context: str, config: Config) -> DatasetRef | None:
    """The dataset whose manifest is at `manifest_uri`, or None where there is none to read."""
    from photogenic.manifest import ManifestError, read_manifest

    try:
        manifest = read_manifest(manifest_uri, config.storage)
    except ManifestError as exc:
        log.warning("lineage: no dataset manifest at %s (%s); not logged", manifest_uri, exc)
        return None
    stage = str(manifest.meta.get("stage", ""))
    role = str(manifest.meta.get("role") or ROLE_BY_STAGE.get(stage, stage or "dataset"))
    return DatasetRef(role, manifest_uri, manifest.fingerprint[:_DIGEST_CHARS], context)


def _raw_ref(source: str, config: Config) -> DatasetRef:
    """What ingestion read: a user's table or folder (digest: of its URI; its content is versioned once
    ingested), or the toy world (digest: of the generator's settings, which decide every sample)."""
    from photogenic.config import to_dict

    described: dict[str, Any] = {"world": to_dict(config.world)} if source == "world" else {"uri": source}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:_DIGEST_CHARS]
    if source == "world":
        return DatasetRef("raw", "photogenic.world", digest, "ingestion", source=described)
    return DatasetRef("raw", source, digest, "ingestion")


def stage_lineage(
    stage: str, inputs: Mapping[str, Any], result: Any, config: Config
) -> tuple[list[DatasetRef], list[str]]:
    """The datasets a stage read and wrote, and the model versions (content fingerprints) it read."""
    from photogenic.manifest import ManifestError, manifest_file, read_manifest

    datasets: list[DatasetRef] = []
    outputs = [getattr(result, "manifest_uri", ""), getattr(result, "rehearsal_uri", "")]
    if stage in ("ingest", "ingest-merge", "validate", "curate"):
        datasets += [ref for uri in outputs if uri and (ref := dataset_ref(uri, "output", config))]
    if stage in ("ingest", "ingest-partition", "ingest-merge") and isinstance(inputs.get("source"), str):
        datasets.append(_raw_ref(inputs["source"], config))
    for key, context in _DATASET_INPUTS.items():
        uri = inputs.get(key)
        if isinstance(uri, str) and uri:
            ref = dataset_ref(uri, _CONTEXT_BY_STAGE.get(stage, context), config)
            datasets += [ref] if ref else []
    models = []
    for key in _MODEL_INPUTS:
        uri = inputs.get(key)
        if isinstance(uri, str) and uri:
            try:
                models.append(read_manifest(manifest_file(uri), config.storage).fingerprint)
            except ManifestError as exc:
                log.warning("lineage: no model manifest at %s (%s); not logged", uri, exc)
    return datasets, models


def log_lineage(run: Any, stage: str, inputs: Mapping[str, Any], result: Any, config: Config) -> None:
    """Log `stage_lineage` on `run`: datasets with `log_inputs`, models read as `LoggedModelInput`s (only
    models that were logged as MLflow models: those trained with tracking on)."""
    if run is not None:
        run.attempt("log lineage", lambda: run.log_inputs(*stage_lineage(stage, inputs, result, config)))
