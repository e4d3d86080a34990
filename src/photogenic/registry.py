"""The registration gate and the MLflow model registry: a candidate becomes `champion` only on intervals."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from photogenic.config import Config
from photogenic.tracking import Run, Tracker, using_tracking_uri

__all__ = ["gate", "register_model", "GATE_RULES"]

log = logging.getLogger(__name__)


GATE_RULES = (
    "appeal: the 95% lower bound of A's win rate is above 50%",
    "faithfulness is not worse: the 95% interval of A's wins minus losses does not lie below zero, over the "
    "benchmark and, when concepts were held out of the QT set, on their prompts alone",
    "the rater of record is trustworthy: the panel explained most images (world models), or the imported "
    "judges passed their validity check (real models)",
)


def gate(evaluation: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a candidate may become `champion`. It reads interval bounds, never point estimates:

    - appeal: the win rate's 95% lower bound is above 50%;
    - faithfulness is not worse: the 95% interval of wins minus losses does not lie below zero, over
      the benchmark and, when concepts were held out of the QT set, on their prompts alone (the paper's
      claim that quality-tuning generalises);
    - the rater of record is trustworthy: the panel explained most images (world models), or the
      imported judges passed their validity check (real models).
    """
    m = evaluation["metrics"]
    reasons = []
    if not m.get("appeal_win_lo", 0.0) > 0.5:
        reasons.append(f"appeal win rate lower bound {m.get('appeal_win_lo', 0.0):.3f} is not above 0.5")
    checks = [("faithfulness", "")]
    if "faithfulness_held_out_win" in m:  # concepts were held out of the QT set
        checks.append(("faithfulness_held_out", " on the held-out concepts"))
    for prefix, where in checks:
        lo, hi = m.get(f"{prefix}_net_lo"), m.get(f"{prefix}_net_hi")
        if lo is None or hi is None:
            reasons.append(f"faithfulness{where} has no interval of wins minus losses (evaluate again)")
        elif hi < 0:
            reasons.append(
                f"faithfulness is worse{where}: the 95% interval of wins minus losses, [{lo:+.3f}, {hi:+.3f}], "
                "lies below zero"
            )
    if not evaluation.get("trustworthy", False):
        reasons.append("the rater of record is not trustworthy (see the evaluation report)")
    return not reasons, "; ".join(reasons) or "passed"


def register_model(
    config: Config,
    model: Mapping[str, Any],
    evaluation: Mapping[str, Any],
    name: str,
    parent_run_id: str,
    alias: str = "champion",
) -> dict[str, Any]:
    """Register the quality-tuned model in the MLflow registry; give it `alias` only if it passes `gate`.

    Args:
        model: the quality-tune result (`model_uri`, `fingerprint`).
        evaluation: the evaluation result (`metrics`, `trustworthy`, `report_uri`).
        name: the registered model's name.
        alias: the alias a passing model gets (the previous holder keeps its version, loses the alias).

    Returns:
        `name`, `version`, `alias` ("" if the gate failed), `gate` (the reason) and `source`.
    """
    passed, reason = gate(evaluation)
    tracker = Tracker(config)
    with tracker.stage_run("register", parent_run_id or None, sections=()) as run:  # it reads no setting
        client = tracker.client
        from mlflow.exceptions import MlflowException

        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Quality-tuned text-to-image models (Photogenic).")
        model_id, source_run = _mlflow_model(tracker, run, model, config)
        tags = {
            "photogenic.model": model["fingerprint"],
            "photogenic.model_uri": model["model_uri"],
            "photogenic.gate": reason,
            "photogenic.report": evaluation.get("report_uri", ""),
            **{f"eval.{k}": f"{v:.4f}" for k, v in sorted(evaluation["metrics"].items()) if k.startswith("appeal_w")},
        }
        with using_tracking_uri(tracker.uri):  # MLflow's registry looks the model id up by the global URI
            version = client.create_model_version(
                name, source=f"models:/{model_id}", run_id=source_run, tags=tags, model_id=model_id
            )
        if passed:
            client.set_registered_model_alias(name, alias, version.version)
        verdict = {"photogenic.registered": f"{name}/{version.version}", "photogenic.gate": reason}
        run.set_tags(verdict)
        run.log_metrics({"register/champion": float(passed)})
        if parent_run_id:
            parent = Run(tracker, parent_run_id)
            parent.set_tags(
                {**verdict, "mlflow.note.content": _verdict_note(name, version.version, passed, alias, reason)}
            )
            parent.log_metrics({"register/champion": float(passed)})
    log.info("registered %s version %s (%s: %s)", name, version.version, alias if passed else "no alias", reason)
    return {
        "name": name,
        "version": str(version.version),
        "alias": alias if passed else "",
        "gate": reason,
        "source": f"models:/{model_id}",
        "model_uri": model["model_uri"],
    }


def _mlflow_model(tracker: Tracker, run: Run, model: Mapping[str, Any], config: Config) -> tuple[str, str]:
    """The MLflow model of the trained model: the one its training run logged (found by content version),
    else, for a model trained without tracking, one logged now on the register run. Returns (model id, its
    run id): the run that the registered version names as its source."""
    from photogenic.serving import find_logged_model

    logged = find_logged_model(tracker.client, tracker.experiment_id(), model["fingerprint"])
    if logged is not None:
        return logged.model_id, logged.source_run_id
    log.info("no MLflow model of %s was logged by its training run; logging it on the register run", model["model_uri"])
    model_id = run.log_model(model["model_uri"], model["fingerprint"], "quality_tune")
    if not model_id:
        raise RuntimeError(f"could not log {model['model_uri']} as an MLflow model: {tracker.failures}")
    return model_id, run.run_id or ""


def _verdict_note(name: str, version: str, passed: bool, alias: str, reason: str) -> str:
    """The parent run's description: what this pipeline run registered, and the gate's verdict."""
    head = f"Registered **{name}** version {version}"
    if passed:
        return f"{head} as `@{alias}`: the registration gate passed."
    return f"{head} without the `@{alias}` alias: the registration gate failed: {reason}."
