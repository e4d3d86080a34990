"""Data components: partitioned ingestion and validation."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Output

from photogenic.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def plan_ingest(config_uri: str, source: str, partitions: int, parent_run_id: str) -> list:
    """Cut the source into partitions that ingest in parallel.

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        source: `world`, a captions table URI (.jsonl/.csv/.parquet) or tar shards.
        partitions: how many (capped at the source's number of 256-row chunks).
        parent_run_id: the MLflow parent run. It and the config URI are carried in each item: the loop
            body then needs no other task's output, which kfp.local resolves wrongly inside a ParallelFor.

    Returns:
        One `{"index", "count", "out", "parent_run_id", "config_uri"}` dict per partition.
    """
    from photogenic import tasks

    plan = tasks.plan_ingest(tasks.task_config(config_uri), source, partitions)
    return [{**item, "parent_run_id": parent_run_id, "config_uri": config_uri} for item in plan]


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def ingest_partition(source: str, partition: dict) -> str:
    """Ingest one partition into its own tar shards, de-duplicated within it, bad rows quarantined.

    Args:
        source: the source spec (as for `plan_ingest`).
        partition: one item of `plan_ingest`'s list (with the run's config and MLflow parent run).

    Returns:
        The partition's manifest URI.
    """
    from photogenic import tasks

    config = tasks.task_config(partition["config_uri"])
    return tasks.ingest_partition(config, source, partition, partition["parent_run_id"])["manifest_uri"]


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def merge_ingest(config_uri: str, source: str, parts: list, parent_run_id: str, dataset: Output[Dataset]) -> NamedTuple(
    "Outputs", [("uri", str), ("version", str), ("result", dict)]
):
    """Join the partitions into one dataset (cross-partition duplicates removed) and publish its manifest.

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        source: the source spec.
        parts: the partitions' manifest URIs.
        parent_run_id: the MLflow parent run.
        dataset: the dataset manifest (the shards stay in the store).

    Returns:
        uri: the manifest URI; version: the dataset's content fingerprint; result: counts and timing.
    """
    from photogenic import tasks
    from photogenic.artifacts import publish_artifact

    config = tasks.task_config(config_uri)
    result = tasks.merge_ingest(config, source, parts, parent_run_id)
    publish_artifact(dataset, result["manifest_uri"], config)
    return (result["manifest_uri"], result["fingerprint"], result)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def validate(
    config_uri: str,
    data_uri: str,
    data_version: str,
    dataset: Output[Dataset],
    report: Output[HTML],
) -> NamedTuple("Outputs", [("uri", str), ("version", str), ("result", dict)]):
    """Validate the ingested dataset with Great Expectations; failing samples are quarantined with reasons.

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        data_uri: the ingested dataset's manifest URI.
        data_version: its content fingerprint (the cache key: same data, same result).
        dataset: the clean dataset's manifest.
        report: the HTML validation report.

    Returns:
        uri: the clean dataset's manifest URI; version: its fingerprint; result: counts and report URI.
    """
    from photogenic import tasks
    from photogenic.artifacts import copy_report, publish_artifact

    config = tasks.task_config(config_uri)
    parent_run_id = tasks.parent_run_id(config)  # by the run id, not an input: see tasks.parent_run_id
    result = tasks.validate_data(config, data_uri, parent_run_id)
    publish_artifact(dataset, result["manifest_uri"], config, input_version=data_version)
    copy_report(result["report_uri"], report, config)
    return (result["manifest_uri"], result["fingerprint"], result)
