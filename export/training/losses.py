"""SelM's training losses (shared/specs/selm.md §4): Dice + BCE (S4, MS3) or cross-entropy (AVSS), plus the
auxiliary Dice terms on the decoder's token-assignment maps. Only supervised frames enter any term."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .recipe import AUX_WEIGHTS

__all__ = ["dice_loss", "aux_loss", "binary_loss", "semantic_loss"]


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 - 2 sum(p g) / (sum(p^2) + sum(g^2) + 0.002) per frame, p = sigmoid(logits); mean over frames.

    logits, target: [F, H, W] (target in [0, 1]).
    """
    p = torch.sigmoid(logits.float()).flatten(1)
    g = target.float().flatten(1)
    return (1 - 2 * (p * g).sum(1) / ((p * p).sum(1) + (g * g).sum(1) + 0.002)).mean()


def aux_loss(hits: Sequence[Tensor], target: Tensor) -> Tensor:
    """sum_i alpha_i Dice(nearest-upsampled hit map of layer i, target); hits: 3 x [F, h*w] (token 1's 0/1 map),
    target [F, H, W] binary. The official Dice applies its sigmoid to these 0/1 maps too."""
    size = target.shape[-2:]
    total = target.new_zeros(())
    for weight, hit in zip(AUX_WEIGHTS, hits):
        side = int(round(hit.shape[-1] ** 0.5))
        up = F.interpolate(hit.reshape(-1, 1, side, side).float(), size=size, mode="nearest")[:, 0]
        total = total + weight * dice_loss(up, target)
    return total


def binary_loss(logits: Tensor, hits: Sequence[Tensor], masks: Tensor) -> dict[str, Tensor]:
    """S4/MS3 on the supervised frames: logits [F, 1, H, W], hits 3 x [F, h*w], masks [F, H, W] in [0, 1]."""
    logits = logits[:, 0].float()
    terms = {"dice": dice_loss(logits, masks), "bce": F.binary_cross_entropy_with_logits(logits, masks),
             "aux": aux_loss(hits, masks)}
    terms["loss"] = terms["dice"] + terms["bce"] + terms["aux"]
    return terms


def semantic_loss(logits: Tensor, hits: Sequence[Tensor], labels: Tensor) -> dict[str, Tensor]:
    """AVSS on the supervised frames: 71-class cross-entropy (mean over pixels and frames) + aux Dice against the
    binarised labels (label > 0). logits [F, 71, H, W], labels [F, H, W] int64."""
    terms = {"ce": F.cross_entropy(logits.float(), labels), "aux": aux_loss(hits, (labels > 0).float())}
    terms["loss"] = terms["ce"] + terms["aux"]
    return terms
