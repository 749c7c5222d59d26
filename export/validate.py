"""Export-time validation: every graph in ONNX Runtime against PyTorch, and the streaming split against the full graph.

Outputs are compared with Polygraphy's comparator (an element fails when it exceeds both ``atol`` and ``rtol``);
each comparison also reports the max/mean absolute difference and, for logits, the mask agreement: binary models
``sigmoid > 0.5`` (i.e. ``logit > 0``), semantic models the per-pixel argmax over classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnxruntime as ort

from export.onnx_export import GraphDef, run_torch, uses_custom_ops
from runtime.manifest import ValidationRecord
from runtime.metrics import mask_agreement

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3


class ValidationError(RuntimeError):
    """A graph disagrees with its reference beyond tolerance; the message carries the figures."""


def session_options(path: Path) -> ort.SessionOptions:
    """Quiet session options, with our custom-op library registered when the graph at ``path`` has ``avs`` nodes."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if uses_custom_ops(path):
        import plugins

        options.register_custom_ops_library(plugins.ort_library_path())
    return options


def ort_session(path: Path) -> ort.InferenceSession:
    """A CPU ONNX Runtime session for ``path`` (see :func:`session_options`)."""
    return ort.InferenceSession(str(path), session_options(path), providers=["CPUExecutionProvider"])


def run_ort(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Named outputs of ``session`` for the inputs it declares (extra entries in ``feeds`` are ignored)."""
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})
    return dict(zip(names, values))


def compare_outputs(candidate: dict[str, np.ndarray], reference: dict[str, np.ndarray], *, graph: str,
                    candidate_name: str, reference_name: str, atol: float, rtol: float, kind: str,
                    seed: int) -> ValidationRecord:
    """Compare every output ``reference`` has; a :class:`ValidationRecord` with the verdict and figures."""
    from polygraphy.comparator import Comparator, IterationResult, RunResults, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise ValidationError(f"{graph}: {candidate_name} lacks outputs {missing}")
    cand = {name: candidate[name] for name in reference}
    shapes = {n: (cand[n].shape, reference[n].shape) for n in reference if cand[n].shape != reference[n].shape}
    if shapes:
        raise ValidationError(f"{graph}: output shapes differ ({candidate_name} vs {reference_name}): {shapes}")
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        results = RunResults([(candidate_name, [IterationResult(cand, runner_name=candidate_name)]),
                              (reference_name, [IterationResult(reference, runner_name=reference_name)])])
        passed = bool(Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(atol=atol, rtol=rtol)))
    finally:
        G_LOGGER.module_severity = severity
    diffs = [np.abs(cand[n].astype(np.float64) - reference[n]) for n in reference]
    logits = "logits" in reference
    return ValidationRecord(
        graph=graph, candidate=candidate_name, reference=reference_name,
        max_abs_diff=float(max(d.max() for d in diffs)),
        mean_abs_diff=float(sum(d.sum() for d in diffs) / sum(d.size for d in diffs)),
        mask_agreement=mask_agreement(cand["logits"], reference["logits"], kind) if logits else None,
        atol=atol, rtol=rtol, passed=passed, seed=seed)


def describe(record: ValidationRecord) -> str:
    """One line: verdict and figures."""
    mask = "" if record.mask_agreement is None else f", mask agreement {100 * record.mask_agreement:.3f}%"
    verdict = "ok" if record.passed else f"FAILED (atol {record.atol:g}, rtol {record.rtol:g})"
    return (f"{record.graph}: {record.candidate} vs {record.reference}: max abs diff {record.max_abs_diff:.3g}, "
            f"mean {record.mean_abs_diff:.3g}{mask}: {verdict}")


def streaming_outputs(sessions: dict[str, ort.InferenceSession], clip: dict[str, np.ndarray],
                      decode_index: int) -> dict[str, np.ndarray]:
    """The split graphs as the runtime runs them: encoder per frame, temporal on the window, one frame decoded."""
    frames = clip["frames"].shape[0]
    per_frame = [run_ort(sessions["encoder"], {("frame" if name == "frames" else name): value[t:t + 1]
                                               for name, value in clip.items()})
                 for t in range(frames)]
    window = {i.name: np.concatenate([f[i.name] for f in per_frame]) for i in sessions["temporal"].get_inputs()}
    shared = run_ort(sessions["temporal"], window)
    pick = slice(decode_index, decode_index + 1)
    feeds = {}
    for spec in sessions["decoder"].get_inputs():    # temporal rows, else the decoded frame's encoder outputs
        name = spec.name
        feeds[name] = (shared[name][pick] if name in shared else per_frame[decode_index][name] if name in
                       per_frame[decode_index] else clip[name][pick])
    return run_ort(sessions["decoder"], feeds)


def validate_export(defs: dict[str, GraphDef], paths: dict[str, Path], inputs: dict[str, dict[str, np.ndarray]],
                    *, kind: str, atol: float, rtol: float, seed: int,
                    say: Callable[[str], None] = print) -> list[ValidationRecord]:
    """Every graph in ONNX Runtime vs PyTorch, then the streaming split vs the full graph (newest frame)."""
    sessions = {role: ort_session(path) for role, path in paths.items()}
    records = []
    full_ort: Optional[dict[str, np.ndarray]] = None
    for role, gdef in defs.items():
        say(f"validating {gdef.file}: ONNX Runtime vs PyTorch ...")
        got = run_ort(sessions[role], inputs[role])
        if role == "full":
            full_ort = got
        record = compare_outputs(got, run_torch(gdef, inputs[role]), graph=role, candidate_name="onnxruntime",
                                 reference_name="pytorch", atol=atol, rtol=rtol, kind=kind, seed=seed)
        say("  " + describe(record))
        records.append(record)
    newest = inputs["full"]["frames"].shape[0] - 1
    say("validating the streaming split: encoder per frame + temporal on the window + decoder on the newest frame ...")
    split = streaming_outputs(sessions, inputs["full"], newest)
    record = compare_outputs(split, {"logits": full_ort["logits"][newest:newest + 1]}, graph="streaming",
                             candidate_name="onnxruntime split", reference_name="onnxruntime full",
                             atol=atol, rtol=rtol, kind=kind, seed=seed)
    say("  " + describe(record))
    records.append(record)
    return records
