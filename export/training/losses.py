"""Training losses. SelM's (shared/specs/selm.md §4): Dice + BCE (S4, MS3) or cross-entropy (AVSS), plus the
auxiliary Dice terms on the decoder's token-assignment maps. SDAVS's (sdavs.md §4): L_ce + L_iou + L_dice, equal
weights. AVS-Mamba's (avs-mamba.md §4): Dice (S4, MS3) or cross-entropy (AVSS) on the output plus the same on the
first decoder layer's mask, weight 1 each. COMBO's (combo.md §4): Mask2Former's set criterion (Hungarian matching,
class cross-entropy, point-sampled mask BCE and Dice) on every decoder prediction, plus the adaptive inter-frame
consistency loss on the intermediate ones. Only supervised frames enter any term except COMBO's consistency loss
(it compares consecutive frames, labelled or not). ``LOSSES`` maps a recipe's ``loss`` name to its function."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .recipe import AUX_WEIGHTS

__all__ = ["dice_loss", "aux_loss", "binary_loss", "semantic_loss", "iou_loss", "sdavs_binary_loss",
           "sdavs_semantic_loss", "avs_mamba_binary_loss", "avs_mamba_semantic_loss", "SetCriterion",
           "COMBO_CRITERION", "point_sample", "uncertain_points", "set_targets", "hungarian_match",
           "consistency_loss", "combo_loss", "combo_binary_loss", "combo_semantic_loss", "LOSSES"]


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


def avs_mamba_binary_loss(outputs: Sequence[Tensor], masks: Tensor) -> dict[str, Tensor]:
    """AVS-Mamba, S4/MS3: ``dice_loss`` on the output plus ``dice_loss`` on each earlier decoder layer's mask
    (``interm``), weight 1 each (the public criterion's BCE, focal and mix terms have weight 0).
    outputs: the decoder layers' logits, each [F,1,H,W] (the last is the output); masks [F,H,W] in [0, 1]."""
    *interm, final = [o[:, 0].float() for o in outputs]
    terms = {"dice": dice_loss(final, masks),
             "interm": sum((dice_loss(o, masks) for o in interm), final.new_zeros(()))}
    terms["loss"] = terms["dice"] + terms["interm"]
    return terms


def avs_mamba_semantic_loss(outputs: Sequence[Tensor], labels: Tensor) -> dict[str, Tensor]:
    """AVS-Mamba, AVSS: 71-class cross-entropy (mean over pixels and frames) on the output plus the same on each
    earlier decoder layer's logits (``interm``), weight 1 each. The paper calls it binary cross-entropy; the public
    criterion applies softmax cross-entropy to the class logits with integer labels, as here.
    outputs: each [F,71,H,W]; labels [F,H,W] int64."""
    *interm, final = [o.float() for o in outputs]
    terms = {"ce": F.cross_entropy(final, labels),
             "interm": sum((F.cross_entropy(o, labels) for o in interm), final.new_zeros(()))}
    terms["loss"] = terms["ce"] + terms["interm"]
    return terms


# -- COMBO: Mask2Former's set criterion + the adaptive inter-frame consistency loss ---------------------------------

@dataclass(frozen=True)
class SetCriterion:
    """COMBO's loss settings (the official configs; combo.md §4).

    Args:
        class_weight, mask_weight, dice_weight: weights of the class cross-entropy, the mask BCE and the mask Dice,
            in the loss and as the matching costs.
        ada_binary, ada_semantic: weight of the inter-frame consistency loss for S4/MS3 and for AVSS (the paper's
            10 and 5; the public AVSS config sets 10).
        no_object_weight: cross-entropy weight of the "no object" class.
        points: mask points sampled per matched mask (and per image for the matching).
        oversample, importance: of the ``points * oversample`` uniform candidates, the ``points * importance``
            most uncertain are kept, the rest are drawn uniformly.
        ignore_label: semantic-map value that is no class (padding).
    """

    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    ada_binary: float = 10.0
    ada_semantic: float = 5.0
    no_object_weight: float = 0.1
    points: int = 12544
    oversample: float = 3.0
    importance: float = 0.75
    ignore_label: int = 255


COMBO_CRITERION = SetCriterion()


def point_sample(maps: Tensor, coords: Tensor) -> Tensor:
    """Bilinear values of ``maps`` [R, H, W] at ``coords`` [R, P, 2] ((x, y) in [0, 1] of the map's extent, pixel
    centres at (i + 0.5) / size, zero outside) -> [R, P]."""
    grid = 2 * coords[:, :, None, :].to(maps.dtype) - 1
    return F.grid_sample(maps[:, None], grid, mode="bilinear", align_corners=False)[:, 0, :, 0]


def uncertain_points(logits: Tensor, points: int, oversample: float, importance: float) -> Tensor:
    """PointRend's training points for mask logits [R, H, W]: ``points * oversample`` uniform candidates, the
    ``points * importance`` with the highest uncertainty ``-|logit|`` kept, the rest uniform -> [R, points, 2]."""
    count = logits.shape[0]
    candidates = torch.rand(count, int(points * oversample), 2, device=logits.device)
    uncertain = int(importance * points)
    top = (-point_sample(logits, candidates).abs()).topk(uncertain, dim=1).indices
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))
    return torch.cat([chosen, torch.rand(count, points - uncertain, 2, device=logits.device)], dim=1)


def set_targets(masks: Tensor, binary: bool, ignore_label: int = COMBO_CRITERION.ignore_label
                ) -> list[tuple[Tensor, Tensor]]:
    """Per frame, its classes and their masks, as COMBO's data mappers build them: every class present in the
    frame's map is one target (background included), its mask the pixels of that class.

    Args:
        masks: [F, H, W]: binary ground truth in [0, 1] (object where the value is 1, the official loader's
            ``gray // 255``), or int64 class maps (AVSS; ``ignore_label`` pixels are no class).
        binary: S4/MS3 (classes 0 background, 1 object) or AVSS.

    Returns:
        F pairs (labels int64 [M], masks float [M, H, W]), M = the number of classes present.
    """
    maps = (masks >= 1).long() if binary else masks.long()
    out = []
    for frame in maps:
        labels = torch.unique(frame)
        labels = labels[labels != ignore_label]
        out.append((labels, (frame[None] == labels[:, None, None]).float()))
    return out


@torch.no_grad()
def hungarian_match(logits: Tensor, masks: Tensor, labels: Tensor, targets: Tensor,
                    criterion: SetCriterion = COMBO_CRITERION) -> tuple[Tensor, Tensor]:
    """One image's minimum-cost matching of queries to targets (scipy's ``linear_sum_assignment``).

    The cost of query q for target m: ``class_weight * -p_q(label_m) + mask_weight * BCE + dice_weight * Dice``,
    the mask terms on ``criterion.points`` uniform points shared by all masks (Dice with +1 smoothing).

    Args:
        logits: [Q, K+1] class logits. masks: [Q, h, w] mask logits. labels: [M]. targets: [M, H, W] in [0, 1].

    Returns:
        (query indices, target indices), each int64 [min(Q, M)], sorted by query.
    """
    from scipy.optimize import linear_sum_assignment

    coords = torch.rand(1, criterion.points, 2, device=masks.device)
    out = point_sample(masks.float(), coords.expand(len(masks), -1, -1))
    tgt = point_sample(targets.float(), coords.expand(len(targets), -1, -1))
    cost_class = -logits.float().softmax(-1)[:, labels]
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x); averaged over the points
    cost_mask = (F.softplus(-out) @ tgt.T + F.softplus(out) @ (1 - tgt).T) / criterion.points
    prob = out.sigmoid()
    cost_dice = 1 - (2 * prob @ tgt.T + 1) / (prob.sum(-1)[:, None] + tgt.sum(-1)[None, :] + 1)
    cost = (criterion.mask_weight * cost_mask + criterion.class_weight * cost_class
            + criterion.dice_weight * cost_dice)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(np.asarray(cols), dtype=torch.int64)


def _set_losses(logits: Tensor, masks: Tensor, targets: list[tuple[Tensor, Tensor]], num_masks: float,
                criterion: SetCriterion) -> tuple[Tensor, Tensor, Tensor]:
    """One prediction's (ce, bce, dice) on F frames: logits [F, Q, K+1], masks [F, Q, h, w], F targets."""
    logits = logits.float()
    classes = logits.new_full(logits.shape[:2], logits.shape[-1] - 1, dtype=torch.int64)
    src, tgt = [], []
    for f, (labels, target) in enumerate(targets):
        rows, cols = hungarian_match(logits[f], masks[f], labels, target, criterion)
        classes[f, rows.to(logits.device)] = labels[cols]
        src.append(masks[f][rows.to(masks.device)])
        tgt.append(target[cols])
    weight = logits.new_ones(logits.shape[-1])
    weight[-1] = criterion.no_object_weight
    ce = F.cross_entropy(logits.transpose(1, 2), classes, weight)
    src, tgt = torch.cat(src).float(), torch.cat(tgt)
    if not len(src):
        zero = masks.sum() * 0
        return ce, zero, zero
    with torch.no_grad():
        coords = uncertain_points(src, criterion.points, criterion.oversample, criterion.importance)
        truth = point_sample(tgt, coords)
    pred = point_sample(src, coords)
    bce = F.binary_cross_entropy_with_logits(pred, truth, reduction="none").mean(1).sum() / num_masks
    prob = pred.sigmoid()
    dice = (1 - (2 * (prob * truth).sum(-1) + 1) / (prob.sum(-1) + truth.sum(-1) + 1)).sum() / num_masks
    return ce, bce, dice


def consistency_loss(masks: Tensor, clip: Tensor) -> Tensor:
    """COMBO's adaptive inter-frame loss on one prediction: for consecutive frames of a clip, with S the cosine
    similarity of their flattened mask logits [Q*h*w], ``(1 - S) * exp(-(1 - S))``, averaged over the pairs.

    Args:
        masks: [F, Q, h, w], the frames of each clip consecutive and in order.
        clip: [F] the clip of each frame.

    NOTE: upstream reshapes the frames into groups of 5 whatever the clip length, so for 10-frame AVSS clips it
    skips the pair (4, 5); here every consecutive pair of a clip's real frames counts.
    """
    flat = masks.float().flatten(1)
    pair = clip[1:] == clip[:-1]
    if not pair.any():
        return flat.sum() * 0
    distance = 1 - F.cosine_similarity(flat[:-1][pair], flat[1:][pair], dim=1)
    return (distance * torch.exp(-distance)).mean()


def combo_loss(outputs: dict, clip: Tensor, supervised: Tensor, masks: Tensor, binary: bool,
               criterion: SetCriterion = COMBO_CRITERION) -> dict[str, Tensor]:
    """COMBO's loss: ``class_weight * ce + mask_weight * bce + dice_weight * dice`` summed over all the decoder's
    predictions (each matched on its own; deep supervision), on the supervised frames, plus ``ada_*`` times the
    consistency loss summed over the intermediate predictions (not the last), on all frames.

    Args:
        outputs: ``model(frames, maskige, log_mel, raw=True)`` on F frames: ``pred_logits`` [F, Q, K+1],
            ``pred_masks`` [F, Q, h, w], ``aux_outputs`` (the earlier predictions).
        clip: [F] the clip of each frame (a clip's frames consecutive). supervised: [F] bool.
        masks: [S, H, W] the ground truth of the S supervised frames, in order (see :func:`set_targets`).
        binary: S4/MS3 or AVSS.

    Returns:
        ``ce``, ``bce``, ``dice`` (each summed over the predictions), ``ada`` (summed over the intermediate ones)
        and the weighted ``loss``.
    """
    predictions = [*outputs["aux_outputs"], outputs]
    targets = [(labels.to(masks.device), m) for labels, m in set_targets(masks, binary, criterion.ignore_label)]
    num_masks = max(sum(len(labels) for labels, _ in targets), 1)
    terms = {key: masks.new_zeros((), dtype=torch.float32) for key in ("ce", "bce", "dice", "ada")}
    for prediction in predictions:
        ce, bce, dice = _set_losses(prediction["pred_logits"][supervised], prediction["pred_masks"][supervised],
                                    targets, num_masks, criterion)
        terms["ce"], terms["bce"], terms["dice"] = terms["ce"] + ce, terms["bce"] + bce, terms["dice"] + dice
    for prediction in predictions[:-1]:
        terms["ada"] = terms["ada"] + consistency_loss(prediction["pred_masks"], clip)
    ada_weight = criterion.ada_binary if binary else criterion.ada_semantic
    terms["loss"] = (criterion.class_weight * terms["ce"] + criterion.mask_weight * terms["bce"]
                     + criterion.dice_weight * terms["dice"] + ada_weight * terms["ada"])
    return terms


def combo_binary_loss(outputs: dict, clip: Tensor, supervised: Tensor, masks: Tensor) -> dict[str, Tensor]:
    """COMBO, S4/MS3 (:func:`combo_loss`, consistency weight 10); S4 supervises frame 0 of each clip only."""
    return combo_loss(outputs, clip, supervised, masks, binary=True)


def combo_semantic_loss(outputs: dict, clip: Tensor, supervised: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """COMBO, AVSS (:func:`combo_loss` on 71-class maps, consistency weight 5)."""
    return combo_loss(outputs, clip, supervised, labels, binary=False)


#: A recipe's ``loss`` name -> the function; it takes the family's forward outputs (``trainer.FAMILIES``).
LOSSES: dict[str, Callable[..., dict[str, Tensor]]] = {
    "binary": binary_loss, "semantic": semantic_loss,
    "sdavs-binary": sdavs_binary_loss, "sdavs-semantic": sdavs_semantic_loss,
    "avs-mamba-binary": avs_mamba_binary_loss, "avs-mamba-semantic": avs_mamba_semantic_loss,
    "combo-binary": combo_binary_loss, "combo-semantic": combo_semantic_loss,
}
