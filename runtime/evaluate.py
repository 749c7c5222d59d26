"""Evaluation on AVSBench as the papers do it: any predictor, the official readers, the official metrics.

A *predictor* maps a :class:`runtime.datasets.avsbench.Clip` to its real frames' scores: binary tasks give sigmoid
probabilities ``[frames, h, w]``, AVSS gives class labels ``[frames, h, w]``. Scores not at the 224 x 224 of the
masks are resized to it (bilinear probabilities, nearest labels). :func:`evaluate` runs one over a split and
returns the report ``avs-eval`` prints and writes; :func:`segmenter_predictor` is the artifact (through
``Segmenter.segment_log_mel``, the live code path), :func:`saved_predictor` reads saved maps (``--predictions``).
A Maskige model (COMBO) gets each frame's Maskige from its Segmenter's mask source; :class:`PublishedMaskiges`
(``--mask-source precomputed``) is the data set's own, the Maskiges COMBO was evaluated with.

Saved prediction format (``--predictions DIR``; ``--save-masks DIR`` writes PNGs in it): ``DIR/<clip>/<i>.npy``
or ``DIR/<clip>/<i>.png`` for frame i = 0, 1, ... of each clip (its real frames). Binary: ``.npy`` float
probabilities in [0, 1], ``.png`` grey levels read as value / 255 (0/255 masks give M_F on binary maps). AVSS:
``.npy`` integer class indices, ``.png`` colour maps in the AVSBench palette (as the official ``save_color_mask``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from runtime.datasets.avsbench import AVSS_FRAMES, MASK_SIZE, AVSBench, Clip, DatasetError, avss_palette
from runtime.mask_sources import MaskSource, maskige_path
from runtime.maskige import MASKIGE_SIZE, read_maskige
from runtime.metrics import OFFICIAL_CLIPS_PER_BATCH, BinaryMeter, SemanticMeter

__all__ = ["Predictor", "PublishedMaskiges", "evaluate", "segmenter_predictor", "saved_predictor", "save_prediction",
           "format_table", "format_precisions"]

Predictor = Callable[[Clip], np.ndarray]


def _to_mask_size(scores: np.ndarray, binary: bool) -> np.ndarray:
    if scores.shape[-2:] == (MASK_SIZE, MASK_SIZE):
        return scores
    if binary:
        return np.stack([cv2.resize(s.astype(np.float32), (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_LINEAR)
                         for s in scores])
    return np.stack([cv2.resize(s.astype(np.int32), (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_NEAREST_EXACT)
                     for s in scores]).astype(np.int64)


class PublishedMaskiges(MaskSource):
    """The data set's own Maskiges (COMBO's ``pre_SAM_mask/`` release, beside AVSBench's frames) of the clip chosen
    with :meth:`select`: the frame shown during second i (AVSBench frames are 1 s apart) gets the file
    :func:`runtime.mask_sources.maskige_path` pairs with the clip's i-th frame file.

    Args:
        size: side of the Maskiges returned (the model's input size).
    """

    def __init__(self, size: int = MASKIGE_SIZE):
        super().__init__(size)
        self._frames: tuple = ()

    def select(self, clip: Clip) -> None:
        """Read the Maskiges of ``clip``'s frames from now on."""
        if len(clip.frame_paths) != clip.num_frames:
            raise DatasetError(f"clip {clip.name} does not say which files its frames came from, so its published "
                               "Maskiges cannot be found; read it with runtime.datasets.avsbench.AVSBench")
        self._frames = tuple(clip.frame_paths)

    def maskige(self, frame_rgb: np.ndarray, timestamp: float) -> np.ndarray:
        index = math.floor(float(timestamp) + 1e-6)
        if not 0 <= index < len(self._frames):
            raise ValueError(f"no frame {index} (t = {timestamp:.3f} s) in the selected clip of {len(self._frames)} "
                             "frames; call select(clip) first")
        path = maskige_path(self._frames[index])
        if not path.is_file():
            raise DatasetError(f"missing Maskige {path} (the published Maskige of {self._frames[index]}): put COMBO's "
                               "pre_SAM_mask release beside the frames, or score with another --mask-source")
        try:
            return read_maskige(path, self.size)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None

    def describe(self) -> str:
        return "published Maskiges of the data set (pre_SAM_mask/ beside the frames, as COMBO was evaluated)"


def segmenter_predictor(segmenter) -> Predictor:
    """The artifact behind a ``runtime.Segmenter``: each clip through ``segment_log_mel`` (the live code path)."""

    def predict(clip: Clip) -> np.ndarray:
        if isinstance(segmenter.mask_source, PublishedMaskiges):
            segmenter.mask_source.select(clip)
        results = segmenter.segment_log_mel(clip.frames, clip.log_mel)
        if segmenter.binary:
            return np.stack([r.probabilities for r in results])
        return np.stack([r.probabilities.argmax(axis=0) for r in results])

    return predict


def saved_predictor(directory: Path, binary: bool, palette: Optional[np.ndarray] = None) -> Predictor:
    """Read saved maps (see the module docstring); a missing or unreadable file raises DatasetError naming it."""
    directory = Path(directory)
    keys = None if palette is None else (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]

    def one(path_stem: Path) -> np.ndarray:
        npy, png = path_stem.with_suffix(".npy"), path_stem.with_suffix(".png")
        if npy.is_file():
            try:
                value = np.load(npy, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DatasetError(f"cannot read prediction {npy}: {exc}") from None
            if value.ndim != 2:
                raise DatasetError(f"prediction {npy} has shape {list(value.shape)}, expected [H, W]")
            return value.astype(np.float32) if binary else value.astype(np.int64)
        if not png.is_file():
            raise DatasetError(f"missing prediction {npy} (or {png.name})")
        image = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE if binary else cv2.IMREAD_COLOR)
        if image is None:
            raise DatasetError(f"cannot decode prediction {png}")
        if binary:
            return image.astype(np.float32) / 255.0
        rgb = image[:, :, ::-1].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        lookup = {int(k): i for i, k in enumerate(keys)}
        unknown = set(np.unique(code).tolist()) - set(lookup)
        if unknown:
            raise DatasetError(f"prediction {png} has colours outside the AVSBench palette "
                               f"(e.g. #{min(unknown):06x}); save class maps as .npy instead")
        return np.vectorize(lookup.__getitem__, otypes=[np.int64])(code)

    def predict(clip: Clip) -> np.ndarray:
        return np.stack([one(directory / clip.name / str(i)) for i in range(clip.num_frames)])

    return predict


def save_prediction(directory: Path, clip: Clip, scores: np.ndarray, binary: bool,
                    palette: Optional[np.ndarray] = None) -> None:
    """Write a clip's masks as PNGs: binary 0/255 (prob > 0.5), AVSS colour maps in the AVSBench palette."""
    out = Path(directory) / clip.name
    out.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(scores):
        image = ((s > 0.5) * 255).astype(np.uint8) if binary else palette[s].astype(np.uint8)[:, :, ::-1]
        if not cv2.imwrite(str(out / f"{i}.png"), image):
            raise OSError(f"cannot write {out / f'{i}.png'}")


def evaluate(data: AVSBench, predict: Predictor, *, limit: Optional[int] = None, save_masks: Optional[Path] = None,
             clips_per_batch: Optional[int] = None, progress: bool = True, swap_audio: bool = False) -> dict:
    """Score ``predict`` on ``data``: ``{"metrics": {...}, "clips": [...], "seconds", "clips_per_second"}``, and for
    binary tasks ``"silence"``: the frames with an empty ground truth and the mean fraction of their pixels
    predicted (probability > 0.5).

    ``clips_per_batch`` groups clips for the official figures (default: the official test batch size).
    ``swap_audio`` gives each clip the audio (log-mel) of the clip before it, the first clip the last one's: a
    model that listens scores far lower so.
    """
    from tqdm import tqdm

    binary = data.task != "avss"
    batch = clips_per_batch or OFFICIAL_CLIPS_PER_BATCH[data.task]
    meter = BinaryMeter(batch) if binary else SemanticMeter(len(data.class_names))
    palette = None if binary else avss_palette(len(data.class_names))
    count = len(data) if limit is None else min(limit, len(data))
    if count == 0:
        raise DatasetError(f"{data.root}: the {data.split} split has no clips")
    if swap_audio and count < 2:
        raise DatasetError(f"--swap-audio needs at least 2 clips; {data.root} {data.split} gives {count}")
    previous = data[count - 1].log_mel if swap_audio else None
    silent_areas: list[float] = []
    clips, start = [], time.perf_counter()
    bar = tqdm(range(count), desc=f"{data.task} {data.split}", unit="clip", disable=not progress)
    for index in bar:
        clip = data[index]
        if swap_audio:
            previous, clip = clip.log_mel, dataclasses.replace(clip, log_mel=previous)
        scores = np.asarray(predict(clip))
        if scores.ndim != 3 or len(scores) != clip.num_frames:
            raise ValueError(f"the predictor gave {list(scores.shape)} for clip {clip.name}; expected "
                             f"[{clip.num_frames}, H, W]")
        scores = _to_mask_size(scores, binary)
        if save_masks is not None:
            save_prediction(save_masks, clip, scores, binary, palette)
        if binary:
            silent_areas += [float((s > 0.5).mean()) for s, g in zip(scores, clip.masks) if not g.any()]
            own = meter.add_clip(scores[:len(clip.masks)], clip.masks)
            own.pop("frame_iou")
        else:
            n = clip.num_frames
            own = meter.add_clip(scores, clip.masks[:n], padded=AVSS_FRAMES - n)
        clips.append({"name": clip.name, "category": clip.category, **own})
        bar.set_postfix_str(f"M_J {meter.running_mj:.4f}")
    seconds = time.perf_counter() - start
    report = {"task": data.task, "split": data.split, "clips_evaluated": count, "clips_in_split": len(data),
              "swap_audio": swap_audio, "metrics": meter.result(), "clips": clips, "seconds": seconds,
              "clips_per_second": count / seconds if seconds > 0 else math.inf}
    if binary:
        report["silence"] = {"frames": len(silent_areas),
                             "mean_area": float(np.mean(silent_areas)) if silent_areas else None}
    return report


def format_table(report: dict) -> str:
    """The metrics as a small text table (percent, as the papers print them)."""
    m = report["metrics"]
    off, per = m["official"], m["per_frame"]
    if report["task"] == "avss":
        official = f"official (all 10 slots, {off['padded_frames']} padded frames scored)"
        variant = "valid frames only"
    else:
        official = f"official ({off['clips_per_batch']} clips per batch, {off['batches']} batches)"
        variant = "per frame (no batches)"
    width = max(len(official), len(variant))
    lines = [f"{report['task'].upper()} {report['split']}: {report['clips_evaluated']} of "
             f"{report['clips_in_split']} clips",
             f"{'protocol':<{width}}  {'M_J':>6}  {'M_F':>6}"]
    for label, row in ((official, off), (variant, per)):
        lines.append(f"{label:<{width}}  {100 * row['M_J']:6.2f}  {100 * row['M_F']:6.2f}")
    if report.get("swap_audio"):
        lines.append("(audio swapped: each clip heard the clip before it)")
    if report.get("mask_source"):
        lines.append(f"Maskiges: {report['mask_source']['description']}")
    silence = report.get("silence")
    if silence and silence["frames"]:
        lines.append(f"silent frames (empty ground truth): {silence['frames']}, mean predicted area "
                     f"{100 * silence['mean_area']:.2f} % of the frame")
    return "\n".join(lines)


def format_precisions(report: dict, precision: str) -> str:
    """A reduced precision's official figures next to fp32's on the same clips (``report["fp32"]``), with time."""
    rows = [(precision, report["metrics"]["official"], report["seconds"]),
            ("fp32", report["fp32"]["metrics"]["official"], report["fp32"]["seconds"])]
    lines = [f"{'precision':<10} {'M_J':>6} {'M_F':>6} {'seconds':>8}"]
    lines += [f"{name:<10} {100 * m['M_J']:6.2f} {100 * m['M_F']:6.2f} {sec:8.1f}" for name, m, sec in rows]
    delta = rows[0][1]["M_J"] - rows[1][1]["M_J"]
    lines.append(f"{precision} - fp32: M_J {100 * delta:+.2f} points (official protocol)")
    return "\n".join(lines)
