"""The prompts models are compared on: the benchmark's dev and test splits (the world's concepts, worded
unlike any training caption), a user's prompt file, and the sampling seeds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from photogenic.config import Config, ConfigError
from photogenic.judges import parse_caption
from photogenic.world import BACKGROUNDS, COLORS, SHAPES, caption_for

Split = Literal["dev", "test"]


SPLITS: tuple[str, ...] = ("dev", "test")

__all__ = ["Split", "SPLITS", "Prompt", "benchmark_prompts", "sampling_seeds", "load_prompts"]


_PARAPHRASES = (  # wordings that no training caption uses
    "{ac} {s} shown in front of {ab} background",
    "picture of {ac} {s}, {b} all around it",
)


_SPLIT_SEEDS = {"test": 31_337, "dev": 4_242}  # the prompts' draws


# Sampling seeds: the test split has its own, never used for early stopping or recipe choice (dev's).
_SAMPLING_SEEDS = {"dev": 0, "test": 1_000_000}


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt and the concepts it asks for (None: the prompt does not name one)."""

    text: str
    shape: str | None
    color: str | None
    background: str | None
    paraphrase: bool
    held_out: bool
    category: str = ""


def benchmark_prompts(config: Config, split: Split = "test") -> list[Prompt]:
    """The benchmark, kept apart from training: every (shape, colour) pair once in the clean wording, with
    a background drawn by the split's own seed, plus as many again in paraphrases. The dev split (early
    stopping, recipe choice) never repeats a test prompt. Prompts that name a concept held out of the QT
    set are flagged."""
    if split not in _SPLIT_SEEDS:
        raise ConfigError(f"unknown benchmark split {split!r}; splits: {', '.join(SPLITS)}")
    rng = np.random.default_rng([config.world.seed, _SPLIT_SEEDS[split]])
    taken = {p.text for p in benchmark_prompts(config, "test")} if split == "dev" else set()
    held = set(config.curate.holdout_concepts)
    backgrounds = list(BACKGROUNDS)

    def draw(text_of: Any) -> tuple[str, str]:
        free = [b for b in backgrounds if text_of(b) not in taken]
        background = str(rng.choice(free))
        return text_of(background), background

    prompts = []
    for shape in SHAPES:
        for color in COLORS:
            text, background = draw(lambda b, s=shape, c=color: caption_for(s, c, b))
            prompts.append(Prompt(text, shape, color, background, False, bool({shape, color} & held), "clean"))
    for shape in SHAPES:
        for color in COLORS:
            template = _PARAPHRASES[int(rng.integers(len(_PARAPHRASES)))]
            text, background = draw(lambda b, s=shape, c=color, t=template: _paraphrase(t, s, c, b))
            prompts.append(Prompt(text, shape, color, background, True, bool({shape, color} & held), "paraphrase"))
    return prompts


def _paraphrase(template: str, shape: str, color: str, background: str) -> str:
    a = caption_for(shape, color, background).split(" on ")  # "a red circle", "a sky background"
    return template.format(ac=a[0].rsplit(" ", 1)[0], s=shape, ab=a[1].rsplit(" ", 1)[0], b=background)


def sampling_seeds(config: Config, split: str) -> list[int]:
    """The sampling seeds of a split: `evaluate.seeds_per_prompt` of them, the test split's its own."""
    base = _SAMPLING_SEEDS.get(split, _SAMPLING_SEEDS["test"])
    return list(range(base, base + config.evaluate.seeds_per_prompt))


_PROMPT_COLUMNS = ("prompt", "text", "caption")


_MAX_PROMPTS = 100_000


def load_prompts(path: str | Path, config: Config) -> list[Prompt]:
    """A user's prompt set: one prompt a line (`.txt`), JSON lines with `prompt` (or `text`) and an optional
    `category` (`.jsonl`), or a table with a `Prompt` column and an optional `Category` (`.csv`, or `.tsv`
    as PartiPrompts ships). The world concepts each prompt names are read from its words.

    Raises:
        ConfigError: the file is missing, empty, or has a line or row without a prompt (named by line).
    """
    import csv

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--prompts {path}: no such file")
    suffix = path.suffix.lower()
    rows: list[tuple[int, str, str]] = []  # (line, prompt, category)
    with path.open(encoding="utf-8-sig", newline="") as f:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            column = next((fields[c] for c in _PROMPT_COLUMNS if c in fields), None)
            if column is None:
                raise ConfigError(
                    f"--prompts {path}: no prompt column; columns are {sorted(fields)}, expected one of "
                    f"{', '.join(_PROMPT_COLUMNS)} (any case)"
                )
            category = fields.get("category")
            for row in reader:
                rows.append((reader.line_num, row.get(column) or "", (row.get(category) or "") if category else ""))
        elif suffix == ".jsonl":
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"--prompts {path}, line {number}: not JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise ConfigError(f"--prompts {path}, line {number}: not a JSON object")
                text = record.get("prompt", record.get("text", ""))
                rows.append((number, text if isinstance(text, str) else "", str(record.get("category") or "")))
        else:
            rows = [(n, line.rstrip("\r\n"), "") for n, line in enumerate(f, 1) if line.strip()]
        if len(rows) > _MAX_PROMPTS:
            raise ConfigError(f"--prompts {path}: more than {_MAX_PROMPTS} prompts")
    if not rows:
        raise ConfigError(f"--prompts {path}: no prompts in the file")
    held = set(config.curate.holdout_concepts)
    prompts = []
    for number, text, category in rows:
        text = text.strip()
        if not text:
            raise ConfigError(f"--prompts {path}, line {number}: the prompt is empty")
        named = parse_caption(text)
        prompts.append(
            Prompt(
                text,
                named.get("shape"),
                named.get("color"),
                named.get("background"),
                False,
                bool(set(named.values()) & held),
                category.strip(),
            )
        )
    return prompts
