"""Training losses. SelM's (shared/specs/selm.md §4): Dice + BCE (S4, MS3) or cross-entropy (AVSS), plus the
auxiliary Dice terms on the decoder's token-assignment maps. SDAVS's (sdavs.md §4): L_ce + L_iou + L_dice, equal
weights. Only supervised frames enter any term."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .recipe import AUX_WEIGHTS

__all__ = ["dice_loss", "aux_loss", "binary_loss", "semantic_loss", "iou_loss", "sdavs_binary_loss",
           "sdavs_semantic_loss"]


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


def iou_loss(probs: Tensor, target: Tensor) -> Tensor:
    """Soft IoU loss 1 - (sum(p g) + 1) / (sum(p + g - p g) + 1) per map; mean over maps. probs, target [M, H, W]."""
    p, g = probs.float().flatten(1), target.float().flatten(1)
    inter = (p * g).sum(1)
    return (1 - (inter + 1) / ((p + g).sum(1) - inter + 1)).mean()


def sdavs_binary_loss(logits: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """SDAVS, S4/MS3: BCE + soft IoU + Dice (``dice_loss``), equal weights. logits [F,1,H,W], masks [F,H,W]."""
    logits = logits[:, 0].float()
    terms = {"ce": F.binary_cross_entropy_with_logits(logits, masks), "iou": iou_loss(torch.sigmoid(logits), masks),
             "dice": dice_loss(logits, masks)}
    terms["loss"] = terms["ce"] + terms["iou"] + terms["dice"]
    return terms


def sdavs_semantic_loss(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """SDAVS, AVSS: cross-entropy + soft IoU + soft Dice of the softmax against the one-hot labels, averaged over
    classes. logits [F,K,H,W], labels [F,H,W] int64."""
    probs = logits.float().softmax(dim=1).transpose(0, 1).flatten(1, 2)                # [K, F*H, W]
    onehot = F.one_hot(labels, logits.shape[1]).permute(3, 0, 1, 2).flatten(1, 2).float()
    inter = (probs * onehot).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / ((probs + onehot).flatten(1).sum(1) + 1)
    terms = {"ce": F.cross_entropy(logits.float(), labels), "iou": iou_loss(probs, onehot), "dice": dice.mean()}
    terms["loss"] = terms["ce"] + terms["iou"] + terms["dice"]
    return terms
