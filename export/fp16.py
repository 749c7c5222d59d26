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

import ast
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from tqdm import tqdm

from export.validate import mask_agreement
from plugins import scan_contract
from runtime.manifest import Fp16Report

METHOD = ("fp16-storage emulation in ONNX Runtime (weights and activations rounded to fp16, fp32 math); "
          "error = mean |logits_fp16 - logits_fp32| / mean |logits_fp32|")
DEFAULT_BUDGET = 0.01
OVERFLOW = 1e30             # the error recorded when fp16 overflows to inf or NaN
START_DEPTH = 2
MAX_DEPTH = 4
SCAN_GROUP = "selective_scan"
TOP_GROUP = "(graph)"
_SCAN_OP = (scan_contract.DOMAIN, scan_contract.OP_TYPE)
_SCAN_NAMESPACE = "avs.selective_scan"
_FLOATS = (onnx.TensorProto.FLOAT,)


def _meta(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def is_scan_node(node: onnx.NodeProto) -> bool:
    """The selective scan: our custom node, or a node of its stock-op lowering (by the exporter's namespace)."""
    return (node.domain, node.op_type) == _SCAN_OP or _SCAN_NAMESPACE in _meta(node).get("namespace", "")


def module_path(node: onnx.NodeProto) -> str:
    """The PyTorch module that produced ``node`` ('selm.decoder.cgattention1.norm_v'); scan and top-level apart."""
    if is_scan_node(node):
        return SCAN_GROUP
    scopes = _meta(node).get("pkg.torch.onnx.name_scopes")
    modules = [s for s in ast.literal_eval(scopes)[1:-1] if s] if scopes else []
    return max(modules, key=len) if modules else TOP_GROUP


def group_at(path: str, depth: int) -> str:
    """``path`` cut after ``depth`` named components; indices ride along but do not count, nor end a group.

    'selm.BCSM.video_encoder.0.layers.1.norm' at depth 4 -> 'selm.BCSM.video_encoder.0.layers';
    'vggish.features.3' at depth 3 -> 'vggish.features'.
    """
    if path in (SCAN_GROUP, TOP_GROUP):
        return path
    parts, named = [], 0
    for part in path.split("."):
        if named == depth and not part.isdigit():
            break
        parts.append(part)
        named += not part.isdigit()
    while len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    return ".".join(parts)


def groups_of(model: onnx.ModelProto, depth: int = START_DEPTH) -> dict[str, list[str]]:
    """Node names per group at ``depth``, in graph order."""
    groups: dict[str, list[str]] = {}
    for node in model.graph.node:
        groups.setdefault(group_at(module_path(node), depth), []).append(node.name)
    return groups


def members(model: onnx.ModelProto, groups: Iterable[tuple[str, int]]) -> list[str]:
    """Names of the nodes in any of ``groups``, each given as ``(name, depth)`` (see :func:`group_at`)."""
    chosen = set(groups)
    depths = {d for _, d in chosen}
    return [n.name for n in model.graph.node
            if any((group_at(module_path(n), d), d) in chosen for d in depths)]


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value in ``model`` that shape inference can type."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


def emulate_fp16(model: onnx.ModelProto, fp16_nodes: Iterable[str],
                 types: Optional[dict[str, int]] = None) -> onnx.ModelProto:
    """A copy of ``model`` in which the nodes named ``fp16_nodes`` read fp16-rounded weights and write fp16 values."""
    elem = types if types is not None else value_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    chosen = set(fp16_nodes)
    graph = out.graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.name)
    for init in graph.initializer:
        users = consumers.get(init.name, set())
        if init.data_type in _FLOATS and users and users <= chosen:
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(arr.astype(np.float16).astype(np.float32), init.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.name not in chosen:
            continue
        for i, name in enumerate(node.output):
            if not name or elem.get(name) not in _FLOATS:
                continue
            raw, half = f"{name}__fp32", f"{name}__fp16"
            node.output[i] = raw
            nodes.append(onnx.helper.make_node("Cast", [raw], [half], to=onnx.TensorProto.FLOAT16,
                                               name=f"{node.name}__out{i}__to_fp16"))
            nodes.append(onnx.helper.make_node("Cast", [half], [name], to=onnx.TensorProto.FLOAT,
                                               name=f"{node.name}__out{i}__to_fp32"))
    del graph.node[:]
    graph.node.extend(nodes)
    return out


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], output: str, session_options) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), session_options, providers=["CPUExecutionProvider"])
    return session.run([output], {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def _error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """Relative mean error; ``OVERFLOW`` when fp16 produced inf or NaN (JSON has no infinity)."""
    diff = np.abs(candidate.astype(np.float64) - reference)
    if not np.isfinite(diff).all():
        return OVERFLOW
    return min(float(diff.mean() / (float(np.abs(reference).mean()) or 1.0)), OVERFLOW)


def _children(paths: list[str], group: str, depth: int) -> list[str]:
    """Sub-groups at ``depth`` of the group ``group`` (at ``depth - 1``); ``group`` itself stands for its own ops."""
    return sorted({group_at(p, depth) for p in paths if group_at(p, depth - 1) == group})


def fp16_sensitivity(graphs: dict[str, Path], analyse: str, feeds: dict[str, np.ndarray], *, kind: str,
                     budget: float = DEFAULT_BUDGET, output: str = "logits", say: Callable[[str], None] = print,
                     session_options: Optional[ort.SessionOptions] = None) -> Fp16Report:
    """Decide which module groups of ``graphs[analyse]`` stay fp32 (see module docstring).

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

    def error_of(fp16_groups: list[tuple[str, int]]) -> tuple[float, np.ndarray]:
        got = _run(emulate_fp16(model, members(model, fp16_groups), types), feeds, output, options)
        return _error(got, reference), got

    everything = [(g, 1) for g in sorted({group_at(p, 1) for p in paths} - {SCAN_GROUP})]
    all_fp16, mixed = error_of(everything)
    errors: dict[str, float] = {}
    labels: dict[tuple[str, int], str] = {}
    fp16, keep = [], [SCAN_GROUP] if SCAN_GROUP in paths else []
    if all_fp16 <= budget:
        say(f"fp16 check of {path.name}: everything but the scan in fp16: error {all_fp16:.3g} <= budget {budget:g}")
        fp16, mixed_error = everything, all_fp16
        pending = []
    else:
        pending = [(g, START_DEPTH) for g in sorted({group_at(p, START_DEPTH) for p in paths}) if g != SCAN_GROUP]
        say(f"fp16 check of {path.name}: all-fp16 error {all_fp16:.3g} > budget {budget:g}; testing "
            f"{len(pending)} module groups alone (refined where sensitive)")
    with tqdm(desc="fp16 sensitivity", unit="group", leave=False, disable=None) as bar:
        while pending:
            group, depth = pending.pop(0)
            label = labels[(group, depth)] = group if group not in errors else f"{group} (own ops)"
            errors[label] = error_of([(group, depth)])[0]
            bar.update()
            if errors[label] <= budget:
                fp16.append((group, depth))
                continue
            children = _children(paths, group, depth + 1) if depth < MAX_DEPTH else [group]
            if children == [group]:         # nothing finer to try: the group stays fp32
                keep.append(group)
            else:                           # its sub-modules (and its own ops, as `group`) one level down
                pending += [(child, depth + 1) for child in children]
    if errors:
        mixed_error, mixed = error_of(fp16)
        for group in sorted(fp16, key=lambda g: errors[labels[g]], reverse=True):
            if mixed_error <= budget:
                break
            fp16.remove(group)
            keep.append(group[0])
            mixed_error, mixed = error_of(fp16)
    keep = sorted(set(keep))
    nodes = {}
    for role, other in graphs.items():
        proto = model if role == analyse else onnx.load(str(other), load_external_data=False)
        fp16_nodes = set(members(proto, fp16))
        nodes[role] = sorted(n.name for n in proto.graph.node if n.name not in fp16_nodes)
    report = Fp16Report(graph=path.name, method=METHOD, budget=budget, group_errors=errors,
                        keep_fp32_groups=keep, keep_fp32_nodes=nodes, all_fp16_error=all_fp16,
                        mixed_error=mixed_error, mixed_mask_agreement=mask_agreement(mixed, reference, kind))
    say(f"  all-fp16 error {all_fp16:.3g}; keep fp32: {', '.join(keep) or 'nothing'}; "
        f"mixed error {mixed_error:.3g}, mask agreement {100 * report.mixed_mask_agreement:.3f}%")
    return report
