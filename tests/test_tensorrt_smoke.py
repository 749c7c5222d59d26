"""CI smoke: the exported lowered-scan graphs parse and build in TensorRT-RTX, so they hold no op TensorRT rejects.

TensorRT-RTX (``pip install tensorrt-rtx``) runs its ONNX parser and builder without a GPU; full TensorRT cannot be
installed on CI machines. The graphs come from the session's one ``python -m export.build_engine`` run (``artifact`` in tests/conftest.py).
The int8 cases quantize the tiny artifact's decoder (``tiny_artifact``) with ONNX Runtime's ``quantize_static``.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from export.engine import BuildOptions, BuildProgress, EngineBuildError, build_serialized_engine
from plugins.scan_contract import DOMAIN, INPUT_NAMES, OP_TYPE, OPSET_VERSION, REQUIRED_INPUTS, node_attributes

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX not installed (pip install tensorrt-rtx)")


def _build(path, precision: str = "fp32") -> tuple[bytes, BuildProgress]:
    progress = BuildProgress(path.stem, stream=io.StringIO(), enabled=False)
    options = BuildOptions(precision=precision, workspace_gb=1)
    return build_serialized_engine(trt, path, options, progress, say=lambda _: None), progress


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


def test_msdeformattn_graph_builds_with_stock_grid_sample(tmp_path):
    """COMBO's deformable attention (export/models/mask2former.py) exports to ONNX GridSample, which the parser maps
    to IGridSampleLayer with the CUDA op's sampling (bilinear, corners not aligned, zero fill): no plugin."""
    from tests.test_mask2former import SHAPES, export_attn_graph

    path = tmp_path / "msdeformattn.onnx"
    export_attn_graph(path)
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(path))
    samplers = [network.get_layer(i) for i in range(network.num_layers)
                if network.get_layer(i).type == trt.LayerType.GRID_SAMPLE]
    assert len(samplers) == len(SHAPES)
    for layer in samplers:
        layer.__class__ = trt.IGridSampleLayer
        assert (layer.interpolation_mode, layer.align_corners, layer.sample_mode) == (
            trt.InterpolationMode.LINEAR, False, trt.SampleMode.FILL)
    plan, progress = _build(path)
    assert len(plan) > 10_000 and "Building engine" in progress.phases_seen

#: The Q/DQ layout TensorRT takes: signed int8, per-channel weights, symmetric activations, no int32 bias Q/DQ.
QDQ_OPTIONS = dict(quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                   weight_type=QuantType.QInt8,
                   extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
#: Q/DQ on the inputs of the weighted layers only: TensorRT-RTX 1.7 refuses quantize_static's default, which also
#: quantizes scalar constants feeding Add/Sub (test_qdq_graphs_tensorrt_refuses_fail_with_advice).
WEIGHTED_OPS = ["Conv", "MatMul", "Gemm"]


class _RandomBatches(CalibrationDataReader):
    """A few random batches of every graph input, as calibration data."""

    def __init__(self, graph: Path, batches: int = 3):
        inputs = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).get_inputs()
        rng = np.random.default_rng(0)
        self.feeds = iter([{i.name: rng.standard_normal(i.shape).astype(np.float32) for i in inputs}
                           for _ in range(batches)])

    def get_next(self):
        return next(self.feeds, None)


def _quantize(graph: Path, out: Path, **changes) -> Path:
    options = dict(QDQ_OPTIONS, op_types_to_quantize=WEIGHTED_OPS)
    options.update(changes)
    quantize_static(str(graph), str(out), _RandomBatches(graph), **options)
    return out


@pytest.fixture(scope="module")
def qdq_decoder(tiny_artifact, tmp_path_factory) -> Path:
    """The tiny artifact's decoder (convolutions, attention, norms, resizes), explicitly quantized."""
    return _quantize(tiny_artifact / "decoder.onnx", tmp_path_factory.mktemp("qdq") / "decoder.qdq.onnx")


def test_int8_engine_builds_from_a_qdq_graph(qdq_decoder):
    graph = onnx.load(str(qdq_decoder)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv", "MatMul"} <= ops
    weights = {i.name: i for i in graph.initializer}
    quantized = [weights[n.input[0]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights]
    assert quantized and {w.data_type for w in quantized} == {TensorProto.INT8}   # int8 weights, no int32 bias
    plan, progress = _build(qdq_decoder, "int8")
    assert len(plan) > 100_000 and "Building engine" in progress.phases_seen


def test_int8_needs_a_quantized_graph(tiny_artifact):
    with pytest.raises(EngineBuildError, match="decoder.onnx has no QuantizeLinear/DequantizeLinear nodes.*"
                                               "quantize_static"):
        _build(tiny_artifact / "decoder.onnx", "int8")


def test_quantized_graph_needs_int8(qdq_decoder):
    with pytest.raises(EngineBuildError, match=r"decoder.qdq.onnx is explicitly quantized \(\d+ Q/DQ layers\): "
                                               "build it with --precision int8"):
        _build(qdq_decoder, "fp32")


@pytest.mark.parametrize("changes, trt_says, advice", [
    (dict(op_types_to_quantize=None), "Quantized constant", "op_types_to_quantize"),
    (dict(extra_options=dict(QDQ_OPTIONS["extra_options"], ActivationSymmetric=False)), "zero point",
     "ActivationSymmetric=True"),
    (dict(extra_options=dict(QDQ_OPTIONS["extra_options"], QuantizeBias=True)), "has type Int32",
     "QuantizeBias=False"),
], ids=["every-op", "asymmetric", "int32-bias"])
def test_qdq_graphs_tensorrt_refuses_fail_with_advice(tiny_artifact, tmp_path, changes, trt_says, advice):
    """What TensorRT-RTX 1.7 refuses: Q/DQ on scalar constants (quantize_static's default op list) at build time;
    non-zero zero points (asymmetric activations) and int32 bias Q/DQ at parse time. The error adds what to change."""
    graph = _quantize(tiny_artifact / "decoder.onnx", tmp_path / "decoder.bad.onnx", **changes)
    with pytest.raises(EngineBuildError) as info:
        _build(graph, "int8")
    message = str(info.value)
    assert "decoder.bad.onnx" in message and trt_says in message and advice in message


@pytest.mark.parametrize("role", ["encoder", "temporal", "decoder"])
def test_calibrated_int8_graphs_build(int8_demo, role):
    """The Q/DQ graphs ``python -m calibration`` wrote for the trained demo model parse and build as INT8."""
    from runtime.manifest import load_manifest

    spec = load_manifest(int8_demo).graph(role, "int8")
    plan = build_serialized_engine(trt, int8_demo / spec.file, BuildOptions(precision="int8" if ".int8." in spec.file
                                                                           else "fp32"), say=lambda line: None)
    assert len(plan) > 10_000


def test_combo_full_graph_builds(combo_artifact):
    """COMBO's whole per-frame graph (two backbones, MSDeformAttn as GridSample, masked attention) is stock ONNX
    that TensorRT-RTX parses and builds."""
    path = combo_artifact / "model.onnx"
    graph = onnx.load(str(path), load_external_data=False).graph
    assert not [n for n in graph.node if n.domain not in ("", "ai.onnx")]
    assert sum(n.op_type == "GridSample" for n in graph.node) == 3          # combo-test: 1 encoder layer x 3 levels
    plan, _ = _build(path)
    assert len(plan) > 100_000
