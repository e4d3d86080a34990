"""Opening and closing the pipeline's MLflow parent run."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from photogenic.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def open_run(preset: str, overrides: list, kfp_run_id: str, pipeline_version: str) -> NamedTuple(
    "Outputs", [("run_id", str), ("config_uri", str)]
):
    """Resolve the run's config once and publish it to the store; open the pipeline's MLflow parent run
    (every stage logs a child run under it).

    Args:
        preset: the config preset (`photogenic config presets`).
        overrides: `dotted.key=value` config overrides.
        kfp_run_id: this KFP run's id; tags the parent run so `close_run` finds it.
        pipeline_version: the compiled pipeline's version, as a tag.

    Returns:
        run_id: the MLflow run id of the parent run; config_uri: the resolved config every other task reads.
    """
    from photogenic import tasks

    config = tasks.config_from(preset, overrides)
    config_uri = tasks.publish_config(config, overrides)
    return (tasks.open_pipeline_run(config, kfp_run_id, pipeline_version), config_uri)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def close_run(preset: str, overrides: list, kfp_run_id: str, status: PipelineTaskFinalStatus) -> str:
    """The exit handler: mark the parent run FINISHED or FAILED, with the failing task's message.

    Args:
        preset: the config preset.
        overrides: config overrides.
        kfp_run_id: this KFP run's id.
        status: the final status of the pipeline's tasks (filled in by KFP).

    Returns:
        The MLflow status written ("" if no parent run had been opened).
    """
    from photogenic import tasks

    config = tasks.config_from(preset, overrides)  # the exit handler cannot take open_run's outputs
    error = status.error_message or ""
    return tasks.close_pipeline_run(config, kfp_run_id, status.state, error)
