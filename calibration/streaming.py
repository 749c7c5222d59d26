"""Clips through an artifact's streaming graphs, as the runtime runs them, recording what each graph receives.

:func:`run_clips` drives a ``runtime.Segmenter`` (``segment_log_mel``, the live code path) over clips with any set of
graphs (fp32, candidate INT8 or fp16-emulated ones) and returns the decoder's logits per frame, the feeds of the
graphs asked for (the tensors each graph really receives: INT8 ranges are calibrated on them), and the metrics
``avs-eval`` would print when the clips have ground truth.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from calibration.data import ClipList
from runtime.backends import STREAMING_ROLES
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.evaluate import evaluate, segmenter_predictor
from runtime.manifest import GraphSpec, Manifest
from runtime.metrics import mask_agreement
from runtime.segmenter import Segmenter

__all__ = ["Run", "run_clips", "candidate_specs", "compare"]


class _RecordingRunner:
    """A runner that keeps a copy of every feed (when asked) and of every output named in ``keep``."""

    def __init__(self, inner, feeds: Optional[list], outputs: Optional[list]):
        self.inner, self.feeds, self.outputs = inner, feeds, outputs
        self.role, self.spec = inner.role, inner.spec

    @property
    def inference_time(self) -> float:
        return self.inner.inference_time

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.inner.infer(feeds)
        if self.feeds is not None:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        if self.outputs is not None:
            self.outputs.append(next(iter(result.values())).copy())
        return result


class _RecordingBackend:
    """ONNX Runtime sessions of the streaming graphs, recording feeds of ``record`` roles and the decoder's logits."""
    name = "onnxruntime"

    def __init__(self, inner: OnnxRuntimeBackend, record: Sequence[str]):
        self.inner, self.precision = inner, inner.precision
        self.description = inner.description
        self.feeds = {role: [] for role in record}
        self.logits: list[np.ndarray] = []
        self._runners = {role: _RecordingRunner(inner.runner(role), self.feeds.get(role),
                                                self.logits if role == "decoder" else None)
                         for role in STREAMING_ROLES}

    def runner(self, role: str) -> _RecordingRunner:
        return self._runners[role]

    def close(self) -> None:
        self.inner.close()


@dataclass
class Run:
    """One pass over clips: logits ``[frames, C, H, W]``, recorded feeds by role, and the metrics when scored."""
    logits: np.ndarray
    feeds: dict[str, list[dict[str, np.ndarray]]]
    metrics: dict[str, float]
    frames: int


def candidate_specs(manifest: Manifest, files: dict[str, Path]) -> dict[str, GraphSpec]:
    """Graph specs for candidate graph files (role -> path): the fp32 tensors, another file."""
    return {role: dataclasses.replace(manifest.graph(role), file=str(Path(path).resolve()), sha256="",
                                      external_data=None) for role, path in files.items()}


def run_clips(artifact_dir: Path, manifest: Manifest, clips: ClipList, *, graphs: Optional[dict[str, Path]] = None,
              precision: str = "fp32", record: Sequence[str] = ()) -> Run:
    """Stream every clip through the artifact's graphs (``graphs`` replaces some by role) on ONNX Runtime's CPU."""
    specs = {role: manifest.graph(role) for role in STREAMING_ROLES}      # fp32 where no candidate is given
    specs.update(candidate_specs(manifest, graphs or {}))
    inner = OnnxRuntimeBackend(artifact_dir, manifest, STREAMING_ROLES, providers=["CPUExecutionProvider"],
                               precision=precision, graphs=specs)
    backend = _RecordingBackend(inner, record)
    metrics: dict[str, float] = {}
    with Segmenter(artifact_dir, backend=backend, say=lambda line: None) as segmenter:
        if clips.has_ground_truth:
            official = evaluate(clips, segmenter_predictor(segmenter), progress=False)["metrics"]["official"]
            metrics = {"M_J": float(official["M_J"]), "M_F": float(official["M_F"])}
        else:
            for clip in clips.clips:
                segmenter.segment_log_mel(clip.frames, clip.log_mel)
    logits = np.concatenate(backend.logits) if backend.logits else np.zeros((0,))
    return Run(logits=logits, feeds=backend.feeds, metrics=metrics, frames=len(backend.logits))


def foreground_iou(candidate: np.ndarray, reference: np.ndarray, kind: str) -> float:
    """Mean per-frame IoU of the foreground of two logits arrays ``[N, C, H, W]``: pixels that either marks as
    foreground (binary ``logit > 0``; semantic: argmax not background), counted as shared where both give the same
    label. A frame empty in both counts 1. This follows M_J, which a pixel agreement over mostly-background frames
    hides."""
    if kind == "binary":
        a, b = candidate[:, 0] > 0, reference[:, 0] > 0
        shared = a & b
    else:
        la, lb = candidate.argmax(axis=1), reference.argmax(axis=1)
        a, b = la != 0, lb != 0
        shared = a & b & (la == lb)
    union = (a | b).sum(axis=(1, 2))
    return float(np.mean(np.where(union > 0, shared.sum(axis=(1, 2)) / np.maximum(union, 1), 1.0)))


def compare(candidate: Run, reference: Run, kind: str) -> tuple[float, float, float]:
    """``(mask agreement, relative mean logits error, foreground IoU)`` of a candidate run against the fp32 run of
    the same clips."""
    diff = np.abs(candidate.logits.astype(np.float64) - reference.logits)
    error = float(diff.mean() / (float(np.abs(reference.logits).mean()) or 1.0)) if np.isfinite(diff).all() \
        else float("inf")
    return (mask_agreement(candidate.logits, reference.logits, kind), error,
            foreground_iou(candidate.logits, reference.logits, kind))
