"""The pipeline: Emu's recipe as wiring. Every stage is a component; Kubernetes settings are helpers.

ingest (partitions in parallel) -> validate -> autoencoder -> pretrain -> curate -> quality-tune
-> evaluate -> register, with judges trained beside, all under one MLflow parent run that an exit
handler closes as FINISHED or FAILED.
"""

from kfp import dsl

from photogenic import components as c
from photogenic import launcher
from photogenic.components.images import PULL_SECRETS, TRAIN_IMAGE
from photogenic.pipelines.kubernetes import (
    data_task,
    on_gpu,
    small,
    uncached,
    with_cluster_env,
)
from photogenic.pipelines.kubernetes import network_retries as retrying

PIPELINE_NAME = "photogenic-quality-tuning"
GPU_TOLERATIONS = [dict(t) for t in launcher.GPU_TOLERATIONS]


def build(version: str, retries: int = 3) -> dsl.graph_component.GraphComponent:
    """The pipeline, with `version` (package version and commit) baked in as the parent run's tag.

    Args:
        version: the pipeline version.
        retries: attempts after a failure for tasks that touch S3 or MLflow (backoff 30 s, doubling).
    """

    def network_retries(task: dsl.PipelineTask) -> dsl.PipelineTask:
        return retrying(task, retries)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=f"Photogenic {version}: quality-tuning of a latent diffusion model (Emu, Dai et al. 2023).",
    )
    def quality_tuning(
        preset: str = "demo",
        overrides: list = [],  # noqa: B006 - KFP reads the default from here
        source: str = "world",
        ingest_partitions: int = 2,
        pretrain_backend: str = "in-task",
        pretrain_nodes: int = 1,
        gpus_per_node: int = 8,
        task_gpus: int = 1,
        train_cpu: str = "8",
        train_memory: str = "64Gi",
        data_cpu: str = "4",
        data_memory: str = "16Gi",
        gpu_node_selector: dict = {},  # noqa: B006
        gpu_tolerations: list = GPU_TOLERATIONS,
        job_cache_pvc: str = "",
        training_timeout_hours: float = 168.0,
        model_name: str = "photogenic-quality-tuned",
        approved: str = "",
        summary_uri: str = "",
    ) -> None:
        """Photogenic's pipeline.

        Args:
            preset: config preset (`tiny`, `demo`, `gpu`).
            overrides: `dotted.key=value` config overrides, e.g. `["storage.root=s3://bucket/photogenic"]`.
            source: what to ingest: `world`, a captions table URI, or tar shards.
            ingest_partitions: parallel ingestion tasks.
            pretrain_backend: `in-task` (the task's own pod), or a multi-node job: `trainjob` (Kubeflow
                Trainer v2, runtime `torch-distributed`) or `pytorchjob` (training operator v1).
            pretrain_nodes: nodes of the pretraining job.
            gpus_per_node: GPUs (and processes) per node of the pretraining job.
            task_gpus: GPUs of each in-task training pod (one process, one device: 1; 0 without GPUs).
            train_cpu: CPUs of each training pod (in-task and job nodes; request = limit).
            train_memory: memory of each training pod.
            data_cpu: CPUs of data, judge and evaluation tasks.
            data_memory: memory of data, judge and evaluation tasks.
            gpu_node_selector: node selector for training pods.
            gpu_tolerations: tolerations for training pods.
            job_cache_pvc: a PVC the job's nodes mount at /cache ("" for an emptyDir per node).
            training_timeout_hours: a launched job fails after this long.
            model_name: the MLflow registered model.
            approved: with `curate.review=import`, the reviewers' JSON of approved keys (a store URI).
            summary_uri: where the run's summary JSON goes ("" = only on the MLflow parent run).
        """
        settings = {"preset": preset, "overrides": overrides}

        def step(task: dsl.PipelineTask, pod: str = "small", cached: bool = True) -> dsl.PipelineTask:
            """A task's cluster settings in one call: the cluster's env, caching, retries, its pod's size."""
            sized = {
                "small": small,
                "data": lambda t: data_task(t, data_cpu, data_memory),
                "train": lambda t: on_gpu(t, task_gpus, train_cpu, train_memory, gpu_node_selector, gpu_tolerations),
            }[pod]
            return sized(network_retries(with_cluster_env(task if cached else uncached(task))))

        job_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        closer = step(c.close_run(**settings, kfp_run_id=job_id), cached=False)
        with dsl.ExitHandler(closer, name="photogenic"):
            # The config is resolved once, here, and published to the store; every task after reads it.
            parent = step(c.open_run(**settings, kfp_run_id=job_id, pipeline_version=version), cached=False)
            run_id = parent.outputs["run_id"]
            cfg = {"config_uri": parent.outputs["config_uri"]}

            # Ingestion: a source may change under the same URI, so these tasks always run (and reuse
            # their own outputs when the source did not change).
            plan = step(
                c.plan_ingest(**cfg, source=source, partitions=ingest_partitions, parent_run_id=run_id), cached=False
            )
            with dsl.ParallelFor(plan.output, parallelism=8) as part:
                piece = step(c.ingest_partition(source=source, partition=part), "data", cached=False)
            ingested = step(
                c.merge_ingest(**cfg, source=source, parts=dsl.Collected(piece.output), parent_run_id=run_id),
                "data",
                cached=False,
            )

            # Cached tasks take nothing that changes per run (the parent run id would): a run with the same
            # inputs reuses their results. They find the parent MLflow run by the pod's run-id label.
            clean = step(
                c.validate(**cfg, data_uri=ingested.outputs["uri"], data_version=ingested.outputs["version"]), "data"
            )
            data = {"data_uri": clean.outputs["uri"], "data_version": clean.outputs["version"]}

            no_base = {"base": "", "base_version": "", "judges": "", "rehearsal": ""}
            autoencoder = step(c.train(**cfg, recipe="autoencoder", **data, **no_base), "train")
            autoencoder.set_display_name("autoencoder")
            base = {"base": autoencoder.outputs["uri"], "base_version": autoencoder.outputs["version"]}

            with dsl.If(pretrain_backend == "in-task", "pretrain-in-task"):
                pretrain_here = step(
                    c.train(**cfg, recipe="pretrain", **data, **base, judges="", rehearsal=""), "train"
                )
                pretrain_here.set_display_name("pretrain")
            with dsl.Else("pretrain-on-training-operator"):
                pretrain_job = step(
                    c.launch_training(
                        **cfg,
                        recipe="pretrain",
                        **data,
                        **base,
                        judges="",
                        rehearsal="",
                        backend=pretrain_backend,
                        image=TRAIN_IMAGE,
                        image_pull_secrets=PULL_SECRETS,
                        nodes=pretrain_nodes,
                        gpus_per_node=gpus_per_node,
                        node_selector=gpu_node_selector,
                        tolerations=gpu_tolerations,
                        cache_pvc=job_cache_pvc,
                        timeout_hours=training_timeout_hours,
                    )
                )
                pretrain_job.set_display_name("pretrain-job")
            pretrained_uri = dsl.OneOf(pretrain_here.outputs["uri"], pretrain_job.outputs["uri"])
            pretrained_version = dsl.OneOf(pretrain_here.outputs["version"], pretrain_job.outputs["version"])
            pretrained_result = dsl.OneOf(pretrain_here.outputs["result"], pretrain_job.outputs["result"])

            curation_judges = step(c.judges(**cfg, purpose="curation"), "data").set_display_name("judges-curation")
            evaluation_judges = step(c.judges(**cfg, purpose="evaluation"), "data")
            evaluation_judges.set_display_name("judges-evaluation")

            curated = step(
                c.curate(
                    **cfg,
                    **data,
                    judges_uri=curation_judges.outputs["uri"],
                    judges_version=curation_judges.outputs["version"],
                    approved=approved,
                ),
                "data",
            )

            tuned = step(
                c.train(
                    **cfg,
                    recipe="quality_tune",
                    data_uri=curated.outputs["uri"],
                    data_version=curated.outputs["version"],
                    base=pretrained_uri,
                    base_version=pretrained_version,
                    judges=curation_judges.outputs["uri"],
                    # what the automatic filters kept, rehearsed in a share of every batch (not in the paper)
                    rehearsal=curated.outputs["rehearsal"],
                ),
                "train",
            )
            tuned.set_display_name("quality-tune")

            evaluation = step(
                c.evaluate(
                    **cfg,
                    model_a=tuned.outputs["uri"],
                    model_a_version=tuned.outputs["version"],
                    model_b=pretrained_uri,
                    model_b_version=pretrained_version,
                    judges_uri=evaluation_judges.outputs["uri"],
                    judges_version=evaluation_judges.outputs["version"],
                    curation_judges_uri=curation_judges.outputs["uri"],
                ),
                "data",
            )

            registered = step(
                c.register(
                    **cfg,
                    model=tuned.outputs["result"],
                    evaluation=evaluation.outputs["result"],
                    model_name=model_name,
                    parent_run_id=run_id,
                ),
                cached=False,
            )

            step(
                c.summarize(
                    **cfg,
                    ingest=ingested.outputs["result"],
                    validate=clean.outputs["result"],
                    autoencoder=autoencoder.outputs["result"],
                    pretrain=pretrained_result,
                    judges_curation=curation_judges.outputs["result"],
                    judges_evaluation=evaluation_judges.outputs["result"],
                    curate=curated.outputs["result"],
                    quality_tune=tuned.outputs["result"],
                    evaluate=evaluation.outputs["result"],
                    register=registered.output,
                    parent_run_id=run_id,
                    summary_uri=summary_uri,
                ),
                cached=False,
            )

    return quality_tuning


def __getattr__(name: str) -> dsl.graph_component.GraphComponent:
    """`quality_tuning`, built on first use (for `kfp dsl compile --py pipelines/quality_tuning.py
    --function quality_tuning ...`), so importing this module compiles nothing and runs no git."""
    if name != "quality_tuning":
        raise AttributeError(name)
    from photogenic.pipelines.compiler import pipeline_version

    return build(pipeline_version())
