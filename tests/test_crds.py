"""Every custom resource we render, validated against the real CRD schemas of each Kubeflow release we
support (vendored in tests/data/crds; `tests/data/crds/refresh.py` refreshes them)."""

from __future__ import annotations

import gzip
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from photogenic.launcher import GPU_TOLERATIONS, PodRef, TrainingJob, pytorchjob, trainjob
from tests.crds import CRDS, SUPPORTED, errors, load

ROOT = Path(__file__).resolve().parents[1]


def _jobs() -> list[TrainingJob]:
    """The shapes the pipeline and `photogenic job` render: one node without GPUs, many nodes with GPUs,
    scheduling constraints, a shared cache, pull secrets and an owner."""
    args = ("train", "pretrain", "--data", "s3://b/datasets/validated-0/manifest.json", "--preset", "gpu")
    return [
        TrainingJob(name="photogenic-pretrain-a", namespace="kubeflow", image="r/p:1", args=args, gpus_per_node=0),
        TrainingJob(
            name="photogenic-pretrain-b",
            namespace="team-a",
            image="registry.example.com/ml/photogenic-train:0.2.0@sha256:" + "0" * 64,
            args=args,
            nodes=4,
            gpus_per_node=8,
            node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            tolerations=GPU_TOLERATIONS,
            cache_pvc="photogenic-cache",
            image_pull_secrets=("photogenic-registry",),
            owner=PodRef("quality-tuning-x-system-container-impl-1", "8d5b6a1e-0000-4000-8000-000000000001"),
        ),
    ]


def _checked_in(backend: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifests" / "jobs" / f"pretrain-{backend}.yaml").read_text())


@pytest.mark.parametrize("crd", SUPPORTED["PyTorchJob"])
def test_pytorchjobs_validate_against_every_supported_training_operator(crd: str) -> None:
    for body in [*(pytorchjob(job) for job in _jobs()), _checked_in("pytorchjob")]:
        assert errors(body, crd) == [], body["metadata"]["name"]


@pytest.mark.parametrize("crd", SUPPORTED["TrainJob"])
def test_trainjobs_validate_against_every_supported_trainer(crd: str) -> None:
    for body in [*(trainjob(job) for job in _jobs()), _checked_in("trainjob")]:
        assert errors(body, crd) == [], body["metadata"]["name"]


@pytest.mark.parametrize("runtime", sorted(p.name for p in CRDS.glob("trainer-*-torch_distributed.yaml.gz")))
def test_the_trainjob_patches_what_the_torch_runtime_has(runtime: str) -> None:
    """Trainer applies our runtime patch by names: the replicated job and container must exist in the
    `torch-distributed` ClusterTrainingRuntime that each supported release installs."""
    spec = load(runtime)
    assert spec["kind"] == "ClusterTrainingRuntime" and "torch" in spec["spec"]["mlPolicy"]
    body = trainjob(_jobs()[1])
    assert body["spec"]["runtimeRef"]["name"] == spec["metadata"]["name"]
    jobs = {j["name"]: j for j in spec["spec"]["template"]["spec"]["replicatedJobs"]}
    for patched in body["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
        assert patched["name"] in jobs, f"{runtime} has no replicated job {patched['name']!r}"
        theirs = {c["name"] for c in jobs[patched["name"]]["template"]["spec"]["template"]["spec"]["containers"]}
        ours = {c["name"] for c in patched["template"]["spec"]["template"]["spec"]["containers"]}
        assert ours <= theirs, f"{runtime}: no container {ours - theirs} in {patched['name']!r}"


@pytest.mark.parametrize("kind", ["Pipeline", "PipelineVersion"])
def test_the_gitops_pipeline_resources_validate_against_every_supported_kfp(kind: str) -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "manifests/pipeline/quality-tuning.yaml").read_text())}
    for crd in SUPPORTED[kind]:
        assert errors(docs[kind], crd) == [], crd


def test_the_validator_rejects_what_an_api_server_would() -> None:
    """The checks above can fail: unknown fields, wrong types and fields of other releases are errors."""
    body = trainjob(_jobs()[1])
    (crd,) = [c for c in SUPPORTED["TrainJob"] if "v2.3" in c]
    bad = {**body, "spec": {**body["spec"], "podTemplateOverrides": []}}  # Trainer 2.1's field, gone in 2.2
    assert errors(bad, crd) == ["spec: Additional properties are not allowed ('podTemplateOverrides' was unexpected)"]
    bad = {**body, "spec": {**body["spec"], "trainer": {**body["spec"]["trainer"], "numNodes": "4"}}}
    assert errors(bad, crd) == ["spec.trainer.numNodes: '4' is not of type 'integer'"]
    job = pytorchjob(_jobs()[1])
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resource"] = {}
    assert "resource" in " ".join(errors(job, SUPPORTED["PyTorchJob"][0]))


def test_the_vendored_files_are_the_ones_their_sources_list() -> None:
    listed = dict(re.findall(r"^\| `([^`]+\.gz)` \|.*\| `([0-9a-f]{16})` \|$", (CRDS / "SOURCES.md").read_text(), re.M))
    assert set(listed) == {p.name for p in CRDS.glob("*.gz")} and listed
    for name, digest in listed.items():
        assert hashlib.sha256(gzip.decompress((CRDS / name).read_bytes())).hexdigest()[:16] == digest, name
    assert {p.name for p in CRDS.glob("LICENSE-*")} == {
        "LICENSE-trainer",
        "LICENSE-training-operator",
        "LICENSE-pipelines",
    }
    assert all("Apache License" in p.read_text() for p in CRDS.glob("LICENSE-*"))
