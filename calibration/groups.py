"""ONNX nodes grouped by the PyTorch module that made them, and the sensitivity sweep over those groups.

The exporter records each node's module path (``pkg.torch.onnx.name_scopes``), e.g.
``selm.decoder.cgattention1.norm_v``. A reduced precision (fp16, int8) is tried on whole groups of nodes at a time:
:func:`sweep` finds the groups that must stay fp32 for a measured error to stay within a budget, refining a
sensitive group into its sub-modules. The selective scan is never reduced (fp32 state by contract).
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import onnx
from onnx import numpy_helper
from tqdm import tqdm

from plugins import scan_contract

START_DEPTH = 2
MAX_DEPTH = 4
SCAN_GROUP = "selective_scan"
TOP_GROUP = "(graph)"
_SCAN_OP = (scan_contract.DOMAIN, scan_contract.OP_TYPE)
_SCAN_NAMESPACE = "avs.selective_scan"
_FLOATS = (onnx.TensorProto.FLOAT,)

Group = tuple[str, int]   # (group path, depth)


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


def members(model: onnx.ModelProto, groups: Iterable[Group], prefix: str = "") -> list[str]:
    """Names of the nodes of ``model`` in any of ``groups``; node paths are read as ``prefix + module_path``."""
    chosen = set(groups)
    depths = {d for _, d in chosen}
    return [n.name for n in model.graph.node
            if any((group_at(prefix + module_path(n), d), d) in chosen for d in depths)]


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value in ``model`` that shape inference can type."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    return {v.name: v.type.tensor_type.elem_type for v in values}


def emulate_fp16(model: onnx.ModelProto, fp16_nodes: Iterable[str],
                 types: Optional[dict[str, int]] = None) -> onnx.ModelProto:
    """A copy of ``model`` in which the nodes named ``fp16_nodes`` read fp16-rounded weights and write fp16 values
    (``Cast(fp16) -> Cast(fp32)`` after each float output; the math stays fp32, as TensorRT's fp16 kernels store
    fp16 and accumulate in fp32)."""
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


def _children(paths: list[str], group: str, depth: int) -> list[str]:
    """Sub-groups at ``depth`` of the group ``group`` (at ``depth - 1``); ``group`` itself stands for its own ops."""
    return sorted({group_at(p, depth) for p in paths if group_at(p, depth - 1) == group})


@dataclass
class SweepResult:
    """What :func:`sweep` found: the groups to reduce, the groups kept fp32, and the errors it measured."""
    reduced: list[Group]
    keep: list[str]
    errors: dict[str, float]
    all_error: float
    mixed_error: float


def sweep(paths: list[str], error_of: Callable[[list[Group]], float], budget: float, *, what: str,
          say: Callable[[str], None] = print) -> SweepResult:
    """Which module groups may run in the reduced precision with the error ``error_of(groups)`` within ``budget``.

    ``paths`` are the module paths of the nodes that may be reduced (the scan left out by the caller). Everything
    reduced at once is tried first; over budget, each group at ``START_DEPTH`` is reduced alone and a group over
    budget is split into its sub-modules (down to ``MAX_DEPTH``), where one that cannot be split stays fp32. A
    last run reduces every group found harmless; should it exceed the budget, the worst groups go back to fp32
    until it fits.
    """
    everything = [(g, 1) for g in sorted({group_at(p, 1) for p in paths})]
    all_error = error_of(everything)
    if all_error <= budget:
        say(f"{what}: everything but the scan reduced: error {all_error:.3g} <= budget {budget:g}")
        return SweepResult(everything, [], {}, all_error, all_error)
    pending = [(g, START_DEPTH) for g in sorted({group_at(p, START_DEPTH) for p in paths})]
    say(f"{what}: everything reduced: error {all_error:.3g} > budget {budget:g}; testing {len(pending)} module "
        "groups alone (refined where sensitive)")
    errors: dict[str, float] = {}
    labels: dict[Group, str] = {}
    reduced: list[Group] = []
    keep: list[str] = []
    with tqdm(desc=f"{what} sensitivity", unit="group", leave=False, disable=None) as bar:
        while pending:
            group, depth = pending.pop(0)
            label = labels[(group, depth)] = group if group not in errors else f"{group} (own ops)"
            errors[label] = error_of([(group, depth)])
            bar.update()
            if errors[label] <= budget:
                reduced.append((group, depth))
                continue
            children = _children(paths, group, depth + 1) if depth < MAX_DEPTH else [group]
            if children == [group]:         # nothing finer to try: the group stays fp32
                keep.append(group)
            else:                           # its sub-modules (and its own ops, as `group`) one level down
                pending += [(child, depth + 1) for child in children]
    mixed_error = error_of(reduced)
    for group in sorted(reduced, key=lambda g: errors[labels[g]], reverse=True):
        if mixed_error <= budget:
            break
        reduced.remove(group)
        keep.append(group[0])
        mixed_error = error_of(reduced)
    return SweepResult(reduced, sorted(set(keep)), errors, all_error, mixed_error)
