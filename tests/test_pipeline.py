"""The KFP pipeline: the local run through kfp.local (as `photogenic run`), the compiled YAML, the layout."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from photogenic.cli import main
from photogenic.pipelines.compiler import COMPILED, compile_pipeline, read_version

ROOT = Path(__file__).resolve().parents[1]


def _children(summary: dict) -> tuple:
    from mlflow import MlflowClient

    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name("photogenic-quality-tuning").experiment_id
    parent_id = summary["mlflow"]["parent_run_id"]
    return client, client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.mark.slow
def test_photogenic_run_is_the_pipeline_through_kfp_local(tmp_path: Path) -> None:
    # 300 samples: two chunks of the source, so ingestion runs as two partitions.
    # Rehearsal on (the tiny preset's recipe has it off): quality-tuning reads curation's rehearsal set.
    args = [
        "run",
        "--preset",
        "tiny",
        "-w",
        str(tmp_path),
        "world.num_samples=300",
        "train.quality_tune.rehearsal_fraction=0.25",
        # A colour held out: the tiny judges read most shapes as one, and rehearsal leaves out what they see of
        # a held-out concept (colours they read well).
        "curate.holdout_concepts=[purple]",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # One progress line per task, the exit handler last.
    for task in ("open-run", "ingest-partition", "merge-ingest", "validate", "pretrain", "quality-tune", "register"):
        assert f"] {task} " in result.stderr
    last = result.stderr.rstrip().splitlines()[-1]
    assert "] close-run " in last and " ok " in last
    # Long tasks' progress lines reach the console (each loop's final line at least).
    for line in (
        "ingest partition 1/2: image",
        "judges (curation): rendering: image 384/384 (100%)",
        "judges (evaluation): training: batch",
        "pretrain: step 2/2 (100%), loss",
        "evaluate: drawing model A: image",
    ):
        assert line in result.stderr, line
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    assert "then open http://127.0.0.1:5000/#/experiments/" in result.stdout
    assert "  load the model:    MLFLOW_TRACKING_URI=" in result.stdout and "  serve it:          " in result.stdout
    assert "visual appeal" in result.stdout and "NOT TRUSTWORTHY" in result.stdout  # tiny judges are below the bar

    summary = json.loads((tmp_path / "summary.json").read_text())
    st = summary["stages"]
    # The summary says where the time went: every task's seconds, the two ingest partitions summed.
    assert {"pretrain", "quality-tune", "ingest-partition", "evaluate"} <= set(summary["task_seconds"])
    assert 0 < sum(summary["task_seconds"].values()) <= summary["wall_seconds"] * 2  # partitions may overlap
    assert "  time: " in result.stdout and " in all; " in result.stdout
    assert st["validate"]["counts"]["input"] == st["ingest"]["counts"]["samples"]
    assert st["ingest"]["counts"]["input"] == 300
    assert st["curate"]["funnel"][0][1] == st["validate"]["counts"]["clean"]
    assert st["pretrain"]["steps"] == 2 and Path(st["quality_tune"]["model_uri"], "manifest.json").exists()
    qt_meta = json.loads(Path(st["quality_tune"]["model_uri"], "manifest.json").read_text())["meta"]
    assert qt_meta["rehearsal_uri"] == st["curate"]["rehearsal_uri"] != ""
    assert Path(st["evaluate"]["report_uri"]).exists() and Path(summary["log_path"]).exists()

    client, children = _children(summary)
    assert sorted(r.info.run_name for r in children) == [
        "curate",
        "evaluate",
        "ingest",
        "ingest-0-of-2",
        "ingest-1-of-2",
        "judges-curation",
        "judges-evaluation",
        "register",
        "train-autoencoder",
        "train-pretrain",
        "train-quality-tune",
        "validate",
    ]
    assert all(r.info.status == "FINISHED" for r in children)
    parent = client.get_run(summary["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"  # closed by the exit handler
    from photogenic import __version__

    assert parent.data.tags["photogenic.pipeline_version"].startswith(__version__)
    assert parent.data.metrics["eval/appeal_win"] == st["evaluate"]["metrics"]["appeal_win"]
    assert parent.data.tags["photogenic.model.quality_tune"] == st["quality_tune"]["fingerprint"]

    # Registered, but not champion: the gate needs a winning, trustworthy evaluation.
    reg = st["register"]
    version = client.get_model_version(reg["name"], reg["version"])
    assert reg["alias"] == "" and "not above 0.5" in version.tags["photogenic.gate"]
    assert not client.get_registered_model(reg["name"]).aliases
    # The version is the MLflow model that the quality-tuning run logged, for the weights it exported.
    runs = {r.info.run_name: r.info.run_id for r in children}
    assert version.run_id == runs["train-quality-tune"] and version.source == reg["source"]
    logged = client.get_logged_model(reg["source"].removeprefix("models:/"))
    assert logged.tags["photogenic.model"] == st["quality_tune"]["fingerprint"]
    assert logged.tags["photogenic.model_uri"] == st["quality_tune"]["model_uri"]
    # The parent run carries the verdict; the experiment opens in the UI's model-training view.
    assert parent.data.tags["photogenic.registered"] == f"{reg['name']}/{reg['version']}"
    assert "registration gate failed" in parent.data.tags["mlflow.note.content"]
    experiment = client.get_experiment_by_name("photogenic-quality-tuning")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    _assert_lineage(client, runs, st)
    _assert_comparable(client, runs)


def _inputs(client, run_id: str) -> dict[str, tuple[str, str]]:  # noqa: ANN001
    """A run's datasets: {name@context: (digest, source)}, and its model inputs and outputs by id."""
    run = client.get_run(run_id)
    out = {}
    for d in run.inputs.dataset_inputs:
        context = next(t.value for t in d.tags if t.key == "mlflow.data.context")
        out[f"{d.dataset.name}@{context}"] = (d.dataset.digest, json.loads(d.dataset.source).get("uri", ""))
    out["models in"] = tuple(sorted(m.model_id for m in run.inputs.model_inputs))
    out["models out"] = tuple(sorted(m.model_id for m in run.outputs.model_outputs))
    return out


def _assert_lineage(client, runs: dict[str, str], st: dict) -> None:  # noqa: ANN001
    """raw -> ingested -> validated -> qt, rehearsal -> pretrained -> quality-tuned, by content digest."""
    ingest, validate, curate = (_inputs(client, runs[n]) for n in ("ingest", "validate", "curate"))
    pretrain, qt, evaluate = (_inputs(client, runs[n]) for n in ("train-pretrain", "train-quality-tune", "evaluate"))
    assert "raw@ingestion" in ingest
    assert ingest["ingested@output"][0] == validate["ingested@validation"][0] == st["ingest"]["fingerprint"][:16]
    assert ingest["ingested@output"][1].endswith(st["ingest"]["manifest_uri"])
    clean = st["validate"]["fingerprint"][:16]
    assert (
        validate["validated@output"][0] == curate["validated@curation"][0] == pretrain["validated@training"][0] == clean
    )
    assert curate["qt@output"][0] == qt["qt@training"][0] == st["curate"]["fingerprint"][:16]
    assert curate["rehearsal@output"] == qt["rehearsal@rehearsal"]
    (pretrained,) = pretrain["models out"]
    (quality_tuned,) = qt["models out"]
    assert qt["models in"] == (pretrained,)
    assert set(evaluate["models in"]) == {pretrained, quality_tuned}


def _assert_comparable(client, runs: dict[str, str]) -> None:  # noqa: ANN001
    """Two stages' runs compare in the UI: each logs the settings it reads, under one metric naming scheme."""
    params = {name: client.get_run(run_id).data.params for name, run_id in runs.items()}
    assert (
        "train.pretrain.steps" in params["train-pretrain"]
        and "train.quality_tune.steps" not in params["train-pretrain"]
    )
    assert "curate.min_aesthetic" not in params["train-pretrain"] and "data.min_image_side" in params["validate"]
    assert not params["register"]
    for name in ("train-autoencoder", "train-pretrain", "train-quality-tune"):
        metrics = client.get_run(runs[name]).data.metrics
        assert {"train/loss", "train/lr", "train/samples_per_s"} <= set(metrics), name
    for run_id in runs.values():
        assert all("/" in key for key in client.get_run(run_id).data.metrics), "metrics are named stage/metric"
    evaluate = client.get_run(runs["evaluate"])
    artifacts = {a.path for a in client.list_artifacts(runs["evaluate"], "evaluation")}
    assert {"evaluation/report.html", "evaluation/comparisons.json"} <= artifacts
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(
            Path(client.download_artifacts(runs["evaluate"], "evaluation/comparisons.json", tmp)).read_text()
        )
    rows = {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}
    assert {"appeal", "faithfulness", "appeal/seen"} <= set(rows) and 0 <= rows["appeal"]["win"] <= 1
    assert evaluate.data.tags["photogenic.eval.trustworthy"] == "false"
    # A run killed between stages and run again reuses them: test_reliability_pipeline.py.


def test_a_failing_stage_stops_the_run_with_its_own_error_and_fails_the_parent_run(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "captions.jsonl"
    result = CliRunner().invoke(main, ["run", "--preset", "tiny", "-w", str(tmp_path), "--source", str(missing)])
    assert result.exit_code == 1
    assert "stage 'plan-ingest' failed:" in result.output and str(missing) in result.output
    assert "full log:" in result.output
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("photogenic-quality-tuning").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert parents[0].data.tags["photogenic.kfp_state"] == "FAILED" and parents[0].data.tags["photogenic.error"]
    assert not (tmp_path / "summary.json").exists()


def test_sigterm_to_a_local_run_stops_its_task_processes(tmp_path: Path) -> None:
    """`kill <pid>` of `photogenic run` (or a closed terminal: SIGHUP) ends the tasks it started, as Ctrl-C
    does; without that a training task goes on using the CPUs after its run is gone."""
    import signal
    import time

    import psutil

    photogenic = str(Path(sys.executable).with_name("photogenic"))
    run = subprocess.Popen(
        [photogenic, "run", "--preset", "tiny", "-w", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        parent, tasks, deadline = psutil.Process(run.pid), [], time.monotonic() + 120
        while not tasks and run.poll() is None and time.monotonic() < deadline:
            tasks = [c for c in parent.children(recursive=True) if "executor_main" in " ".join(_cmdline(c))]
            time.sleep(0.1)
        assert tasks, "no task process appeared"
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGTERM, output[-2000:]
    assert "SIGTERM received: stopped the run" in output
    _, alive = psutil.wait_procs(tasks, timeout=30)
    assert not alive, [_cmdline(p)[:3] for p in alive]


def _cmdline(process: Any) -> list[str]:
    import psutil

    try:
        return process.cmdline()
    except psutil.Error:  # it ended (or became a zombie) while we looked
        return []


# --------------------------------------------------------------------------------------------- compiled


def test_the_checked_in_pipeline_is_what_the_code_compiles(tmp_path: Path) -> None:
    """Golden file: recompiling with the recorded version gives the same bytes (run `photogenic pipeline
    compile` after changing a component or the pipeline). KFP's comment block lists dict defaults in its
    protobuf map's order; the compiler sorts them, so two compiles agree byte for byte."""
    version = read_version(COMPILED)
    from photogenic import __version__

    assert version.split("+")[0] == __version__
    fresh = [compile_pipeline(tmp_path / f"p{i}.yaml", version=version).read_text() for i in range(2)]
    assert fresh[0] == fresh[1], "two compiles of the same pipeline differ"
    assert fresh[0] == COMPILED.read_text(), "pipelines/compiled is stale: run `photogenic pipeline compile`"


def test_no_credential_value_reaches_the_compiled_pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEY123456")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-example-secret-value")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-example")
    for kubernetes_manifest in (False, True):
        text = compile_pipeline(
            tmp_path / "p.yaml", version="0.0.0", kubernetes_manifest=kubernetes_manifest
        ).read_text()
        for secret in ("AKIAEXAMPLEKEY123456", "wJalrXUtnFEMI-example-secret-value", "hunter2-example"):
            assert secret not in text
    docs = list(yaml.safe_load_all(COMPILED.read_text()))
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    # Credentials are referenced by Secret name and key only, on every task.
    for name, spec in platform.items():
        keys = {e["secretKey"] for s in spec["secretAsEnv"] for e in s["keyToEnv"]}
        assert keys == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, name


def test_pipeline_structure_retries_caching_gpus_and_the_exit_handler() -> None:
    spec, platform = list(yaml.safe_load_all(COMPILED.read_text()))
    root = spec["root"]["dag"]["tasks"]
    assert root["close-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # the exit handler
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]
    assert "for-loop-2" in inner and inner["for-loop-2"]["parameterIterator"]  # ingestion fans out
    assert inner["merge-ingest"]["cachingOptions"] == {}  # caching off: the source may change
    assert inner["validate"]["cachingOptions"] == {"enableCache": True}
    assert inner["validate"]["retryPolicy"]["maxRetryCount"] == 3
    executors = spec["deploymentSpec"]["executors"]
    train = executors["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert "install" not in " ".join(train["command"])  # nothing pip-installs at run time
    gpu = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert gpu["emptyDirMounts"][0]["mountPath"] == "/cache" and "nodeSelector" in gpu and "tolerations" in gpu
    from photogenic.components.images import IMAGES

    images = {e["container"]["image"] for e in executors.values()}
    assert images == set(IMAGES.values())
    # quality-tuning gets curation's rehearsal set to rehearse; no other training task rehearses anything
    given = {
        name: task["inputs"]["parameters"]["rehearsal"] for name, task in inner.items() if name.startswith("train")
    }
    curated = {"taskOutputParameter": {"outputParameterKey": "rehearsal", "producerTask": "curate"}}
    assert given.pop("train-3") == curated
    assert inner["train-3"]["taskInfo"]["name"] == "quality-tune"
    assert given and all(v == {"runtimeValue": {"constant": ""}} for v in given.values())


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task of the compiled pipeline, in every sub-DAG (exit handler, loops, branches)."""
    found = {}
    for component in [spec["root"], *spec["components"].values()]:
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


def test_a_resubmitted_run_can_reuse_every_cached_task() -> None:
    """KFP reuses a cached task when its inputs are the same: no cached task may take a value that changes
    every run (the run's id, or the MLflow parent run the uncached open-run task makes). Tasks find the
    parent run by the run id from their pod's `pipeline/runid` label instead. The one output of open-run
    they take is the config's URI, which is named by the config's bytes: the same in every run of it."""
    spec, platform = list(yaml.safe_load_all(COMPILED.read_text()))
    cached = {name: task for name, task in _tasks(spec).items() if task.get("cachingOptions", {}).get("enableCache")}
    assert {"validate", "train", "train-2", "judges", "judges-2", "curate", "train-3", "evaluate"} <= set(cached)
    assert "launch-training" in cached
    config_uri = (  # open-run's output, in the exit handler's DAG and in a branch's
        {"taskOutputParameter": {"outputParameterKey": "config_uri", "producerTask": "open-run"}},
        {"componentInputParameter": "pipelinechannel--open-run-config_uri"},
    )
    for name, task in cached.items():
        parameters = task.get("inputs", {}).get("parameters", {})
        assert parameters.get("config_uri") in config_uri, name
        for key, value in parameters.items():
            text = json.dumps(value)
            per_run = "{{$.pipeline_job_" in text or ("open-run" in text and key != "config_uri")
            assert not per_run, f"{name}.{key} changes every run: {text}"
    # ... and the parent run exists before any of them looks it up: every task runs after open-run.
    inner = spec["components"]["comp-exit-handler-1"]["dag"]["tasks"]

    def upstream(name: str) -> set[str]:
        deps = set(inner[name].get("dependentTasks", []))
        return deps.union(*(upstream(d) for d in deps)) if deps else deps

    for name in inner:
        assert name == "open-run" or "open-run" in upstream(name), f"{name} may run before the parent run exists"
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        assert executor["fieldPathAsEnv"] == [
            {"fieldPath": "metadata.labels['pipeline/runid']", "name": "PHOTOGENIC_KFP_RUN_ID"}
        ], name


def test_the_cluster_settings_every_task_gets_pull_secrets_a_required_config_map_and_sizes_from_parameters() -> None:
    from photogenic.components.images import PULL_SECRETS, TRAIN_IMAGE

    spec, platform = list(yaml.safe_load_all(COMPILED.read_text()))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        # Without the ConfigMap a task would silently write to pod-local paths: the pod must not start.
        assert [c["optional"] for c in executor["configMapAsEnv"]] == [False], name
        assert [s["secretName"] for s in executor["imagePullSecret"]] == PULL_SECRETS, name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"task_gpus", "train_cpu", "train_memory", "data_cpu", "data_memory", "job_cache_pvc"} <= set(params)

    def param(p: str) -> str:
        return f"{{{{$.inputs.parameters['pipelinechannel--{p}']}}}}"

    containers = {name: e["container"] for name, e in spec["deploymentSpec"]["executors"].items()}
    for name in ("exec-train", "exec-train-2", "exec-train-3"):
        resources = containers[name]["resources"]
        # One process on one device in the task's own pod: sized by task_gpus, never by gpus_per_node.
        assert resources["accelerator"]["resourceCount"] == param("task_gpus"), name
        assert resources["resourceCpuLimit"] == resources["resourceCpuRequest"] == param("train_cpu"), name
        assert resources["resourceMemoryLimit"] == param("train_memory"), name
        assert "pvcMount" not in executors[name] and executors[name]["emptyDirMounts"][0]["mountPath"] == "/cache"
    for name in ("exec-validate", "exec-curate", "exec-evaluate", "exec-judges", "exec-merge-ingest"):
        assert containers[name]["resources"]["resourceCpuLimit"] == param("data_cpu"), name
        assert containers[name]["resources"]["resourceMemoryLimit"] == param("data_memory"), name
    for name, container in containers.items():  # the rest is small enough for any node
        limit = container.get("resources", {}).get("resourceCpuLimit", "")
        assert limit.startswith("{{") or float(limit) <= 1, name
    # The launcher is told its training image by the pipeline, not by the images.json baked into it.
    (launch,) = [t for t in _tasks(spec).values() if t["taskInfo"]["name"] == "pretrain-job"]
    inputs = launch["inputs"]["parameters"]
    assert inputs["image"] == {"runtimeValue": {"constant": TRAIN_IMAGE}}
    assert inputs["image_pull_secrets"] == {"runtimeValue": {"constant": PULL_SECRETS}}
    assert inputs["cache_pvc"] == {"componentInputParameter": "pipelinechannel--job_cache_pvc"}


def test_parent_run_is_found_by_the_run_id_in_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from photogenic import tasks
    from tests.helpers import tiny_config

    config = tiny_config(tmp_path)
    assert tasks.parent_run_id(config) == ""  # outside a pipeline run
    monkeypatch.setenv(tasks.RUN_ID_ENV, "4f1c-run")
    opened = tasks.open_pipeline_run(config, "{{placeholder ignored: the pod's label wins}}", "0.1.0")
    assert opened and tasks.parent_run_id(config) == opened
    assert tasks.open_pipeline_run(config, "", "0.1.0") == opened  # a retried open-run finds it
    monkeypatch.setenv(tasks.RUN_ID_ENV, "another-run")
    assert tasks.parent_run_id(config) == ""


# --------------------------------------------------------------------------------------------- layout


@pytest.mark.slow
def test_the_wheel_installs_components_and_pipelines_inside_the_package(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("photogenic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "photogenic/components/images.json" in names and "photogenic/components/training.py" in names
    assert "photogenic/pipelines/compiled/quality_tuning.yaml" in names
    assert {"photogenic/config/loading.py", "photogenic/cli/base.py", "photogenic/data/merge.py"} <= set(names)
    assert not [n for n in names if n.startswith(("components/", "pipelines/"))]


# --------------------------------------------------------------------------------------------- cluster client


class FakeKfpClient:
    """The part of `kfp.Client` the upload and run commands use, recording the calls (no KFP server here).
    Versions are kept as the server keeps them: the first named after the pipeline, a duplicate name
    refused, listed in pages."""

    def __init__(self, existing: str | None = None):
        self.pipelines = {"photogenic-quality-tuning": existing} if existing else {}
        self.versions: list = []
        self.calls: list[tuple] = []
        self._existing_config = type("C", (), {"host": "http://kfp.example"})()

    def _version(self, name: str, path: str) -> object:
        spec = list(yaml.safe_load_all(Path(path).read_text()))[0]
        v = type("V", (), {"pipeline_version_id": f"v-{len(self.versions) + 1}", "display_name": name})()
        v.pipeline_spec = {"pipeline_spec": spec, "platform_spec": {}}
        self.versions.append(v)
        return v

    def get_pipeline_id(self, name):
        return self.pipelines.get(name)

    def upload_pipeline(self, path, pipeline_name=None, description=None):
        self.calls.append(("upload_pipeline", path, pipeline_name))
        self.pipelines[pipeline_name] = "p-1"
        self._version(pipeline_name, path)
        return type("P", (), {"pipeline_id": "p-1"})()

    def list_pipeline_versions(self, pipeline_id, page_token="", page_size=10):
        start = int(page_token or 0)
        page = self.versions[start : start + page_size]
        more = str(start + page_size) if start + page_size < len(self.versions) else ""
        return type("L", (), {"pipeline_versions": page or None, "next_page_token": more})()

    def upload_pipeline_version(self, path, pipeline_version_name, pipeline_id=None):
        if any(v.display_name == pipeline_version_name for v in self.versions):
            raise RuntimeError(f"(409) Conflict: version {pipeline_version_name} already exists")
        self.calls.append(("upload_pipeline_version", path, pipeline_version_name, pipeline_id))
        return self._version(pipeline_version_name, path)

    def get_experiment(self, experiment_name=None):
        raise RuntimeError("not found")

    def create_experiment(self, name):
        self.calls.append(("create_experiment", name))
        return type("E", (), {"experiment_id": "e-1"})()

    def run_pipeline(
        self, experiment_id, job_name, params=None, pipeline_id=None, version_id=None, service_account=None
    ):
        self.calls.append(("run_pipeline", experiment_id, job_name, params, pipeline_id, version_id))
        return type("R", (), {"run_id": "r-1"})()

    def wait_for_run_completion(self, run_id, timeout):
        return type("R", (), {"state": "FAILED", "error": type("E", (), {"message": "task pretrain failed"})()})()


def test_upload_creates_a_pipeline_then_adds_versions_named_after_the_compiled_version_once() -> None:
    from photogenic.pipelines.client import submit, upload

    fresh = FakeKfpClient()
    first = upload(fresh)
    assert first.created_pipeline and fresh.calls[0][0] == "upload_pipeline"
    existing = FakeKfpClient(existing="p-9")
    existing.versions = [
        type("V", (), {"pipeline_version_id": f"old-{i}", "display_name": f"0.0.{i}"})() for i in range(150)
    ]
    second = upload(existing)
    expected = read_version(COMPILED).replace("+", "-")
    assert (
        existing.calls == [("upload_pipeline_version", str(COMPILED), expected, "p-9")] and not second.created_pipeline
    )
    # Repeating the upload step (the walkthrough in docs/kubeflow.md) finds the version on the second page.
    again = upload(existing)
    assert again.existed and again.version_id == second.version_id and len(existing.calls) == 1
    # The first version of a new pipeline carries the pipeline's name: found by the version its spec records.
    assert upload(fresh).existed and fresh.calls == [("upload_pipeline", str(COMPILED), "photogenic-quality-tuning")]
    out = submit(existing, "photogenic", {"preset": "demo", "overrides": []}, "run-a", second, wait_s=60)
    assert out["state"] == "FAILED" and out["error"] == "task pretrain failed"
    assert out["url"] == "http://kfp.example/#/runs/details/r-1"
    run_call = ("run_pipeline", "e-1", "run-a", {"preset": "demo", "overrides": []}, "p-9", second.version_id)
    assert run_call in existing.calls


def test_pipeline_run_rejects_a_bad_override_before_contacting_any_server() -> None:
    result = CliRunner().invoke(main, ["pipeline", "run", "--host", "http://127.0.0.1:9", "--set", "train.nope=1"])
    assert result.exit_code != 0 and "unknown config key 'train.nope'" in str(result.exception or result.output)


def test_pipeline_arguments_are_typed_as_the_pipeline_declares_them() -> None:
    from photogenic.pipelines.client import parse_arguments

    # The sizes docs/kubeflow.md gives for overlays/local: CPU counts stay strings, GPU counts are integers.
    local = ["task_gpus=0", "train_cpu=2", "train_memory=6Gi", "data_cpu=1", "data_memory=3Gi"]
    assert parse_arguments(local) == {
        "task_gpus": 0,
        "train_cpu": "2",
        "train_memory": "6Gi",
        "data_cpu": "1",
        "data_memory": "3Gi",
    }
    assert parse_arguments(['gpu_node_selector={"pool": "h100"}']) == {"gpu_node_selector": {"pool": "h100"}}
    with pytest.raises(ValueError, match="'task_gpu' is not a parameter of the pipeline"):
        parse_arguments(["task_gpu=0"])
    with pytest.raises(ValueError, match="task_gpus='one': not an integer"):
        parse_arguments(["task_gpus=one"])
    result = CliRunner().invoke(main, ["pipeline", "run", "--host", "http://127.0.0.1:9", "--param", "gpus=8"])
    assert result.exit_code != 0 and "'gpus' is not a parameter" in result.output
    # Arguments that pass reach for the server: one line naming the endpoint and the fix, no traceback.
    result = CliRunner().invoke(main, ["pipeline", "run", "--host", "http://127.0.0.1:9", "--param", "task_gpus=0"])
    assert result.exit_code == 1 and "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in result.output
    assert "KF_PIPELINES_ENDPOINT" in result.output and "Traceback" not in result.output


def test_the_registration_gate_reads_interval_bounds() -> None:
    from photogenic.registry import gate

    faith = {
        "faithfulness_win": 0.1,
        "faithfulness_loss": 0.2,
        "faithfulness_net_lo": -0.25,
        "faithfulness_net_hi": 0.05,
    }
    good = {"metrics": {"appeal_win_lo": 0.62, **faith}, "trustworthy": True}
    assert gate(good) == (True, "passed")  # more losses than wins, but the interval does not lie below zero
    held = {"faithfulness_held_out_win": 0.2, "faithfulness_held_out_net_lo": -0.1, "faithfulness_held_out_net_hi": 0.0}
    held_out = {"metrics": {**good["metrics"], **held}}
    assert gate({**good, **held_out}) == (True, "passed")
    for change, reason in [
        ({"metrics": {**good["metrics"], "appeal_win_lo": 0.5}}, "not above 0.5"),
        (
            {"metrics": {**good["metrics"], "faithfulness_net_hi": -0.01}},
            "faithfulness is worse: the 95% interval of wins minus losses, [-0.250, -0.010], lies below zero",
        ),
        ({"metrics": {"appeal_win_lo": 0.62, "faithfulness_win": 0.2, "faithfulness_loss": 0.1}}, "evaluate again"),
        ({"trustworthy": False}, "rater of record is not trustworthy"),
        (
            {"metrics": {**held_out["metrics"], "faithfulness_held_out_net_hi": -0.02}},
            "faithfulness is worse on the held-out concepts",
        ),
    ]:
        passed, why = gate({**good, **change})
        assert not passed and reason in why, why


def test_register_gives_the_champion_alias_only_to_a_passing_model(tmp_path: Path, tiny_pretrained: str) -> None:
    from mlflow import MlflowClient

    from photogenic.manifest import read_manifest
    from photogenic.registry import register_model
    from photogenic.tracking import open_pipeline_run
    from tests.helpers import tiny_config

    config = tiny_config(tmp_path)
    parent = open_pipeline_run(config, "kfp-run-1", "0.1.0")
    assert open_pipeline_run(config, "kfp-run-1", "0.1.0") == parent  # a retried task finds its run
    model = {"model_uri": tiny_pretrained, "fingerprint": read_manifest(tiny_pretrained + "/manifest.json").fingerprint}
    passing = {
        "metrics": {"appeal_win_lo": 0.7, "faithfulness_net_lo": 0.02, "faithfulness_net_hi": 0.18},
        "trustworthy": True,
    }
    failing = {**passing, "trustworthy": False}
    first = register_model(config, model, passing, "m", parent)
    second = register_model(config, model, failing, "m", parent)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert first["alias"] == "champion" and second["alias"] == ""
    assert str(client.get_model_version_by_alias("m", "champion").version) == first["version"]
    assert client.get_model_version("m", second["version"]).tags["photogenic.model"] == model["fingerprint"]
    # A model trained without tracking is logged as an MLflow model once, on the first register run.
    assert first["source"] == second["source"]


def test_progress_counts_every_task_end_printed_by_parallel_tasks(tmp_path: Path) -> None:
    """kfp.local's ParallelFor tasks print from threads at once, each line in two writes as `print` does:
    every task end still becomes one console line, and the log keeps every line intact."""
    from photogenic.pipelines.local import _Progress

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, to make a race likely
    try:
        with open(tmp_path / "run.log", "w", encoding="utf-8") as log:
            console = io.StringIO()
            progress = _Progress(log, console, {"ingest-partition": "ingest-partition"})

            def task(i: int) -> None:
                for j in range(300):
                    progress.write(f"{i}:{j} - INFO - Task 'ingest-partition' finished with status SUCCESS")
                    progress.write("\n")

            threads = [threading.Thread(target=task, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            progress.write("a last line without a newline")
            progress.drain()
    finally:
        sys.setswitchinterval(interval)
    assert progress.done == 2400
    assert console.getvalue().count("ingest-partition") == 2400
    lines = (tmp_path / "run.log").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2401 and lines[-1] == "a last line without a newline"
    assert {f"{i}:{j}" for i in range(8) for j in range(300)} == {line.split(" ")[0] for line in lines[:-1]}


def _overlapping_kfp_tasks() -> str:
    """Two kfp.local task threads in the order that loses a line: A starts, B starts, A ends, B logs its
    end. Returns what reached stdout."""
    import builtins
    import contextlib
    import logging

    from kfp.local import logging_utils

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a() -> None:
        with logging_utils.local_logger_context(), logging_utils.indented_print():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b() -> None:
        a_in.wait(5)
        with logging_utils.local_logger_context(), logging_utils.indented_print():
            b_in.set()
            a_out.wait(5)
            logging.getLogger().info("Task 'b' finished with status SUCCESS")

    out, handlers, level = io.StringIO(), logging.getLogger().handlers[:], logging.getLogger().level
    original_print = builtins.print
    with contextlib.redirect_stdout(out):
        threads = [threading.Thread(target=f) for f in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    indented = builtins.print is not original_print
    builtins.print = original_print  # what kfp.local left behind, undone for the rest of the session
    logging.getLogger().handlers[:] = handlers
    logging.getLogger().setLevel(level)
    return out.getvalue() + ("print left indented" if indented else "")


def test_parallel_kfp_tasks_keep_their_task_end_lines_and_leave_print_as_it_was() -> None:
    """kfp.local's tasks each swap the root logger's handlers and `print` in and out; in a ParallelFor
    they undo each other (reproduced here), and a run printed one ingest partition's end only. The run
    makes them share one of each."""
    from photogenic.pipelines.local import _thread_safe_kfp_logging

    lost = _overlapping_kfp_tasks()
    assert "Task 'b' finished" not in lost and lost.endswith("print left indented")  # kfp 2.17 as it is
    with _thread_safe_kfp_logging():
        kept = _overlapping_kfp_tasks()
    assert "Task 'b' finished with status SUCCESS" in kept and not kept.endswith("print left indented")


def test_a_runs_config_is_resolved_once_and_read_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """open-run publishes the resolved config; every later task reads that file, named by its bytes."""
    from photogenic import tasks
    from photogenic.config import ConfigError, load_config

    monkeypatch.delenv("PHOTOGENIC_WORKSPACE", raising=False)
    overrides = [f"workspace={tmp_path}", "world.seed=5", "train.pretrain.steps=3"]
    config = tasks.config_from("tiny", overrides)
    uri = tasks.publish_config(config, overrides)
    assert uri.startswith(str(tmp_path / "store" / "configs"))
    assert tasks.task_config(uri) == config == load_config("tiny", overrides=overrides)
    assert tasks.publish_config(tasks.config_from("tiny", overrides), overrides) == uri  # same run, same file
    assert tasks.publish_config(tasks.config_from("tiny", [*overrides, "world.seed=6"]), overrides) != uri
    # A pod's own workspace ($PHOTOGENIC_WORKSPACE, as our images set) is used unless the run named one.
    monkeypatch.setenv("PHOTOGENIC_WORKSPACE", "/cache")
    assert tasks.task_config(uri).workspace == str(tmp_path)
    unnamed = tasks.publish_config(config, ["world.seed=5"])
    assert tasks.task_config(unnamed).workspace == "/cache"
    assert tasks.task_config(unnamed).world == config.world
    # A file changed after publishing is refused, naming it (the store's checksum catches it first).
    Path(unnamed).write_text(Path(unnamed).read_text().replace("seed: 5", "seed: 9"))
    with pytest.raises(ConfigError, match=f"config {unnamed} cannot be read: checksum mismatch"):
        tasks.task_config(unnamed)
