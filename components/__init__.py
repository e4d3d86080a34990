"""KFP v2 components: one typed shell per stage, each calling one function of `photogenic.tasks`.

Installed as `photogenic.components` (see pyproject.toml's package-dir). Components run in the images
named in `images.json`; nothing is pip-installed at run time (`install_kfp_package=False`). They copy
manifests and reports into KFP output artifacts with `photogenic.artifacts` (outside this package: a
running component must not import the others, whose `@dsl.component` the executor's kfp lacks).
"""

from photogenic.components.data import ingest_partition, merge_ingest, plan_ingest, validate
from photogenic.components.emu import curate, evaluate, judges, register, summarize
from photogenic.components.tracking import close_run, open_run
from photogenic.components.training import launch_training, train

__all__ = [
    "open_run",
    "close_run",
    "plan_ingest",
    "ingest_partition",
    "merge_ingest",
    "validate",
    "train",
    "launch_training",
    "judges",
    "curate",
    "evaluate",
    "register",
    "summarize",
]
