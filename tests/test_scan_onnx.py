"""Export of ``avs::selective_scan``: the custom node (run by our ONNX Runtime library) and the stock-op lowering."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import plugins
from export.ops.selective_scan import selective_scan
from export.ops.selective_scan_onnx import MAX_LOWERED_LENGTH, onnx_translation_table
from plugins.scan_contract import DOMAIN, OP_TYPE, node_attributes
from tests.scan_grid import make_inputs


class ScanModule(torch.nn.Module):
    """A scan with A, D and delta_bias as weights (as in a Mamba block); u, delta, B, C, z are graph inputs."""

    def __init__(self, data: dict):
        super().__init__()
        self.A = torch.nn.Parameter(torch.from_numpy(data["A"]))
        self.D = None if data["D"] is None else torch.nn.Parameter(torch.from_numpy(data["D"]))
        bias = data["delta_bias"]
        self.delta_bias = None if bias is None else torch.nn.Parameter(torch.from_numpy(bias))
        self.with_z = data["z"] is not None

    def forward(self, u, delta, B, C, z):
        return selective_scan(u, delta, self.A, B, C, self.D, z if self.with_z else None, self.delta_bias, True)


def _export(tmp_path, data: dict, scan: str) -> tuple[str, dict, np.ndarray]:
    module = ScanModule(data).eval()
    names = ("u", "delta", "B", "C", "z")
    z = data["z"] if data["z"] is not None else np.zeros_like(data["u"])
    feeds = {n: (z if n == "z" else data[n]) for n in names}
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    path = str(tmp_path / f"scan_{scan}.onnx")
    torch.onnx.export(module, args, path, dynamo=True, opset_version=18, input_names=list(names),
                      custom_translation_table=onnx_translation_table(scan))
    with torch.no_grad():
        expected = module(*args).numpy()
    model = onnx.load(path)
    graph_inputs = {i.name for i in model.graph.input}
    return path, {n: v for n, v in feeds.items() if n in graph_inputs}, expected


def _session(path: str, with_library: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if with_library:
        options.register_custom_ops_library(plugins.ort_library_path())
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


CASES = {
    "full": dict(groups=0, with_d=True, with_z=True, with_bias=True),
    "grouped-no-z": dict(groups=4, with_d=True, with_z=False, with_bias=True),
    "no-D-no-bias": dict(groups=0, with_d=False, with_z=True, with_bias=False),
    "bias-only": dict(groups=0, with_d=False, with_z=False, with_bias=True),
}
# node inputs: no gaps; delta_bias without z is folded into delta, a missing D before a present input is zeros
EXPECTED_INPUTS = {"full": 8, "grouped-no-z": 6, "no-D-no-bias": 7, "bias-only": 5}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_plugin_node_runs_in_onnxruntime_like_pytorch(tmp_path, case):
    data = make_inputs(np.random.default_rng(3), dim=8, length=10, dstate=16, **CASES[case])
    path, feeds, expected = _export(tmp_path, data, "plugin")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    assert [n.op_type for n in nodes] == [OP_TYPE]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {k: v.encode() if isinstance(v, str) else v for k, v in node_attributes(True).items()}
    assert "" not in nodes[0].input, "TensorRT passes empty input names to plugins as null tensors"
    assert len(nodes[0].input) == EXPECTED_INPUTS[case]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    out = inferred.graph.output[0].type.tensor_type
    assert [d.dim_value for d in out.shape.dim] == list(expected.shape)
    y = _session(path, with_library=True).run(None, feeds)[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_lowering_uses_stock_ops_and_equals_pytorch(tmp_path, case):
    data = make_inputs(np.random.default_rng(4), dim=8, length=5, dstate=16, **CASES[case])
    path, feeds, expected = _export(tmp_path, data, "lowered")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} <= {""}, "the lowering must use only the default ONNX domain"
    y = _session(path, with_library=False).run(None, feeds)[0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_lowering_refuses_long_scans(tmp_path):
    data = make_inputs(np.random.default_rng(5), dim=4, length=MAX_LOWERED_LENGTH + 1, dstate=4)
    with pytest.raises(Exception, match="scan='plugin'"):
        _export(tmp_path, data, "lowered")


def test_unknown_scan_mode_is_refused():
    with pytest.raises(ValueError, match="'plugin' or 'lowered'"):
        onnx_translation_table("loop")
