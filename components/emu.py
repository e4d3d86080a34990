"""The Emu components: judges, curation, evaluation, registration, and the run's summary."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Output

from photogenic.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def judges(config_uri: str, purpose: str, judge_set: Output[Artifact]) -> NamedTuple(
    "Outputs", [("uri", str), ("version", str), ("result", dict)]
):
    """Train and validate a judge set on oracle-labelled renders drawn with their own seeds.

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        purpose: `curation` (the rating set behind the automatic filters) or `evaluation` (the raters).
        judge_set: the judge set's manifest, with its validation metrics.

    Returns:
        uri: the judge set's folder; version: its fingerprint; result: the validation metrics.
    """
    from photogenic import tasks
    from photogenic.artifacts import publish_artifact

    config = tasks.task_config(config_uri)
    parent_run_id = tasks.parent_run_id(config)  # by the run id, not an input: see tasks.parent_run_id
    result = tasks.train_judges(config, purpose, parent_run_id)
    publish_artifact(judge_set, result["manifest_uri"], config, purpose=purpose, **result["metrics"])
    return (result["uri"], result["fingerprint"], result)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def curate(
    config_uri: str,
    data_uri: str,
    data_version: str,
    judges_uri: str,
    judges_version: str,
    approved: str,
    dataset: Output[Dataset],
    rehearsal_set: Output[Dataset],
    funnel: Output[HTML],
) -> NamedTuple("Outputs", [("uri", str), ("version", str), ("rehearsal", str), ("result", dict)]):
    """The curation funnel: automatic filters, generalist and specialist review, the QT dataset, and the
    rehearsal set (what the automatic filters kept) that quality-tuning mixes into its batches.

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        data_uri: the validated dataset's manifest URI.
        data_version: its content fingerprint (with `judges_version`, the cache key).
        judges_uri: the curation judge set.
        judges_version: its fingerprint.
        approved: with `curate.review=import`, the URI of the reviewers' JSON of approved keys ("" for none).
        dataset: the QT dataset's manifest.
        rehearsal_set: the rehearsal set's manifest.
        funnel: the funnel report (counts after every filter and round, rejected samples by reason).

    Returns:
        uri: the QT dataset's manifest URI; version: its fingerprint; rehearsal: the rehearsal set's
        manifest URI; result: the funnel.
    """
    from photogenic import tasks
    from photogenic.artifacts import copy_report, publish_artifact

    config = tasks.task_config(config_uri)
    parent_run_id = tasks.parent_run_id(config)  # by the run id, not an input: see tasks.parent_run_id
    result = tasks.curate_data(config, data_uri, judges_uri, parent_run_id, approved)
    publish_artifact(dataset, result["manifest_uri"], config)
    publish_artifact(rehearsal_set, result["rehearsal_uri"], config)
    copy_report(result["report_uri"], funnel, config)
    return (result["manifest_uri"], result["fingerprint"], result["rehearsal_uri"], result)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    config_uri: str,
    model_a: str,
    model_a_version: str,
    model_b: str,
    model_b_version: str,
    judges_uri: str,
    judges_version: str,
    curation_judges_uri: str,
    report: Output[HTML],
) -> NamedTuple("Outputs", [("uri", str), ("result", dict)]):
    """Compare model A (the candidate) with model B (the reference) on the test split's prompts and seeds:
    visual appeal without the prompt, text faithfulness with it; win, tie and loss with 95% intervals.
    World models are rated by the ground-truth panel, with the learned judges beside it as a proxy.

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        model_a: the candidate model (a "win" means A is better).
        model_a_version: its fingerprint (the versions are the cache key).
        model_b: the reference model.
        model_b_version: its fingerprint.
        judges_uri: the evaluation judge set (never the curation one).
        judges_version: its fingerprint.
        curation_judges_uri: the curation judge set, to report how far the two judge sets agree ("": none).
        report: the HTML report: side-by-side grid, tables, funnel, judge validity.

    Returns:
        uri: the evaluation's manifest URI; result: the metrics and the judges' verdict.
    """
    from photogenic import tasks
    from photogenic.artifacts import copy_report

    config = tasks.task_config(config_uri)
    parent_run_id = tasks.parent_run_id(config)  # by the run id, not an input: see tasks.parent_run_id
    result = tasks.evaluate_models(config, model_a, model_b, judges_uri, parent_run_id, curation_judges_uri)
    copy_report(result["report_uri"], report, config)
    return (result["manifest_uri"], result)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(config_uri: str, model: dict, evaluation: dict, model_name: str, parent_run_id: str) -> dict:
    """Register the quality-tuned model in MLflow; alias it `champion` only if the evaluation passes the
    gate (appeal win rate's lower bound above 50%, faithfulness not worse, also on held-out concepts, judges
    valid).

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        model: the quality-tune result.
        evaluation: the evaluation result.
        model_name: the registered model's name.
        parent_run_id: the MLflow parent run.

    Returns:
        name, version, alias ("" if the gate failed), the gate's verdict and the model's URI.
    """
    from photogenic import tasks

    config = tasks.task_config(config_uri)
    return tasks.register_model(config, model, evaluation, model_name, parent_run_id)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def summarize(
    config_uri: str,
    ingest: dict,
    validate: dict,
    autoencoder: dict,
    pretrain: dict,
    judges_curation: dict,
    judges_evaluation: dict,
    curate: dict,
    quality_tune: dict,
    evaluate: dict,
    register: dict,
    parent_run_id: str,
    summary_uri: str,
) -> dict:
    """Gather every stage's result into the run's summary: logged on the parent run as `summary.json`,
    and written to `summary_uri` when given (the local run reads it from there).

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        ingest, validate, autoencoder, pretrain, judges_curation, judges_evaluation, curate, quality_tune,
            evaluate, register: the stages' results.
        parent_run_id: the MLflow parent run.
        summary_uri: where to write the summary JSON ("" for nowhere).

    Returns:
        The summary.
    """
    from photogenic import tasks

    config = tasks.task_config(config_uri)
    stages = {
        "ingest": ingest,
        "validate": validate,
        "autoencoder": autoencoder,
        "pretrain": pretrain,
        "judges": {"curation": judges_curation, "evaluation": judges_evaluation},
        "curate": curate,
        "quality_tune": quality_tune,
        "evaluate": evaluate,
        "register": register,
    }
    return tasks.summarize(config, stages, parent_run_id, summary_uri)
