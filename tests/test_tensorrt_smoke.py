"""CI smoke: the exported lowered-scan graphs parse and build in TensorRT-RTX, so they hold no op TensorRT rejects.

TensorRT-RTX (``pip install tensorrt-rtx``) runs its ONNX parser and builder without a GPU; full TensorRT cannot be
installed on CI machines. The graphs come from the session's one ``python -m export.build_engine`` run (``artifact`` in tests/conftest.py).
"""
from __future__ import annotations

import io

import onnx
import pytest
from onnx import TensorProto, helper

from export.engine import BuildOptions, BuildProgress, EngineBuildError, build_serialized_engine
from plugins.scan_contract import DOMAIN, INPUT_NAMES, OP_TYPE, OPSET_VERSION, REQUIRED_INPUTS, node_attributes

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx)")


def _build(path) -> tuple[bytes, BuildProgress]:
    progress = BuildProgress(path.stem, stream=io.StringIO(), enabled=False)
    return build_serialized_engine(trt, path, BuildOptions(workspace_gb=1), progress, say=lambda _: None), progress


def test_full_graph_with_lowered_scan_builds(artifact):
    path = artifact / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    assert not [n for n in graph.node if n.domain not in ("", "ai.onnx")]          # stock ops only
    plan, progress = _build(path)
    assert len(plan) > 1_000_000 and "Building engine" in progress.phases_seen


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["encoder", "temporal", "decoder"])
def test_streaming_graphs_build(artifact, graph):
    plan, _ = _build(artifact / f"{graph}.onnx")
    assert len(plan) > 100_000


def test_scan_node_is_looked_up_as_our_plugin(tmp_path):
    """An ``avs::SelectiveScan`` node reaches TensorRT's plugin lookup; without our library the error says why."""
    names = list(INPUT_NAMES[:REQUIRED_INPUTS])
    shapes = {"u": [1, 8, 5], "delta": [1, 8, 5], "A": [8, 4], "B": [1, 4, 5], "C": [1, 4, 5]}
    node = helper.make_node(OP_TYPE, names, ["y"], domain=DOMAIN, name="scan0", **node_attributes(True))
    graph = helper.make_graph([node], "scan", [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[n])
                                               for n in names],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 5])])
    path = tmp_path / "scan.onnx"
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, OPSET_VERSION)]
    onnx.save(helper.make_model(graph, opset_imports=opsets, ir_version=10), path)
    with pytest.raises(EngineBuildError) as info:
        _build(path)
    message = str(info.value)
    assert f"node scan0 ({OP_TYPE})" in message and "Plugin not found" in message
    assert "--plugin-lib" in message and "--scan lowered" in message
