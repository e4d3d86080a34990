"""Screenshots of the MLflow UI for the docs: a workspace's runs, compared in the UI's compare view.

    .venv/bin/python docs/mlflow_screenshot.py photogenic-workspace --out docs/mlflow-compare.png

Starts `mlflow ui` on a free loopback port over the workspace's SQLite store, opens the compare view of
the last two pipeline runs' runs of one stage (`--stage evaluate`, or `parent` for the pipeline runs)
in Debian's headless Chromium (`tests/browser.py`), and saves the page. Needs the `chromium` and
`chromium-driver` packages.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import start_chromium  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _runs(uri: str, experiment: str, stage: str) -> tuple[str, list[str]]:
    """The experiment id and the ids of the last two pipeline runs' `stage` runs (or the pipeline runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} at {uri}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=500)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.info.status == "FINISHED"][:2]
    if len(parents) < 2:
        raise SystemExit(f"{uri} holds {len(parents)} finished pipeline run(s); the comparison needs two")
    if stage == "parent":
        return exp.experiment_id, [r.info.run_id for r in parents]
    chosen = []
    for parent in parents:
        found = [
            r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id and r.info.run_name == stage
        ]
        if not found:
            raise SystemExit(f"pipeline run {parent.info.run_name} has no {stage!r} run")
        chosen.append(found[0].info.run_id)
    return exp.experiment_id, chosen


def _show_differences_only(driver: object) -> None:
    """Turn on the compare view's "Show diff only" switches and close the assistant panel, if present."""
    from selenium.webdriver.common.by import By

    for label in driver.find_elements(By.XPATH, "//*[normalize-space(text())='Show diff only']"):  # type: ignore[attr-defined]
        switches = label.find_elements(By.XPATH, "preceding::button[@role='switch'][1]")
        if switches:
            switches[0].click()
    for close in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):  # type: ignore[attr-defined]
        if close.is_displayed():
            close.click()
    time.sleep(2)
    driver.execute_script("document.querySelectorAll('*').forEach(e => { e.scrollTop = 0; });")  # type: ignore[attr-defined]
    time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-compare.png")
    parser.add_argument("--stage", default="evaluate", help="a child run's name, or 'parent'")
    parser.add_argument("--experiment", default="photogenic-quality-tuning")
    parser.add_argument("--height", type=int, default=1800)
    args = parser.parse_args()

    uri = f"sqlite:///{args.workspace.resolve() / 'mlflow.db'}"
    experiment, run_ids = _runs(uri, args.experiment, args.stage)
    port = _free_port()
    mlflow = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PATH": f"{mlflow.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("mlflow ui did not start") from None
                time.sleep(1)
        query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment])})
        with start_chromium(1600, args.height) as driver:
            driver.get(f"{base}/#/compare-runs?{query}")
            time.sleep(8)  # the single-page app fetches the runs, then draws
            _show_differences_only(driver)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(args.out))
            errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(
        f"{args.out}: {args.stage} runs {', '.join(run_ids)} compared"
        + (f"; console errors: {errors}" if errors else "")
    )


if __name__ == "__main__":
    main()
