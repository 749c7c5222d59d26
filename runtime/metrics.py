"""The AVSBench metrics, exactly as the official test scripts compute them, plus batch-independent variants.

Binary tasks (S4, MS3; AVSBench ``utils/utility.py``, copied unchanged into SelM):

* **M_J** (``mask_iou``): per frame, ``pred = prob > 0.5``; IoU = |P and G| / (|P or G| + 1e-7); for an empty
  ground truth the IoU is the fraction of pixels correctly left empty. The script averages the frames of a test
  batch, then the batches.
* **M_F** (``Eval_Fmeasure``): per frame with a non-empty ground truth, precision and recall at 255 thresholds
  ``linspace(0, 1 - 1e-10, 255)`` (float32, so the last is 1.0) on ``prob >= th``; F = 1.3 P R / (0.3 P + R)
  (beta^2 = 0.3, NaN -> 0). The curves of a batch are averaged and the batch scores the **max over thresholds**
  of that curve (0 when every frame of the batch has an empty ground truth); the batches are averaged.

The official figures therefore depend on how clips are grouped: SelM's ``test.py`` runs ``--test_batch_size 2``
for S4, MS3 and AVSS (``OFFICIAL_CLIPS_PER_BATCH``), in the metadata order. :class:`BinaryMeter` reports those
figures and, labelled ``per_frame``, a grouping-free variant: M_J = mean over all frames, M_F = max over thresholds
of the curve averaged over every frame with a non-empty ground truth.

AVSS (``compute_color_metrics.py``): per frame, argmax labels; per class c, IoU_c = inter / (union + 2.2e-16) and
F_c = 1.3 P R / (0.3 P + R) with NaN -> 0; both are summed over frames, ``count_c`` counts the frames where c occurs
in prediction or ground truth; mIoU = mean over the 71 classes of sum / count (0 for a class that never occurs),
likewise F. It is batch-independent, but the official test also scores the zero padding of 5-s clips (frames 5-9
of v1s/v1m: the model's output there is zeroed, so argmax = class 0, and the padded label is 0): each such frame
adds a perfect class-0 frame. :class:`SemanticMeter` reports that (``official``) and the valid frames only
(``per_frame``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["mask_agreement", "BETA2", "OFFICIAL_CLIPS_PER_BATCH", "PR_THRESHOLDS", "pr_thresholds", "frame_iou", "frame_f_curve",
           "BinaryMeter", "SemanticMeter", "semantic_frame_scores"]

BETA2 = 0.3
PR_THRESHOLDS = 255
OFFICIAL_CLIPS_PER_BATCH = {"s4": 2, "ms3": 2, "avss": 2}
_IOU_EPS = 1e-7
_PR_EPS = np.float32(1e-20)
_SEMANTIC_EPS = 2.220446049250313e-16


def mask_agreement(candidate: np.ndarray, reference: np.ndarray, kind: str) -> float:
    """Fraction of pixels whose decision agrees between two logits arrays ``[N, C, H, W]``: ``logit > 0``
    (binary) or argmax over axis 1 (semantic)."""
    if kind == "binary":
        return float(np.mean((candidate > 0) == (reference > 0)))
    return float(np.mean(candidate.argmax(axis=1) == reference.argmax(axis=1)))


def pr_thresholds(count: int = PR_THRESHOLDS) -> np.ndarray:
    """float32 ``linspace(0, 1 - 1e-10, count)`` bit for bit as torch computes it on the CPU: the first half
    ``i * step``, the second ``end - (count - 1 - i) * step`` with one rounding (a fused multiply-add); the end
    rounds to 1.0."""
    end = np.float32(1 - 1e-10)
    step = np.float32(end / np.float32(count - 1))
    i = np.arange(count)
    low = i * np.float64(step)                         # exact products of float32 values, rounded once below
    high = np.float64(end) - (count - 1 - i) * np.float64(step)
    return np.where(i < count // 2, low, high).astype(np.float32)


_THRESHOLDS = pr_thresholds()


def _check_pair(prob: np.ndarray, gt: np.ndarray) -> None:
    if prob.shape != gt.shape or prob.ndim != 2:
        raise ValueError(f"prediction {prob.shape} and ground truth {gt.shape} must be the same [H, W] size")


def frame_iou(prob: np.ndarray, gt: np.ndarray) -> float:
    """AVSBench ``mask_iou`` of one frame: ``prob`` (sigmoid) > 0.5 against ``gt`` in [0, 1]."""
    _check_pair(prob, gt)
    pred = (np.asarray(prob, np.float32) > 0.5).astype(np.float64)
    gt = np.asarray(gt, np.float64)
    if gt.sum() == 0:
        return float(((1 - gt) * (1 - pred)).sum() / (gt.size + _IOU_EPS))
    return float((pred * gt).sum() / (np.maximum(pred, gt).sum() + _IOU_EPS))


def frame_f_curve(prob: np.ndarray, gt: np.ndarray) -> Optional[np.ndarray]:
    """F-measure at the 255 thresholds for one frame (float64 ``[255]``), or None for an empty ground truth."""
    _check_pair(prob, gt)
    gt = np.asarray(gt, np.float64).ravel()
    if gt.sum() == 0:
        return None
    # passes[k] = how many thresholds pixel k reaches (prob >= th); counts at threshold i = pixels with passes > i
    passes = np.searchsorted(_THRESHOLDS, np.asarray(prob, np.float32).ravel(), side="right")
    n = PR_THRESHOLDS + 1
    predicted = np.cumsum(np.bincount(passes, minlength=n)[::-1])[::-1][1:].astype(np.float64)
    tp = np.cumsum(np.bincount(passes, weights=gt, minlength=n)[::-1])[::-1][1:]
    precision = tp / (predicted + float(_PR_EPS))
    recall = tp / (gt.sum() + float(_PR_EPS))
    with np.errstate(invalid="ignore", divide="ignore"):
        f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    return np.nan_to_num(f, nan=0.0)


@dataclass
class _Batch:
    ious: list = field(default_factory=list)
    curves: list = field(default_factory=list)
    clips: int = 0

    def scores(self) -> tuple[float, float]:
        f = float(np.mean(self.curves, axis=0).max()) if self.curves else 0.0
        return float(np.mean(self.ious)), f


class BinaryMeter:
    """M_J and M_F over clips (S4, MS3); see the module docstring for the two protocols.

    Args:
        clips_per_batch: the official test batch size the ``official`` figures group clips by.
    """

    def __init__(self, clips_per_batch: int = 2):
        if clips_per_batch < 1:
            raise ValueError(f"clips_per_batch must be >= 1; got {clips_per_batch}")
        self.clips_per_batch = int(clips_per_batch)
        self._batches: list[tuple[float, float]] = []
        self._open = _Batch()
        self._ious: list[float] = []
        self._curve_sum = np.zeros(PR_THRESHOLDS)
        self._curve_count = 0

    def add_clip(self, probs: np.ndarray, gts: np.ndarray) -> dict:
        """Score one clip: ``probs`` and ``gts`` ``[frames, H, W]``; returns its own M_J, M_F and frame IoUs."""
        probs, gts = np.asarray(probs), np.asarray(gts)
        if probs.shape != gts.shape or probs.ndim != 3 or probs.shape[0] == 0:
            raise ValueError(f"predictions {probs.shape} and ground truth {gts.shape} must both be [frames, H, W]")
        ious = [frame_iou(p, g) for p, g in zip(probs, gts)]
        curves = [c for c in (frame_f_curve(p, g) for p, g in zip(probs, gts)) if c is not None]
        self._open.ious.extend(ious)
        self._open.curves.extend(curves)
        self._open.clips += 1
        if self._open.clips == self.clips_per_batch:
            self._batches.append(self._open.scores())
            self._open = _Batch()
        self._ious.extend(ious)
        for c in curves:
            self._curve_sum += c
        self._curve_count += len(curves)
        clip_f = float(np.mean(curves, axis=0).max()) if curves else None
        return {"M_J": float(np.mean(ious)), "M_F": clip_f, "frame_iou": ious}

    @property
    def running_mj(self) -> float:
        """M_J over the frames scored so far (per frame)."""
        return float(np.mean(self._ious)) if self._ious else float("nan")

    def result(self) -> dict:
        """``{"official": {...}, "per_frame": {...}}`` with M_J and M_F in [0, 1]."""
        batches = self._batches + ([self._open.scores()] if self._open.clips else [])
        if not batches:
            raise ValueError("no clips were scored")
        official = {"M_J": float(np.mean([b[0] for b in batches])), "M_F": float(np.mean([b[1] for b in batches])),
                    "clips_per_batch": self.clips_per_batch, "batches": len(batches)}
        per_frame = {"M_J": float(np.mean(self._ious)),
                     "M_F": float((self._curve_sum / self._curve_count).max()) if self._curve_count else 0.0,
                     "frames": len(self._ious), "frames_with_object": self._curve_count}
        return {"official": official, "per_frame": per_frame}


def semantic_frame_scores(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[np.ndarray, ...]:
    """Per-class IoU, F-score and occurrence (0/1) of one frame of class labels, as ``compute_color_metrics``."""
    _check_pair(pred, gt)
    pred, gt = np.asarray(pred).ravel(), np.asarray(gt).ravel()
    if pred.min(initial=0) < 0 or gt.min(initial=0) < 0 or max(pred.max(initial=0), gt.max(initial=0)) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes})")
    area_pred = np.bincount(pred, minlength=num_classes).astype(np.float64)
    area_gt = np.bincount(gt, minlength=num_classes).astype(np.float64)
    inter = np.bincount(gt[pred == gt], minlength=num_classes).astype(np.float64)
    union = area_pred + area_gt - inter
    iou = inter / (_SEMANTIC_EPS + union)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = inter / area_pred, inter / area_gt
        f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    return iou, np.nan_to_num(f, nan=0.0), (union > 0).astype(np.float64)


class SemanticMeter:
    """AVSS mIoU and F over ``num_classes`` classes (``compute_color_metrics.py``); batch-independent."""

    def __init__(self, num_classes: int = 71):
        self.num_classes = int(num_classes)
        self._sums = {k: np.zeros((3, self.num_classes)) for k in ("official", "per_frame")}
        self._padded = 0

    def add_clip(self, preds: np.ndarray, gts: np.ndarray, padded: int = 0) -> dict:
        """Score one clip's valid frames (``[frames, H, W]`` labels); ``padded`` = its zero-padding frames, which
        the official protocol scores as perfect class-0 frames. Returns the clip's own mIoU and F (valid frames)."""
        preds, gts = np.asarray(preds), np.asarray(gts)
        if preds.shape != gts.shape or preds.ndim != 3 or preds.shape[0] == 0:
            raise ValueError(f"predictions {preds.shape} and ground truth {gts.shape} must both be [frames, H, W]")
        clip = np.zeros((3, self.num_classes))
        for p, g in zip(preds, gts):
            clip += np.stack(semantic_frame_scores(p, g, self.num_classes))
        self._sums["per_frame"] += clip
        self._sums["official"] += clip
        self._sums["official"][:, 0] += padded  # IoU 1, F 1, one occurrence of class 0 per padded frame
        self._padded += int(padded)
        miou, f = self._means(clip, present_only=True)
        return {"mIoU": miou, "F": f}

    def _means(self, sums: np.ndarray, present_only: bool = False) -> tuple[float, float]:
        count = sums[2]
        with np.errstate(invalid="ignore", divide="ignore"):
            iou, f = np.nan_to_num(sums[0] / count), np.nan_to_num(sums[1] / count)
        if present_only:
            return float(iou[count > 0].mean()), float(f[count > 0].mean())
        return float(iou.mean()), float(f.mean())

    @property
    def running_mj(self) -> float:
        """mIoU over the valid frames scored so far."""
        return self._means(self._sums["per_frame"])[0] if self._sums["per_frame"][2].any() else float("nan")

    def result(self) -> dict:
        """``{"official": {...}, "per_frame": {...}}``: mIoU (M_J) and F (M_F) over the classes, in [0, 1]."""
        out = {}
        for key, sums in self._sums.items():
            if not sums[2].any():
                raise ValueError("no frames were scored")
            miou, f = self._means(sums)
            out[key] = {"M_J": miou, "M_F": f, "classes_present": int((sums[2] > 0).sum())}
        out["official"]["padded_frames"] = self._padded
        return out
