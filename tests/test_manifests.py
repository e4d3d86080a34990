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
OVERLAYS = ("base", "overlays/local", "overlays/gpu", "overlays/multi-user")
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
    job_verbs = {"create", "get", "list", "watch", "patch", "delete"}
    assert rules == {
        ("kubeflow.org", "pytorchjobs"): job_verbs,
        ("trainer.kubeflow.org", "trainjobs"): job_verbs,
        ("", "pods"): {"get", "list"},
        ("", "pods/log"): {"get", "list"},
    }


def test_the_launcher_role_covers_every_call_the_launcher_makes() -> None:
    """A call the Role does not grant is a 403 on the cluster, after the job may already exist."""
    (role,) = [d for d in kustomize("base") if d["kind"] == "Role"]
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    source = (ROOT / "src" / "photogenic" / "launcher.py").read_text()
    calls = set(re.findall(r"custom\.(\w+?)_namespaced_custom_object", source))
    assert calls == {"create", "get", "patch", "delete"}
    needed = {(plural, verb) for plural in ("pytorchjobs", "trainjobs") for verb in calls}
    pod_calls = {"list_namespaced_pod": ("pods", "list"), "read_namespaced_pod_log": ("pods/log", "get")}
    assert set(re.findall(r"core\.(\w+)\(", source)) <= set(pod_calls)
    needed |= {pod_calls[c] for c in re.findall(r"core\.(\w+)\(", source)}
    assert needed <= granted, needed - granted


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
    assert not any("/src" in words for words in installs), f"{name}: the package goes in as a wheel, not from /src"
    # Versions pinned where the image installs something by name; a build argument's default counts.
    for words in installs:
        words = [w for word in words for w in (args[word[1:]].split() if word.startswith("$") else [word])]
        skip = False
        for word in words:
            if skip or word.startswith(("/", "-")):
                skip = word in ("--index-url", "--extra-index-url")
                continue
            assert "==" in word, f"{name}: unpinned {word}"


@pytest.mark.parametrize("name", ["photogenic", "photogenic-train"])
def test_a_change_to_the_code_rebuilds_only_the_packages_layers(name: str) -> None:
    """The final stage copies the build's environment (several GB, the dependencies only), then installs
    the package's wheel (a few hundred kB) built from this repository. A per-commit build argument must come
    after the last RUN: every RUN after an ARG depends on its value, so an ARG GIT_COMMIT before them made
    each commit a new copy of the whole environment (5 GB of dangling images a build, until the disk
    filled). The build stage writes no bytecode into the environment while building the wheel."""
    build, final = _stages(ROOT / "images" / name / "Dockerfile")
    (wheel,) = [line for line in build if "pip wheel" in line]
    assert wheel.startswith("RUN PYTHONDONTWRITEBYTECODE=1 ") and "--no-deps" in wheel and wheel.endswith(" /src")
    env_copy = next(i for i, line in enumerate(final) if line.startswith("COPY --from=build /opt/"))
    install = next(i for i, line in enumerate(final) if "pip install" in line)
    assert env_copy < install and "/tmp/dist/*.whl" in final[install] and "--no-deps" in final[install]
    last_run = max(i for i, line in enumerate(final) if line.startswith("RUN "))
    assert all(i > last_run for i, line in enumerate(final) if line.startswith("ARG ")), final


def test_the_images_named_by_the_components_are_the_ones_images_build_writes(tmp_path: Path) -> None:
    from photogenic.components.images import IMAGES

    assert set(IMAGES) == {p.name for p in (ROOT / "images").iterdir() if (p / "Dockerfile").exists()}
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "photogenic-workspace"} <= set(dockerignore)


# --------------------------------------------------------------------------------------------- cluster defects


def _ref_key(ref: str) -> tuple[str, str]:
    """(name, digest) where a digest pins the image, else (name, tag): how kustomize and KFP may write it."""
    from photogenic.components.images import split_ref

    name, tag, digest = split_ref(ref)
    return (name, digest or tag)


def test_one_file_names_every_image_and_pull_secret_the_cluster_uses(tmp_path: Path) -> None:
    import shutil

    from photogenic.components.images import IMAGES, PULL_SECRETS, SERVICE_ACCOUNTS, TRAIN_IMAGE, write_kustomize

    checked_in = MANIFESTS / "base" / "images" / "kustomization.yaml"
    assert write_kustomize(tmp_path / "k.yaml").read_text() == checked_in.read_text(), "stale: run `make manifests`"
    ours = {_ref_key(ref) for ref in IMAGES.values()}
    for overlay in OVERLAYS:
        docs = kustomize(overlay)
        images = [c["image"] for d in docs for c in containers(d) if "photogenic" in c["image"]]
        assert images and all(_ref_key(i) in ours for i in images), (overlay, images)
        accounts = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] in SERVICE_ACCOUNTS]
        assert len(accounts) == 2 and all(
            a["imagePullSecrets"] == [{"name": s} for s in PULL_SECRETS] for a in accounts
        ), overlay
    for backend in ("pytorchjob", "trainjob"):
        text = (MANIFESTS / "jobs" / f"pretrain-{backend}.yaml").read_text()
        assert f"image: {TRAIN_IMAGE}" in text and "name: photogenic-registry" in text

    # Another registry, pinned by digest, with a corporate pull secret: the manifests follow.
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    digest = "sha256:" + "a" * 64
    data = {
        "images": {
            "photogenic": f"registry.example.com/ml/photogenic:0.2.0@{digest}",
            "photogenic-train": "registry.example.com/ml/photogenic-train:0.2.0",
        },
        "pull_secrets": ["corp-registry"],
    }
    write_kustomize(copy / "base" / "images" / "kustomization.yaml", data)
    out = subprocess.run(["kubectl", "kustomize", str(copy / "overlays" / "local")], capture_output=True, text=True)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (mlflow,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]
    assert containers(mlflow)[0]["image"] == f"registry.example.com/ml/photogenic@{digest}"
    assert {d["metadata"]["name"]: d.get("imagePullSecrets") for d in docs if d["kind"] == "ServiceAccount"} == {
        "mlflow": [{"name": "corp-registry"}],
        "photogenic-pipeline": [{"name": "corp-registry"}],
    }


def _build_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("photogenic_images_build", ROOT / "images" / "build.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("outcome", ["built", "failed", "pushed"])
def test_images_build_names_the_new_images_before_building_them(
    outcome: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The images carry components/images.json (the launcher read its training image from it): it must
    name the images being built while they are built; a failed build puts it back; a push pins digests."""
    build = _build_module(monkeypatch)
    images_json = tmp_path / "images.json"
    old = (ROOT / "components" / "images.json").read_text()
    images_json.write_text(old)
    monkeypatch.setattr(build, "IMAGES_JSON", images_json)
    monkeypatch.setattr(build, "find_engine", lambda wanted=None: "podman")
    monkeypatch.setattr(build, "image_size", lambda engine, ref: None)
    monkeypatch.setattr(build.PipSettings, "from_env", classmethod(lambda cls: cls(None, None, None)))
    seen: dict[str, dict] = {}
    digest = "sha256:" + "b" * 64

    def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
        if cmd[1] == "build":
            ref = cmd[cmd.index("-t") + 1]
            seen[ref] = json.loads(images_json.read_text())["images"]
            failed = outcome == "failed" and "photogenic-train" in ref
            return subprocess.CompletedProcess(cmd, 1 if failed else 0)
        if cmd[1] == "push":
            Path(cmd[cmd.index("--digestfile") + 1]).write_text(digest)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(build.subprocess, "run", run)
    args = ["--registry", "registry.example.com/ml", "--tag", "0.2.0"] + (["--push"] if outcome == "pushed" else [])
    code = build.main(args)
    new = {n: f"registry.example.com/ml/{n}:0.2.0" for n in ("photogenic", "photogenic-train")}
    assert len(seen) == 2 and all(images == new for images in seen.values())
    if outcome == "failed":
        assert code == 1 and images_json.read_text() == old
        return
    recorded = json.loads(images_json.read_text())
    assert code == 0 and recorded["pull_secrets"] == json.loads(old)["pull_secrets"]
    expected = {n: f"{r}@{digest}" for n, r in new.items()} if outcome == "pushed" else new
    assert recorded["images"] == expected


def test_the_training_image_prebuilds_deepspeeds_cuda_ops_and_fails_without_them() -> None:
    """A build machine has no GPU: without DS_ACCELERATOR DeepSpeed builds CPU ops only, silently."""
    stages = _stages(ROOT / "images" / "photogenic-train" / "Dockerfile")
    (run,) = [line for line in stages[0] if line.startswith("RUN") and "deepspeed==" in line]
    install, check = run.split("&&", 1)
    assert "DS_ACCELERATOR=cuda" in install.split("pip install")[0]
    ops = [op.lower() for op in re.findall(r"DS_BUILD_(\w+)=1", install) if op != "OPS"]
    assert {"fused_adam", "cpu_adam"} <= set(ops)
    assert "installed_ops" in check and "accelerator_name" in check and "cuda" in check
    assert all(f"'{op}'" in check for op in ops), "every op asked for is checked"
    # At run time the accelerator is detected: the same image runs on CPU-only clusters (task_gpus=0).
    assert not any("DS_ACCELERATOR" in line for line in stages[-1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_volume_claim_waits_for_storage_a_cluster_may_not_have(overlay: str) -> None:
    """ReadWriteMany needs a class that provides it (EFS, Filestore, NFS...): no default class does on
    most clouds, and the claim stays Pending. Such a claim must name its class."""
    docs = kustomize(overlay)
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    claims += [t for d in docs if d["kind"] == "StatefulSet" for t in d["spec"].get("volumeClaimTemplates", [])]
    assert claims
    for claim in claims:
        if "ReadWriteMany" in claim["spec"]["accessModes"]:
            assert claim["spec"].get("storageClassName"), claim["metadata"]["name"]
    names = {c["metadata"]["name"] for c in claims}
    assert ("photogenic-cache" in names) == (overlay == "overlays/gpu")  # only where multi-node jobs share it


def test_the_multi_user_overlay_puts_the_pipelines_needs_in_the_profile_namespace() -> None:
    docs = kustomize("overlays/multi-user")
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    binding = by_kind[("RoleBinding", "photogenic-launcher")]
    profile = binding["metadata"]["namespace"]
    assert profile not in ("kubeflow", "photogenic")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "default-editor", "namespace": profile}]
    for key in (
        ("Role", "photogenic-launcher"),
        ("ConfigMap", "photogenic-config"),
        ("ServiceAccount", "photogenic-pipeline"),
    ):
        assert by_kind[key]["metadata"]["namespace"] == profile, key
    assert by_kind[("Deployment", "mlflow")]["metadata"]["namespace"] == "photogenic"


def _cluster_walkthrough() -> str:
    text = (ROOT / "docs" / "kubeflow.md").read_text()
    start = text.index("## Run on Kubeflow")
    end = text.find("\n## ", start + 5)
    return text[start:] if end < 0 else text[start:end]


def test_the_readme_walkthrough_names_minimum_versions_the_bucket_step_and_the_overlays() -> None:
    section = _cluster_walkthrough()
    for needed in ("Kubeflow Pipelines 2.5", "Kubeflow Trainer 2.2", "training operator 1.7", "KFP 2.14"):
        assert needed in section, needed
    assert "photogenic store mb s3://photogenic" in section
    for overlay in ("overlays/local", "overlays/gpu", "overlays/multi-user"):
        assert overlay in section
    assert "torch-distributed" in section  # the runtime a TrainJob expects
    for param in ("task_gpus", "train_cpu", "train_memory", "data_cpu", "data_memory", "job_cache_pvc"):
        assert param in section, param


def test_the_readme_bucket_step_creates_the_bucket_and_is_safe_to_repeat(s3_env: Any) -> None:
    from photogenic.cli import main

    (command,) = re.findall(r"photogenic (store mb s3://[\w.-]+)", _cluster_walkthrough())
    args = shlex.split(command)
    first = CliRunner().invoke(main, args, catch_exceptions=False)
    assert first.exit_code == 0 and "created" in first.output, first.output
    again = CliRunner().invoke(main, args, catch_exceptions=False)
    assert again.exit_code == 0 and "exists already" in again.output, again.output
    local = CliRunner().invoke(main, ["store", "mb", "/tmp/not-a-bucket"])
    assert local.exit_code != 0 and "not an s3:// URI" in local.output
