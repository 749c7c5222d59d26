"""The official SelM training recipe per task (shared/specs/selm.md §1.1, §1.4, §4), as data."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Recipe", "RECIPES", "AUX_WEIGHTS", "OFFICIAL_SEED"]

#: Weights of the auxiliary Dice terms on the three decoder layers' assignment maps (coarse to fine).
AUX_WEIGHTS = (0.001, 0.01, 0.1)
OFFICIAL_SEED = 123


@dataclass(frozen=True)
class Recipe:
    """One task's recipe.

    Args:
        task: ``s4``, ``ms3`` or ``avss``.
        loss: ``binary`` (Dice + BCE + aux Dice) or ``semantic`` (71-class cross-entropy + aux Dice).
        lr, weight_decay: AdamW's (no schedule).
        batch: clips per optimiser step.
        epochs: the official number of epochs.
    """

    task: str
    loss: str
    lr: float
    weight_decay: float
    batch: int
    epochs: int


RECIPES = {
    "s4": Recipe("s4", "binary", 2e-5, 0.05, 2, 40),      # the loss sees frame 0 only (the data has no other mask)
    "ms3": Recipe("ms3", "binary", 2e-5, 0.05, 1, 100),
    "avss": Recipe("avss", "semantic", 2e-5, 0.01, 8, 30),
}
