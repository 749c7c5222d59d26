"""The official training recipes per task, as data: SelM's (shared/specs/selm.md §1.1, §1.4, §4), SDAVS's
(shared/specs/sdavs.md §4), AVS-Mamba's (shared/specs/avs-mamba.md §2, §4) and COMBO's (combo.md §4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["Recipe", "RECIPES", "SDAVS_RECIPES", "AVS_MAMBA_RECIPES", "COMBO_RECIPES", "AUX_WEIGHTS", "OFFICIAL_SEED"]

#: Weights of the auxiliary Dice terms on the three decoder layers' assignment maps (coarse to fine).
AUX_WEIGHTS = (0.001, 0.01, 0.1)
OFFICIAL_SEED = 123


@dataclass(frozen=True)
class Recipe:
    """One task's recipe.

    Args:
        task: ``s4``, ``ms3`` or ``avss``.
        loss: a key of ``losses.LOSSES``: SelM's ``binary`` (Dice + BCE + aux Dice) or ``semantic`` (71-class
            cross-entropy + aux Dice); SDAVS's ``sdavs-binary`` (BCE + IoU + Dice) or ``sdavs-semantic``
            (cross-entropy + IoU + Dice); AVS-Mamba's ``avs-mamba-binary`` (Dice on both decoder layers' masks)
            or ``avs-mamba-semantic`` (cross-entropy on both); COMBO's ``combo-binary`` or ``combo-semantic``
            (Mask2Former's set criterion + the inter-frame consistency loss).
        lr, weight_decay: AdamW's.
        batch: clips per optimiser step.
        epochs: the official number of epochs.
        frozen_backbone_epochs: the image backbone gets no gradient during the first N epochs (0: never frozen).
        schedule: the learning rate per step when ``--schedule`` is not given: ``constant``, ``cosine`` or
            ``poly`` (detectron2's WarmupPolyLR without warm-up: ``(1 - step / steps) ** 0.9``).
        clip_grad_norm: clip the L2 norm of all gradients together to this (0: no clipping).
        backbone_lr: learning-rate multiplier of the parameters of modules whose name contains ``backbone``.
        norm_weight_decay: weight decay of normalisation layers and embeddings (None: ``weight_decay``).
    """

    task: str
    loss: str
    lr: float
    weight_decay: float
    batch: int
    epochs: int
    frozen_backbone_epochs: int = 0
    schedule: str = "constant"
    clip_grad_norm: float = 0.0
    backbone_lr: float = 1.0
    norm_weight_decay: Optional[float] = None


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

# AVS-Mamba (paper §IV, public train scripts): AdamW lr 2e-5 with torch's default weight decay 0.01 (the scripts
# pass none), batch 2 / 6, 60 S4, 120 MS3, 50 AVSS epochs (the paper's; the AVSS script defaults to 30 epochs of
# 4 clips). The object scripts keep the image backbone frozen until epoch 20; the AVSS script trains it from the
# start. VGGish stays frozen throughout.
AVS_MAMBA_RECIPES = {
    "s4": Recipe("s4", "avs-mamba-binary", 2e-5, 0.01, 2, 60, frozen_backbone_epochs=20),
    "ms3": Recipe("ms3", "avs-mamba-binary", 2e-5, 0.01, 2, 120, frozen_backbone_epochs=20),
    "avss": Recipe("avss", "avs-mamba-semantic", 2e-5, 0.01, 6, 50),
}

# COMBO (paper §4, public configs): AdamW lr 1e-4, weight decay 0.05 (0 on norms and embeddings, detectron2's and the
# project's WEIGHT_DECAY_NORM/EMBED), poly schedule, full-model gradient clipping at L2 norm 0.01, backbone lr x0.1
# (both image backbones), 8 clips per iteration; 90k iterations for S4 and AVSS, 20k for MS3. Here as epochs of
# AVSBench's training splits: 90k x 8 / 3,452 S4 clips = 208.6 -> 209, 20k x 8 / 296 MS3 clips = 540.5 -> 541,
# 90k x 8 / 8,498 AVSS clips = 84.7 -> 85 (the poly schedule runs over the epochs' steps). The official training also
# augments (random resize + crop, colour jitter, flips); that is not done here.
COMBO_RECIPES = {
    task: Recipe(task, loss, 1e-4, 0.05, 8, epochs, schedule="poly", clip_grad_norm=0.01, backbone_lr=0.1,
                 norm_weight_decay=0.0)
    for task, loss, epochs in (("s4", "combo-binary", 209), ("ms3", "combo-binary", 541),
                               ("avss", "combo-semantic", 85))
}
