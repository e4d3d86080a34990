"""Trained text-to-image models as MLflow models: a pyfunc that an MLflow user loads, serves and registers.

The diffusers folder in the store stays the model of record. The MLflow model holds no copy of it: its
`model_config` names the folder's URI and content version, and loading it fetches the folder into a
local cache, verified file by file against the manifest (`photogenic.models.io.load_model_dir`).
A folder whose content no longer matches the version the MLflow model was logged with is refused.

Input: a table of prompts (`prompt`, and optionally `seed`, one per row); params `steps` and `guidance`.
Output: one PNG per row, base64-encoded (`image`), with the seed it was drawn from (`seed`). Through
`mlflow models serve`:

    curl -s localhost:5000/invocations -H 'Content-Type: application/json' \\
      -d '{"dataframe_records": [{"prompt": "a red circle", "seed": 7}], "params": {"steps": 25}}'
"""

from __future__ import annotations

import base64
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from photogenic.tracking import using_tracking_uri

__all__ = [
    "PhotogenicModel",
    "signature",
    "input_example",
    "log_pyfunc",
    "find_logged_model",
    "decode_image",
    "MODEL_TAG",
    "CACHE_ENV",
]

log = logging.getLogger(__name__)

MODEL_TAG = "photogenic.model"  # the content version (manifest fingerprint) of the diffusers folder
CACHE_ENV = "PHOTOGENIC_MODEL_CACHE"
MAX_STEPS = 1000  # DDIM over a 1000-step schedule: more steps than timesteps is an error, not a request


def _cache() -> Path:
    """Where loaded models' folders are copied: $PHOTOGENIC_MODEL_CACHE, else the workspace's model cache
    ($PHOTOGENIC_WORKSPACE, set in our images and pods), else ~/.cache/photogenic/models."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    if os.environ.get("PHOTOGENIC_WORKSPACE"):
        return Path(os.environ["PHOTOGENIC_WORKSPACE"], "cache", "models")
    return Path.home() / ".cache" / "photogenic" / "models"


class PhotogenicModel(mlflow.pyfunc.PythonModel):
    """Our diffusers pipeline behind MLflow's pyfunc interface (see the module's docstring)."""

    def load_context(self, context: Any) -> None:
        from photogenic.manifest import read_manifest
        from photogenic.models.io import load_model_dir
        from photogenic.models.pipeline import load_pipeline
        from photogenic.storage import join_uri

        conf = context.model_config
        uri, version = conf["model_uri"], conf["version"]
        found = read_manifest(join_uri(uri, "manifest.json")).fingerprint
        if found != version:
            raise mlflow.exceptions.MlflowException(
                f"the model at {uri} is version {found[:12]}, not {version[:12]}, the version this MLflow model "
                "was logged with: the folder was replaced; log the model again"
            )
        self.pipe = load_pipeline(load_model_dir(uri, _cache()))
        self.defaults = {"steps": int(conf["steps"]), "guidance": float(conf["guidance"])}
        self.batch = int(conf.get("batch", 16))

    # No type hint on `model_input`: MLflow reads one as the input's schema (ours is the signature's).
    def predict(self, context, model_input, params: Mapping[str, Any] | None = None):  # type: ignore[no-untyped-def]
        import pandas as pd

        from photogenic.models.pipeline import draw
        from photogenic.report import png_base64

        steps, guidance = _sampling(self.defaults, params)
        prompts, seeds = _rows(model_input)
        images = draw(self.pipe, list(zip(prompts, seeds, strict=True)), steps, guidance, batch=self.batch)
        return pd.DataFrame({"image": [png_base64(i) for i in images], "seed": seeds})


def _sampling(defaults: Mapping[str, Any], params: Mapping[str, Any] | None) -> tuple[int, float]:
    merged = {**defaults, **{k: v for k, v in (params or {}).items() if v is not None}}
    steps, guidance = merged["steps"], merged["guidance"]
    if isinstance(steps, bool) or not isinstance(steps, (int, float)) or int(steps) != steps:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"param 'steps' must be an integer, not {steps!r}"
        )
    if not 1 <= int(steps) <= MAX_STEPS:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"param 'steps' must be between 1 and {MAX_STEPS}, not {steps}"
        )
    if not isinstance(guidance, (int, float)) or not 0.0 <= float(guidance) <= 50.0:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"param 'guidance' must be a number from 0 to 50 (1: no guidance), not {guidance!r}"
        )
    return int(steps), float(guidance)


def _rows(model_input: Any) -> tuple[list[str], list[int]]:
    """Prompts and seeds from the input table; a row without a seed gets its position as seed."""
    import pandas as pd

    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    if "prompt" not in frame.columns:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"the input needs a 'prompt' column; it has {list(frame.columns)}"
        )
    prompts = list(frame["prompt"])
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(f"rows {bad[:10]} have no prompt string")
    column = frame["seed"] if "seed" in frame.columns else [None] * len(frame)
    seeds = [i if s is None or pd.isna(s) else int(s) for i, s in enumerate(column)]
    negative = [i for i, s in enumerate(seeds) if not 0 <= s < 2**63]
    if negative:
        raise mlflow.exceptions.MlflowException.invalid_parameter_value(
            f"rows {negative[:10]} have a seed outside [0, 2**63)"
        )
    return prompts, seeds


def decode_image(data: str) -> Any:
    """A PIL image from one `image` value of the model's output."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data)))


def signature(steps: int, guidance: float) -> Any:
    """Prompts (and optional seeds) in, base64 PNGs out; `steps` and `guidance` as params."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string", "image"), ColSpec("long", "seed")]),
        params=ParamSchema([ParamSpec("steps", "long", steps), ParamSpec("guidance", "double", guidance)]),
    )


def input_example() -> Any:
    """Two prompts, one seeded; two sampling steps, so the check at logging time is quick."""
    import pandas as pd

    return pd.DataFrame({"prompt": ["a red circle on a white background", "a blue square"], "seed": [7, 8]}), {
        "steps": 2
    }


def _requirements() -> list[str]:
    """What the model needs besides Photogenic itself (our images and `make setup` install it)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "torch", "diffusers", "transformers", "pillow", "pandas")]


def log_pyfunc(
    tracking_uri: str,
    run_id: str,
    model_uri: str,
    version: str,
    recipe: str,
    steps: int,
    guidance: float,
) -> str:
    """Log the exported model at `model_uri` as an MLflow model of run `run_id`; returns its model id.

    The model is checked at logging time: MLflow loads it and draws the input example's images.
    """
    from mlflow import MlflowClient
    from mlflow.models import Model

    client = MlflowClient(tracking_uri)
    # Created here, in the run's experiment: left to MLflow, a model of a run that is not MLflow's active
    # run lands in the Default experiment.
    model = client.create_logged_model(
        experiment_id=client.get_run(run_id).info.experiment_id,
        name=recipe.replace("_", "-"),
        source_run_id=run_id,
        tags={MODEL_TAG: version, "photogenic.recipe": recipe, "photogenic.model_uri": model_uri},
        params={"recipe": recipe, "steps": str(steps), "guidance": str(guidance)},
        model_type="text-to-image",
    )
    with using_tracking_uri(tracking_uri):
        # `Model.log` is what `mlflow.pyfunc.log_model` calls; unlike it, it takes the run explicitly (ours
        # is not MLflow's active run: stages talk to the store through a client).
        info = Model.log(
            artifact_path=None,
            name=model.name,
            flavor=mlflow.pyfunc,
            python_model=PhotogenicModel(),
            model_config={"model_uri": model_uri, "version": version, "steps": steps, "guidance": guidance},
            signature=signature(steps, guidance),
            input_example=input_example(),
            pip_requirements=_requirements(),
            run_id=run_id,
            model_id=model.model_id,
        )
    log.info("%s: logged MLflow model %s (models:/%s) for %s", recipe, info.model_id, info.model_id, model_uri)
    return str(info.model_id)


def find_logged_model(client: Any, experiment_id: str, version: str) -> Any:
    """The newest MLflow model logged for the model folder of content `version`, or None."""
    found = client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{MODEL_TAG}` = '{version}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        max_results=1,
    )
    return found[0] if found else None
