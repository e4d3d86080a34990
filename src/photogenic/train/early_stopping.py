"""Early stopping (paper, 3.4: quality-tuning stops early): keep the best-scoring weights, stop after
`patience` validations without improvement, and survive a resume through its own state dict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    """The best validation so far (higher is better), its step and weights, and the rounds since.

    Attributes:
        patience: validations without improvement before training stops.
        score, step: the best validation and the step it was taken at (None before the first).
        bad: validations since the best one.
        weights: CPU copies of the best weights (what export writes when training ends).
        history: every (step, score).
    """

    patience: int
    score: float | None = None
    step: int | None = None
    bad: int = 0
    weights: dict[str, torch.Tensor] | None = None
    history: list[tuple[int, float]] = field(default_factory=list)

    @property
    def exhausted(self) -> bool:
        """Patience has run out: training stops (or, resumed after the stop, does not start)."""
        return self.bad >= self.patience

    def update(self, step: int, score: float, weights: Callable[[], dict[str, torch.Tensor]]) -> bool:
        """Record a validation; copy the weights (`weights()`) when it is the best so far. True when
        patience has run out."""
        self.history.append((step, score))
        if self.score is None or score > self.score:
            self.score, self.step, self.bad, self.weights = score, step, 0, weights()
        else:
            self.bad += 1
        return self.exhausted

    def summary(self) -> dict[str, Any] | None:
        """What the exported model's manifest records (None when no validation ran)."""
        if self.score is None:
            return None
        return {"best_step": self.step, "best_score": self.score, "history": self.history}

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's copy: scores, step, rounds and the best weights (a resumed run must still
        export the best weights, which may be from before the checkpoint)."""
        return {
            "score": self.score,
            "step": self.step,
            "bad": self.bad,
            "weights": self.weights,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.score, self.step, self.bad = state["score"], state["step"], state["bad"]
        self.weights, self.history = state["weights"], [tuple(h) for h in state["history"]]
