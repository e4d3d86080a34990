"""The registration gate and the MLflow model registry: a candidate becomes `champion` only on intervals."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from photogenic.config import Config
from photogenic.tracking import Tracker

__all__ = ["gate", "register_model"]

log = logging.getLogger(__name__)


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
    with tracker.stage_run("register", parent_run_id or None) as run:
        client = tracker.client
        from mlflow.exceptions import MlflowException

        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Quality-tuned text-to-image models (Photogenic).")
        tags = {
            "photogenic.model": model["fingerprint"],
            "photogenic.gate": reason,
            "photogenic.report": evaluation.get("report_uri", ""),
            **{f"eval.{k}": f"{v:.4f}" for k, v in sorted(evaluation["metrics"].items()) if k.startswith("appeal_w")},
        }
        version = client.create_model_version(name, source=model["model_uri"], run_id=run.run_id, tags=tags)
        if passed:
            client.set_registered_model_alias(name, alias, version.version)
        run.set_tags({"photogenic.registered": f"{name}/{version.version}", "photogenic.gate": reason})
        run.log_metrics({"register.champion": float(passed)})
    log.info("registered %s version %s (%s: %s)", name, version.version, alias if passed else "no alias", reason)
    return {
        "name": name,
        "version": str(version.version),
        "alias": alias if passed else "",
        "gate": reason,
        "source": model["model_uri"],
    }
