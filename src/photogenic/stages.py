"""The stage table: every stage's function and MLflow run name, and `run_stage`, the one way the CLI,
the pipeline's tasks and the training pods run a stage."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from photogenic.config import Config, ConfigError

__all__ = ["STAGES", "Stage", "run_stage", "result_dict"]


@dataclass(frozen=True)
class Stage:
    """One stage.

    Attributes:
        function: `module:function`; it takes its inputs, `config` and `run` as keywords and returns a
            result dataclass.
        run_name: the MLflow child run's name; `{recipe}`, `{purpose}`, `{index}` and `{count}` are
            filled from the stage's inputs.
    """

    function: str
    run_name: str

    def load(self) -> Callable[..., Any]:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


STAGES: dict[str, Stage] = {
    "ingest": Stage("photogenic.data.ingest:ingest", "ingest"),
    "ingest-partition": Stage("photogenic.data.ingest:ingest", "ingest-{index}-of-{count}"),
    "ingest-merge": Stage("photogenic.data.merge:merge_partitions", "ingest"),
    "validate": Stage("photogenic.data.validate:validate", "validate"),
    "train": Stage("photogenic.train.run:train", "train-{recipe}"),
    "judges": Stage("photogenic.judges:train_judges", "judges-{purpose}"),
    "curate": Stage("photogenic.curate:curate", "curate"),
    "evaluate": Stage("photogenic.evaluate:evaluate", "evaluate"),
}


def run_stage(
    stage: str,
    config: Config,
    parent_run_id: str | None = None,
    name_fields: Mapping[str, Any] | None = None,
    **inputs: Any,
) -> Any:
    """Run one stage as a child run of `parent_run_id` (its own run when None).

    Args:
        stage: a key of `STAGES`.
        config: the resolved config; logged on the stage's run.
        parent_run_id: the pipeline's MLflow run, or None.
        name_fields: values for the run name's fields that are not inputs (a partition's index).
        **inputs: the stage function's keyword arguments, besides `config` and `run`.

    Returns:
        The stage function's result dataclass.
    """
    from photogenic.tracking import Tracker

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    spec = STAGES[stage]
    fields = {k: str(v).replace("_", "-") for k, v in {**inputs, **(name_fields or {})}.items()}
    with Tracker(config).stage_run(spec.run_name.format(**fields), parent_run_id or None) as run:
        return spec.load()(config=config, run=run, **inputs)


def result_dict(result: Any) -> dict[str, Any]:
    """A stage's result as JSON-able data: its fields and its public properties (`uri`, `counts`)."""
    data = dataclasses.asdict(result)
    for name in dir(type(result)):
        if not name.startswith("_") and isinstance(getattr(type(result), name), property):
            data[name] = getattr(result, name)
    return data
