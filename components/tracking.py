"""Opening and closing the pipeline's MLflow parent run."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from photogenic.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def open_run(preset: str, overrides: list, kfp_run_id: str, pipeline_version: str) -> str:
    """Open the pipeline's MLflow parent run (every stage logs a child run under it).

    Args:
        preset: the config preset (`photogenic config presets`).
        overrides: `dotted.key=value` config overrides.
        kfp_run_id: this KFP run's id; tags the parent run so `close_run` finds it.
        pipeline_version: the compiled pipeline's version, as a tag.

    Returns:
        The MLflow run id of the parent run.
    """
    from photogenic import tasks

    config = tasks.task_config(preset, overrides)
    return tasks.open_pipeline_run(config, kfp_run_id, pipeline_version)


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

    config = tasks.task_config(preset, overrides)
    error = status.error_message or ""
    return tasks.close_pipeline_run(config, kfp_run_id, status.state, error)
