"""Kubernetes manifests and container images, checked without a cluster or a Docker daemon."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("base", "overlays/local", "overlays/gpu")
CUSTOM_KINDS = {"PyTorchJob", "TrainJob", "Pipeline", "PipelineVersion"}


def kustomize(path: str) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(MANIFESTS / path)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec") or spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get(
        "spec"
    )
    return [*(pod or {}).get("containers", []), *(pod or {}).get("initContainers", [])]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc.get("spec", {}).get("template", {}).get("spec", {})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_builds_and_its_core_resources_validate_strictly(overlay: str) -> None:
    import kubernetes_validate

    docs = kustomize(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Role", "RoleBinding", "ConfigMap", "NetworkPolicy"} <= kinds
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, "1.31", strict=True)  # raises on an unknown or mistyped field
    if overlay == "overlays/local":
        assert any(d["kind"] == "Deployment" and d["metadata"]["name"] == "seaweedfs" for d in docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policy_limits_non_root_no_latest_no_secrets(overlay: str) -> None:
    docs = kustomize(overlay)
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")]
    assert workloads
    for doc in workloads:
        pod = pod_spec(doc)
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        for c in containers(doc):
            where = f"{doc['metadata']['name']}/{c['name']}"
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), where
            assert c.get("readinessProbe") and c.get("livenessProbe"), where
    # No kustomization applies a Secret (it would overwrite the real one); the templates hold no values.
    assert not [d for d in docs if d["kind"] == "Secret"]
    for template in (MANIFESTS / "secrets").glob("*.template.yaml"):
        secret = yaml.safe_load(template.read_text())
        for key, value in secret["stringData"].items():
            if key in ("POSTGRES_USER", "POSTGRES_DB"):
                continue
            assert not re.search(r'"(accessKey|secretKey)": "[^"]', value) and (value == "" or key == "s3.json"), key


def test_the_launcher_role_allows_exactly_the_jobs_and_pod_logs() -> None:
    (role,) = [d for d in kustomize("base") if d["kind"] == "Role"]
    rules = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    job_verbs = {"create", "get", "list", "watch", "delete"}
    assert rules == {
        ("kubeflow.org", "pytorchjobs"): job_verbs,
        ("trainer.kubeflow.org", "trainjobs"): job_verbs,
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get", "list"},
    }


def test_mlflow_server_uses_postgres_s3_and_allowed_hosts() -> None:
    docs = kustomize("base")
    (mlflow,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    (c,) = containers(mlflow)
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@")
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"
    assert "MLFLOW_ARTIFACTS_DESTINATION" in env and "--serve-artifacts" in c["args"]
    allowed = next(a for a in c["args"] if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert "mlflow.photogenic.svc.cluster.local:5000" in allowed and "*" not in allowed
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "photogenic-config")
    from photogenic.launcher import CONFIG_MAP_KEYS

    assert set(config["data"]) == set(CONFIG_MAP_KEYS)  # what pipelines/kubernetes.py maps into every task


# --------------------------------------------------------------------------------------------- generated


def _regenerate_job(path: Path) -> str:
    from photogenic.cli import main

    first, body = path.read_text().split("\n", 1)
    args = shlex.split(first.removeprefix("# photogenic "))
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return body, result.output


@pytest.mark.parametrize("backend", ["pytorchjob", "trainjob"])
def test_standalone_jobs_are_what_the_launcher_builds_and_pass_the_sdk_models(backend: str) -> None:
    path = MANIFESTS / "jobs" / f"pretrain-{backend}.yaml"
    checked_in, fresh = _regenerate_job(path)
    assert checked_in == fresh, f"{path} is stale: run `make manifests`"
    body = yaml.safe_load(checked_in)
    if backend == "pytorchjob":
        from kubeflow.training import ApiClient
        from kubeflow.training.models import KubeflowOrgV1PyTorchJob

        job = ApiClient().deserialize(SimpleNamespace(data=json.dumps(body)), KubeflowOrgV1PyTorchJob)
        master = job.spec.pytorch_replica_specs["Master"].template.spec.containers[0]
        command = master["command"] if isinstance(master, dict) else master.command
    else:
        from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

        from photogenic.launcher import _same_fields

        job = TrainerV1alpha1TrainJob.from_dict(body)
        _same_fields(body, job.to_dict(), "TrainJob")
        command = ["torchrun", "-m", "photogenic", *job.spec.trainer.args]
    # The pods run the same `photogenic train` as the pipeline and the local tests.
    i = command.index("photogenic")
    assert command[i + 1 : i + 3] == ["train", "pretrain"]
    from photogenic.cli import main

    ctx = main.make_context("photogenic", list(command[i + 1 :]))
    sub = main.get_command(ctx, "train")
    sub.make_context("train", list(command[i + 2 :]))  # parses: options and overrides all known


def test_the_gitops_pipeline_resources_carry_the_compiled_pipeline() -> None:
    from photogenic.pipelines.compiler import COMPILED, compile_pipeline, read_version

    path = MANIFESTS / "pipeline" / "quality-tuning.yaml"
    pipeline, version = list(yaml.safe_load_all(path.read_text()))
    assert pipeline["kind"] == "Pipeline" and version["kind"] == "PipelineVersion"
    assert version["spec"]["pipelineName"] == pipeline["metadata"]["name"] == "photogenic-quality-tuning"
    recorded = read_version(path)
    assert recorded == read_version(COMPILED), "run `make manifests`: the GitOps copy lags the compiled pipeline"
    spec = list(yaml.safe_load_all(COMPILED.read_text()))[0]
    assert version["spec"]["pipelineSpec"]["root"] == spec["root"]
    assert version["spec"]["displayName"] == recorded
    assert compile_pipeline.__doc__  # the generator is the compile command (see Makefile `manifests`)


# --------------------------------------------------------------------------------------------- images


def _stages(dockerfile: Path) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in re.sub(r"\\\n", " ", dockerfile.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


@pytest.mark.parametrize("name", ["photogenic", "photogenic-train"])
def test_dockerfile_rules(name: str) -> None:
    path = ROOT / "images" / name / "Dockerfile"
    text = re.sub(r"\\\n", " ", path.read_text())
    args = {k: v.strip('"') for k, v in re.findall(r'^ARG (\w+)=("[^"]*"|\S*)', text, flags=re.M)}
    for line in re.findall(r"^FROM (\S+)", text, flags=re.M):
        image = args.get(line.strip("${}"), line)
        if image in ("build",):
            continue
        tag = image.rsplit("/", 1)[-1]
        assert "@sha256:" in image or (":" in tag and not tag.endswith(":latest")), f"{name}: unpinned base {image}"
    final = _stages(path)[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"{name}: the final stage must run as non-root"
    for line in re.findall(r"^(?:ARG|ENV) (.*)$", text, flags=re.M):
        assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", line, flags=re.I), (
            f"{name}: secret in build: {line}"
        )
    installs = [
        line.split("pip install", 1)[1].split("&&")[0].split() for line in text.splitlines() if "pip install" in line
    ]
    assert any("/src" in words for words in installs), f"{name}: the package is installed from this repo"
    # Versions pinned where the image installs something by name; a build argument's default counts.
    for words in installs:
        words = [w for word in words for w in (args[word[1:]].split() if word.startswith("$") else [word])]
        skip = False
        for word in words:
            if skip or word.startswith(("/", "-")):
                skip = word in ("--index-url", "--extra-index-url")
                continue
            assert "==" in word, f"{name}: unpinned {word}"


def test_the_images_named_by_the_components_are_the_ones_images_build_writes(tmp_path: Path) -> None:
    from photogenic.components.images import IMAGES

    assert set(IMAGES) == {p.name for p in (ROOT / "images").iterdir() if (p / "Dockerfile").exists()}
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "photogenic-workspace"} <= set(dockerignore)
