"""Human raters: export an evaluation's image pairs for people to vote on, and import their votes."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from photogenic.config import Config, ConfigError
from photogenic.evaluate import outcome_table
from photogenic.manifest import manifest_file, read_manifest

__all__ = ["export_pairs", "import_votes"]


def export_pairs(evaluation_uri: str, out_dir: str | Path, config: Config, seed: int = 0) -> Path:
    """For human raters: `pairs.json` (each pair's prompt and two images, left and right in random order)
    and `rate.html` to look at them. The key to the sides stays in `pairs.json` under `_sides`, which a
    rater's form never shows. Returns the folder."""
    manifest = read_manifest(manifest_file(evaluation_uri), config.storage)
    store = manifest.store(config.storage)
    doc = json.loads(store.get_bytes("results.json", sha256=manifest.ref("results.json").sha256))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs, sides, cells = [], {}, []
    for i, row in enumerate(doc["pairs"]):
        flip = bool(rng.integers(2))
        names = ("b", "a") if flip else ("a", "b")
        files = []
        for side, name in zip(("left", "right"), names, strict=True):
            file = f"images/{i:05d}-{side}.png"
            store.get_file(
                f"images/{name}-{i:05d}.png", out / file, sha256=manifest.ref(f"images/{name}-{i:05d}.png").sha256
            )
            files.append(file)
        pairs.append({"pair": i, "prompt": row["prompt"], "left": files[0], "right": files[1]})
        sides[str(i)] = {"left": names[0], "right": names[1]}
        cells.append(
            f"<tr><td>{i}</td><td>{html.escape(row['prompt'])}</td><td><img src='{files[0]}' width=96></td>"
            f"<td><img src='{files[1]}' width=96></td></tr>"
        )
    (out / "pairs.json").write_text(
        json.dumps({"pairs": pairs, "_sides": sides, "evaluation": evaluation_uri}, indent=1)
    )
    instructions = (
        "For each pair give two votes: appeal (which image is more beautiful, ignoring the prompt: left, right "
        "or tie) and faithfulness (which image shows the prompt: left, right, both or neither). Save them as "
        'a JSON list of {"pair": N, "appeal": "left|right|tie", "faithfulness": "left|right|both|neither"}.'
    )
    (out / "rate.html").write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>Rate pairs</title></head><body>"
        f"<p>{html.escape(instructions)}</p><table><tr><th>pair</th><th>prompt</th><th>left</th><th>right</th></tr>"
        f"{''.join(cells)}</table></body></html>"
    )
    return out


def import_votes(pairs_json: str | Path, votes: list[dict[str, Any]], config: Config) -> dict[str, dict[str, float]]:
    """Human votes into the same win/tie/loss tables as the judges' (A's wins, intervals over prompts).

    Raises:
        ConfigError: a vote names an unknown pair or an unknown choice.
    """
    doc = json.loads(Path(pairs_json).read_text())
    sides, prompts = doc["_sides"], {p["pair"]: p["prompt"] for p in doc["pairs"]}
    appeal, faith, groups = [], [], []
    for v in votes:
        pair = v.get("pair")
        if str(pair) not in sides:
            raise ConfigError(f"vote for unknown pair {pair!r} (pairs 0..{len(sides) - 1})")
        side = sides[str(pair)]
        a_is = "left" if side["left"] == "a" else "right"
        choice = v.get("appeal")
        if choice not in ("left", "right", "tie"):
            raise ConfigError(f"pair {pair}: appeal vote {choice!r} is not left, right or tie")
        appeal.append(0 if choice == "tie" else (1 if choice == a_is else -1))
        choice = v.get("faithfulness")
        if choice not in ("left", "right", "both", "neither"):
            raise ConfigError(f"pair {pair}: faithfulness vote {choice!r} is not left, right, both or neither")
        faith.append(0 if choice in ("both", "neither") else (1 if choice == a_is else -1))
        groups.append(prompts[pair])
    g = np.unique(np.array(groups), return_inverse=True)[1]
    samples = config.evaluate.bootstrap_samples
    return {
        "appeal": outcome_table(np.array(appeal), g, samples),
        "faithfulness": outcome_table(np.array(faith), g, samples),
    }
