"""FP16 sensitivity check in ONNX Runtime: which parts of a graph must stay fp32 in an fp16 TensorRT engine.

Method (``fp16-storage emulation``): the fp32 graph is rewritten so that chosen nodes see fp16 numbers: their
float weights are rounded to fp16 and each of their float outputs passes through ``Cast(fp16) -> Cast(fp32)``
(ONNX Runtime keeps such pairs), while the math itself stays fp32, much as TensorRT's fp16 kernels store fp16
and accumulate in fp32. Nodes are grouped by the PyTorch module that produced them (the exporter's name scopes).
If the whole graph but the scan fits the budget in fp16, that is the answer. Otherwise each top-level group
(``START_DEPTH`` path components) is put alone in fp16 and its error measured on the logits; a group over the
budget is split into its sub-modules, measured in turn (down to ``MAX_DEPTH``), so only the sensitive parts stay
fp32, as does the selective scan always (fp32 state by contract). A final run with every other group in fp16
gives the error of the recommended mixed-precision engine; should it exceed the budget, the worst groups go
back to fp32 until it fits.

Error = mean |logits_fp16 - logits_fp32| / mean |logits_fp32| (robust to the few pixels where a hard token
assignment flips; ``OVERFLOW`` = 1e30 when fp16 overflows); the report also gives the mixed engine's mask
agreement.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnx
import onnxruntime as ort

from calibration.groups import SCAN_GROUP, Group, emulate_fp16, members, module_path, sweep, value_types
from runtime.manifest import Fp16Report
from runtime.metrics import mask_agreement

__all__ = ["METHOD", "DEFAULT_BUDGET", "OVERFLOW", "fp16_sensitivity", "module_path"]

METHOD = ("fp16-storage emulation in ONNX Runtime (weights and activations rounded to fp16, fp32 math); "
          "error = mean |logits_fp16 - logits_fp32| / mean |logits_fp32|")
DEFAULT_BUDGET = 0.01
OVERFLOW = 1e30             # the error recorded when fp16 overflows to inf or NaN


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], output: str, session_options) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), session_options, providers=["CPUExecutionProvider"])
    return session.run([output], {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def _error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Relative mean error; ``OVERFLOW`` when fp16 produced inf or NaN (JSON has no infinity)."""
    diff = np.abs(candidate.astype(np.float64) - reference)
    if not np.isfinite(diff).all():
        return OVERFLOW
    return min(float(diff.mean() / (float(np.abs(reference).mean()) or 1.0)), OVERFLOW)


def fp16_sensitivity(graphs: dict[str, Path], analyse: str, feeds: dict[str, np.ndarray], *, kind: str,
                     budget: float = DEFAULT_BUDGET, output: str = "logits", say: Callable[[str], None] = print,
                     session_options: Optional[ort.SessionOptions] = None) -> Fp16Report:
    """Decide which module groups of ``graphs[analyse]`` stay fp32 (see module docstring and
    :func:`calibration.groups.sweep`).

    Every graph in ``graphs`` (role -> ONNX path) gets its node list for the groups kept fp32, so all engines of
    an artifact keep the same modules in fp32. When the graph holds ``avs`` nodes, ``session_options`` must
    already have our custom-op library registered.
    """
    path = graphs[analyse]
    model = onnx.load(str(path))
    options = session_options or ort.SessionOptions()
    options.log_severity_level = 3
    types = value_types(model)
    paths = [module_path(n) for n in model.graph.node]
    reference = _run(model, feeds, output, options)

    def logits_of(fp16_groups: list[Group]) -> np.ndarray:
        return _run(emulate_fp16(model, members(model, fp16_groups), types), feeds, output, options)

    found = sweep([p for p in paths if p != SCAN_GROUP], lambda groups: _error(logits_of(groups), reference),
                  budget, what=f"fp16 check of {path.name}", say=say)
    keep = sorted(set(found.keep) | ({SCAN_GROUP} & set(paths)))
    nodes = {}
    for role, other in graphs.items():
        proto = model if role == analyse else onnx.load(str(other), load_external_data=False)
        fp16_nodes = set(members(proto, found.reduced))
        nodes[role] = sorted(n.name for n in proto.graph.node if n.name not in fp16_nodes)
    report = Fp16Report(graph=path.name, method=METHOD, budget=budget, group_errors=found.errors,
                        keep_fp32_groups=keep, keep_fp32_nodes=nodes, all_fp16_error=found.all_error,
                        mixed_error=found.mixed_error,
                        mixed_mask_agreement=mask_agreement(logits_of(found.reduced), reference, kind))
    say(f"  all-fp16 error {found.all_error:.3g}; keep fp32: {', '.join(keep) or 'nothing'}; "
        f"mixed error {found.mixed_error:.3g}, mask agreement {100 * report.mixed_mask_agreement:.3f}%")
    return report
