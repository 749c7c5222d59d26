"""A graph whose real inputs/outputs disagree with the manifest is refused when it is opened, before warm-up."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from runtime.backends.onnxruntime import OrtRunner
from runtime.manifest import GraphSpec, ManifestError, TensorSpec


def _graph(path, shape):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, path)


def _spec(inputs, outputs):
    return GraphSpec(role="decoder", file="g.onnx", sha256="0" * 64, inputs=inputs, outputs=outputs)


def test_matching_declaration_opens(tmp_path):
    _graph(tmp_path / "g.onnx", [1, 3, "n"])
    spec = _spec([TensorSpec("x", [1, 3, 8], "float32")], [TensorSpec("y", [1, 3, "n"], "float32")])
    runner = OrtRunner(tmp_path, spec)
    assert runner.session is not None


@pytest.mark.parametrize("inputs, outputs, detail", [
    ([TensorSpec("x", [1, 4, 8], "float32")], [TensorSpec("y", [1, 3, 8], "float32")],
     r"input 'x' is float32 \[1, 3, 8\]"),
    ([TensorSpec("x", [1, 3, 8], "float16")], [TensorSpec("y", [1, 3, 8], "float32")], "input 'x' is float32"),
    ([TensorSpec("frames", [1, 3, 8], "float32")], [TensorSpec("y", [1, 3, 8], "float32")], r"inputs are \['x'\]"),
    ([TensorSpec("x", [1, 3, 8], "float32")], [TensorSpec("y", [1, 3], "float32")], "output 'y'"),
])
def test_mismatched_declaration_is_an_artifact_error(tmp_path, inputs, outputs, detail):
    _graph(tmp_path / "g.onnx", [1, 3, 8])
    with pytest.raises(ManifestError, match=rf"g.onnx does not match its manifest entry \(decoder graph\): .*{detail}"):
        OrtRunner(tmp_path, _spec(inputs, outputs))
