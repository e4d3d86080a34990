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
        sections: the config the stage reads (flat-key prefixes), logged as its run's params; a training
            run logs its own recipe's section and the shared train settings (`stage_sections`).
    """

    function: str
    run_name: str
    sections: tuple[str, ...] = ()

    def load(self) -> Callable[..., Any]:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


_INGEST = ("world", "data")
_JUDGES = ("world", "judges", "train.seed", "evaluate.tie_margin")
_TRAIN = ("world", "model", "train", "evaluate.sampling_steps", "evaluate.guidance_scale")

STAGES: dict[str, Stage] = {
    "ingest": Stage("photogenic.data.ingest:ingest", "ingest", _INGEST),
    "ingest-partition": Stage("photogenic.data.ingest:ingest", "ingest-{index}-of-{count}", _INGEST),
    "ingest-merge": Stage("photogenic.data.merge:merge_partitions", "ingest", _INGEST),
    "validate": Stage("photogenic.data.validate:validate", "validate", ("data",)),
    "train": Stage("photogenic.train.run:train", "train-{recipe}", _TRAIN),
    "judges": Stage("photogenic.judges:train_judges", "judges-{purpose}", _JUDGES),
    "curate": Stage("photogenic.curate:curate", "curate", ("data", "curate")),
    "evaluate": Stage("photogenic.evaluate:evaluate", "evaluate", ("evaluate", "panel", "curate.holdout_concepts")),
}


def stage_sections(stage: str, inputs: Mapping[str, Any]) -> tuple[str, ...]:
    """The config keys a stage's run logs: its `sections`; for training, the shared train settings and
    the trained recipe's own (not the other recipes')."""
    sections = STAGES[stage].sections
    if stage != "train":
        return sections
    from photogenic.config import TrainConfig
    from photogenic.train.run import RECIPES

    shared = [f"train.{f.name}" for f in dataclasses.fields(TrainConfig) if f.name not in RECIPES]
    return (*(s for s in sections if s != "train"), *shared, f"train.{inputs['recipe']}")


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
    from photogenic.lineage import log_lineage
    from photogenic.tracking import Tracker

    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    spec = STAGES[stage]
    fields = {k: str(v).replace("_", "-") for k, v in {**inputs, **(name_fields or {})}.items()}
    sections = stage_sections(stage, inputs)
    with Tracker(config).stage_run(spec.run_name.format(**fields), parent_run_id or None, sections=sections) as run:
        result = spec.load()(config=config, run=run, **inputs)
        log_lineage(run, stage, inputs, result, config)
        return result


def result_dict(result: Any) -> dict[str, Any]:
    """A stage's result as JSON-able data: its fields and its public properties (`uri`, `counts`)."""
    data = dataclasses.asdict(result)
    for name in dir(type(result)):
        if not name.startswith("_") and isinstance(getattr(type(result), name), property):
            data[name] = getattr(result, name)
    return data
