"""The official training recipes per task, as data: SelM's (shared/specs/selm.md §1.1, §1.4, §4) and SDAVS's
(shared/specs/sdavs.md §4)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Recipe", "RECIPES", "SDAVS_RECIPES", "AUX_WEIGHTS", "OFFICIAL_SEED"]

#: Weights of the auxiliary Dice terms on the three decoder layers' assignment maps (coarse to fine).
AUX_WEIGHTS = (0.001, 0.01, 0.1)
OFFICIAL_SEED = 123


@dataclass(frozen=True)
class Recipe:
    """One task's recipe.

    Args:
        task: ``s4``, ``ms3`` or ``avss``.
        loss: ``binary`` (Dice + BCE + aux Dice) or ``semantic`` (71-class cross-entropy + aux Dice); SDAVS's
            ``sdavs-binary`` (BCE + IoU + Dice) or ``sdavs-semantic`` (cross-entropy + IoU + Dice).
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

# SDAVS (paper §IV-A): L_ce + L_iou + L_dice, AdamW, lr 5e-5, batch 4; S4 and AVSS 40 epochs, MS3 60. The paper's
# multi-step milestones and weight decay are not given: constant lr (``--schedule`` overrides) and AdamW's 0.01.
SDAVS_RECIPES = {
    "s4": Recipe("s4", "sdavs-binary", 5e-5, 0.01, 4, 40),
    "ms3": Recipe("ms3", "sdavs-binary", 5e-5, 0.01, 4, 60),
    "avss": Recipe("avss", "sdavs-semantic", 5e-5, 0.01, 4, 40),
}
