"""The registered model as MLflow users take it: `mlflow.pyfunc.load_model("models:/NAME@champion")` and
`mlflow models serve`, on a tiny trained model and a real SQLite tracking store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from photogenic.manifest import read_manifest
from photogenic.storage import join_uri
from tests.helpers import tiny_config

_PASSING = {
    "metrics": {"appeal_win_lo": 0.7, "faithfulness_net_lo": 0.02, "faithfulness_net_hi": 0.18},
    "trustworthy": True,
    "report_uri": "",
}


def _registered(tmp_path: Path, model_uri: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`model_uri` registered as `m@champion` in a fresh store; MLflow's global URI pointed at it."""
    from photogenic.registry import register_model
    from photogenic.tracking import open_pipeline_run, tracking_uri

    config = tiny_config(tmp_path)
    parent = open_pipeline_run(config, "kfp-run-1", "0.1.0")
    version = read_manifest(join_uri(model_uri, "manifest.json")).fingerprint
    reg = register_model(config, {"model_uri": model_uri, "fingerprint": version}, _PASSING, "m", parent)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri(config))
    return {**reg, "tracking_uri": tracking_uri(config), "parent": parent}


def test_the_champion_loads_with_pyfunc_and_draws_images(
    tmp_path: Path, tiny_pretrained: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import pandas as pd

    from photogenic.serving import decode_image

    reg = _registered(tmp_path, tiny_pretrained, monkeypatch)
    assert reg["alias"] == "champion" and reg["source"].startswith("models:/m-")
    model = mlflow.pyfunc.load_model("models:/m@champion")
    # The signature a client reads before calling: prompts and optional seeds in, PNGs out.
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["prompt", "seed"] and sig.outputs.input_names() == ["image", "seed"]
    assert {p.name for p in sig.params.params} == {"steps", "guidance"}

    prompts = pd.DataFrame({"prompt": ["a red circle", "a red circle", "a blue square"], "seed": [3, 3, 4]})
    out = model.predict(prompts, params={"steps": 2})
    assert list(out.columns) == ["image", "seed"] and out["seed"].tolist() == [3, 3, 4]
    images = [decode_image(s) for s in out["image"]]
    assert all(i.format == "PNG" and i.size == (32, 32) for i in images)
    assert images[0].tobytes() == images[1].tobytes()  # same prompt and seed: same image
    assert images[0].tobytes() != images[2].tobytes()
    # A row without a seed takes its position; the same request draws the same images.
    again = model.predict(pd.DataFrame({"prompt": ["a red circle"]}), params={"steps": 2})
    assert again["seed"].tolist() == [0]

    # The registered version names the model's content and the MLflow model holds no copy of the weights.
    client = mlflow.MlflowClient()
    version = client.get_model_version("m", reg["version"])
    assert version.tags["photogenic.model_uri"] == tiny_pretrained
    local = Path(mlflow.artifacts.download_artifacts(reg["source"]))
    assert not list(local.rglob("*.safetensors")), "the MLflow model must reference the store, not copy it"


def test_bad_requests_name_what_is_wrong(tmp_path: Path, tiny_pretrained: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import pandas as pd
    from mlflow.exceptions import MlflowException

    _registered(tmp_path, tiny_pretrained, monkeypatch)
    model = mlflow.pyfunc.load_model("models:/m@champion")
    prompts = pd.DataFrame({"prompt": ["a red circle"]})
    for params, message in (
        ({"steps": 0}, "param 'steps' must be between 1 and 1000"),
        ({"steps": 5000}, "param 'steps' must be between 1 and 1000"),
        ({"guidance": -1.0}, "param 'guidance' must be a number from 0 to 50"),
    ):
        with pytest.raises(MlflowException, match=message):
            model.predict(prompts, params=params)
    with pytest.raises(MlflowException, match="seed outside"):
        model.predict(pd.DataFrame({"prompt": ["a red circle"], "seed": [-1]}), params={"steps": 1})
    with pytest.raises(MlflowException, match="prompt"):
        model.predict(pd.DataFrame({"text": ["a red circle"]}))


def test_a_replaced_model_folder_is_refused(
    tmp_path: Path, tiny_pretrained: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MLflow model names one version of the store's folder: other content at the same URI is not it."""
    import shutil

    import mlflow
    from mlflow.exceptions import MlflowException

    from photogenic.models.io import publish_model_dir

    config = tiny_config(tmp_path)
    local, uri = tmp_path / "export", str(tmp_path / "store" / "model")
    shutil.copytree(tiny_pretrained, local, ignore=shutil.ignore_patterns("manifest.json", ".*"))
    publish_model_dir(local, uri, {"recipe": "pretrain"}, config)
    _registered(tmp_path, uri, monkeypatch)
    assert mlflow.pyfunc.load_model("models:/m@champion") is not None
    scheduler = local / "scheduler" / "scheduler_config.json"
    scheduler.write_text(scheduler.read_text().replace('"steps_offset": 0', '"steps_offset": 1'))
    publish_model_dir(local, uri, {"recipe": "pretrain"}, config)  # new weights published at the same URI
    with pytest.raises(MlflowException, match="the folder was replaced; log the model again"):
        mlflow.pyfunc.load_model("models:/m@champion")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(
    tmp_path: Path, tiny_pretrained: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photogenic.serving import decode_image

    reg = _registered(tmp_path, tiny_pretrained, monkeypatch)
    port = _free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow_cli), "models", "serve", "-m", "models:/m@champion", "--env-manager", "local"]
    command += ["-h", "127.0.0.1", "-p", str(port)]
    # As in an activated virtual environment: MLflow starts `uvicorn` by name.
    env = {**os.environ, "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not answer /ping in 120 s"
            time.sleep(1)
        body = {"dataframe_records": [{"prompt": "a red circle", "seed": 7}], "params": {"steps": 2}}
        status, answer = _post(f"{base}/invocations", body)
        assert status == 200, answer
        (row,) = answer["predictions"]
        assert row["seed"] == 7 and decode_image(row["image"]).size == (32, 32)
        status, answer = _post(f"{base}/invocations", {**body, "params": {"steps": 0}})
        assert status == 400 and "param 'steps' must be between 1 and 1000" in answer["message"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
    assert reg["version"] == "1"
