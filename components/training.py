"""Training components: a recipe in the task's own pod, or as a multi-node job on Kubeflow's training operator."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model, Output

from photogenic.components.images import CPU_IMAGE, TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train(
    config_uri: str,
    recipe: str,
    data_uri: str,
    data_version: str,
    base: str,
    base_version: str,
    judges: str,
    rehearsal: str,
    model: Output[Model],
) -> NamedTuple("Outputs", [("uri", str), ("version", str), ("result", dict)]):
    """Train one recipe (DeepSpeed, resuming from the run's latest checkpoint) and export the model.

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        recipe: `autoencoder`, `pretrain` or `quality_tune`.
        data_uri: the training dataset's manifest URI.
        data_version: its content fingerprint (with `base_version`, the cache key).
        base: the model to start from ("" for none): the autoencoder, or the pretrained model.
        base_version: its fingerprint ("" for none).
        judges: the curation judge set for early stopping ("" for none).
        rehearsal: a dataset to rehearse, read only when the recipe's `rehearsal_fraction` or
            `guidance_preservation` is on ("" for none).
        model: the exported model's manifest (the weights stay in the store, in diffusers format).

    Returns:
        uri: the model folder; version: the model's fingerprint; result: steps, loss, timing.
    """
    from photogenic import tasks
    from photogenic.artifacts import publish_artifact

    config = tasks.task_config(config_uri)
    parent_run_id = tasks.parent_run_id(config)  # by the run id, not an input: see tasks.parent_run_id
    result = tasks.train_model(config, recipe, data_uri, base, judges, parent_run_id, rehearsal)
    publish_artifact(model, result["manifest_uri"], config, recipe=recipe)
    return (result["model_uri"], result["fingerprint"], result)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def launch_training(
    config_uri: str,
    recipe: str,
    data_uri: str,
    data_version: str,
    base: str,
    base_version: str,
    judges: str,
    rehearsal: str,
    backend: str,
    image: str,
    image_pull_secrets: list,
    nodes: int,
    gpus_per_node: int,
    node_selector: dict,
    tolerations: list,
    cache_pvc: str,
    timeout_hours: float,
    model: Output[Model],
) -> NamedTuple("Outputs", [("uri", str), ("version", str), ("result", dict)]):
    """Train one recipe across GPU nodes: create a PyTorchJob (or a Trainer v2 TrainJob), stream the
    master's log, wait, fail with the operator's reason, delete the job. This pod holds no GPU.

    Args:
        config_uri: the run's resolved config (published by `open_run`).
        recipe: `pretrain` (or `autoencoder`, `quality_tune`).
        data_uri: the training dataset's manifest URI.
        data_version: its content fingerprint (cache key).
        base: the model to start from ("" for none).
        base_version: its fingerprint ("" for none).
        judges: the curation judge set for early stopping ("" for none).
        rehearsal: a dataset to rehearse (see `train`; "" for none).
        backend: `trainjob` (Kubeflow Trainer v2) or `pytorchjob` (training operator v1).
        image: the training image (the pipeline names it from components/images.json when compiled).
        image_pull_secrets: Secrets for pulling it (the job's pods get them).
        nodes: number of nodes.
        gpus_per_node: GPUs (and torchrun processes) per node.
        node_selector: the job pods' node selector.
        tolerations: the job pods' tolerations (Kubernetes toleration objects).
        cache_pvc: a PVC mounted at /cache on every node ("" for an emptyDir per node).
        timeout_hours: fail the task and delete the job after this long.
        model: the exported model's manifest.

    Returns:
        uri: the model folder; version: the model's fingerprint; result: steps, loss, timing.
    """
    from photogenic import tasks
    from photogenic.artifacts import publish_artifact

    config = tasks.task_config(config_uri)
    parent_run_id = tasks.parent_run_id(config)  # by the run id, not an input: see tasks.parent_run_id
    result = tasks.launch_training(
        config,
        config_uri,
        recipe,
        data_uri,
        base,
        judges,
        parent_run_id,
        backend=backend,
        image=image,
        image_pull_secrets=image_pull_secrets,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        node_selector=node_selector,
        tolerations=tolerations,
        cache_pvc=cache_pvc,
        timeout_s=timeout_hours * 3600,
        rehearsal=rehearsal,
    )
    publish_artifact(model, result["manifest_uri"], config, recipe=recipe)
    return (result["model_uri"], result["fingerprint"], result)
