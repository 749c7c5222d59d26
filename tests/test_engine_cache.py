"""Engine host logic: cache keys, reuse and rebuild of engines (runtime.engine_cache), TensorRT/GPU discovery
(runtime.engine_cache, runtime.gpu), build progress and layer mapping (export.engine).

The cache stores whatever plan bytes the builder returns; the last tests build real plans with TensorRT-RTX
(which builds without a GPU) when it is installed.
"""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.engine import (PRECISIONS, BuildOptions, BuildProgress, EngineBuildError, build_serialized_engine,
                           onnx_nodes_of_layer)
from runtime.engine_cache import EngineCache, EngineKey, graph_sha256, import_tensorrt, tensorrt_version
from runtime.gpu import probe_gpu

KEY = EngineKey(graph_sha256="a" * 64, tensorrt_version="tensorrt 10.3.0", gpu_name="Orin",
                compute_capability="8.7", precision="fp16", plugin_sha256="none")


class Builder:
    """Counts builds; each build returns distinct plan bytes."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        return b"plan-%d" % self.calls + bytes(range(256))


def _get(cache, key, builder):
    lines = []
    path, built = cache.get_or_build("decoder", key, builder, lines.append)
    return path, built, lines


def test_mismatches_name_each_changed_field():
    other = dataclasses.replace(KEY, tensorrt_version="tensorrt 10.4.0", compute_capability="8.9",
                                graph_sha256="b" * 64)
    diffs = other.mismatches(KEY)
    assert diffs == ["the ONNX graph changed", "tensorrt version was 'tensorrt 10.3.0', now 'tensorrt 10.4.0'",
                     "compute capability was '8.7', now '8.9'"]
    assert KEY.mismatches(KEY) == []


def test_engine_is_built_once_then_reused(tmp_path):
    cache, builder = EngineCache(tmp_path), Builder()
    path, built, lines = _get(cache, KEY, builder)
    assert built and builder.calls == 1
    assert path == tmp_path / "decoder.fp16.engine"
    assert lines == ["engine decoder.fp16.engine: building (no cached engine)"]
    assert path.read_bytes() == b"plan-1" + bytes(range(256))      # raw plan: no header, no wrapper
    sidecar = json.loads((tmp_path / "decoder.fp16.engine.json").read_text())
    assert sidecar["key"] == dataclasses.asdict(KEY)
    path, built, lines = _get(cache, KEY, builder)
    assert not built and builder.calls == 1
    assert lines == ["engine decoder.fp16.engine: cached, key matches; reusing it"]


@pytest.mark.parametrize("change, reason", [
    ({"tensorrt_version": "tensorrt 10.7.0"}, "tensorrt version was 'tensorrt 10.3.0', now 'tensorrt 10.7.0'"),
    ({"gpu_name": "RTX 4090", "compute_capability": "8.9"}, "gpu name was 'Orin', now 'RTX 4090'"),
    ({"plugin_sha256": "c" * 64}, "the plugin library changed"),
])
def test_stale_engine_is_rebuilt_with_the_reason(tmp_path, change, reason):
    cache, builder = EngineCache(tmp_path), Builder()
    _get(cache, KEY, builder)
    path, built, lines = _get(cache, dataclasses.replace(KEY, **change), builder)
    assert built and builder.calls == 2
    assert lines[0].startswith("engine decoder.fp16.engine: rebuilding (") and reason in lines[0]
    assert path.read_bytes().startswith(b"plan-2")
    assert cache.check(path, dataclasses.replace(KEY, **change)) == (True, "")
    assert not cache.check(path, KEY)[0]                               # the old key no longer matches


def test_precisions_are_cached_side_by_side(tmp_path):
    cache, builder = EngineCache(tmp_path), Builder()
    paths = [_get(cache, dataclasses.replace(KEY, precision=precision), builder)[0] for precision in PRECISIONS]
    assert [p.name for p in paths] == ["decoder.fp32.engine", "decoder.fp16.engine", "decoder.int8.engine"]
    assert builder.calls == 3 and all(cache.check(p, dataclasses.replace(KEY, precision=precision)) == (True, "")
                                      for p, precision in zip(paths, PRECISIONS))
    assert not _get(cache, KEY, builder)[1]
    # an int8 plan is never taken for the fp32 engine of the same graph, nor the other way round
    assert cache.check(paths[2], dataclasses.replace(KEY, precision="fp32"))[1] == \
        "precision was 'int8', now 'fp32'"


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(p.read_bytes()[:10]), "the plan file is damaged"),
    (lambda p: p.with_name(p.name + ".json").unlink(), "key file decoder.fp16.engine.json is missing or unreadable"),
    (lambda p: p.with_name(p.name + ".json").write_text("{"), "is missing or unreadable"),
    (lambda p: p.with_name(p.name + ".json").write_text('{"key": {"precision": "fp16"}}'), "unreadable"),
])
def test_damaged_cache_entries_are_rebuilt_not_crashed(tmp_path, damage, reason):
    cache, builder = EngineCache(tmp_path), Builder()
    path, _, _ = _get(cache, KEY, builder)
    damage(path)
    _, built, lines = _get(cache, KEY, builder)
    assert built and reason in lines[0]


def test_graph_hash_covers_external_data(tmp_path):
    graph = tmp_path / "g.onnx"
    graph.write_bytes(b"graph")
    alone = graph_sha256(graph)
    (tmp_path / "g.onnx.data").write_bytes(b"weights-1")
    first = graph_sha256(graph)
    (tmp_path / "g.onnx.data").write_bytes(b"weights-2")
    assert len({alone, first, graph_sha256(graph)}) == 3


def test_progress_tracks_nested_phases_and_cancel():
    stream = io.StringIO()
    progress = BuildProgress("decoder", stream=stream, enabled=False)
    progress.phase_start("Building engine", None, 3)
    progress.phase_start("Timing tactics", "Building engine", 40)
    assert progress.depth == {"Building engine": 0, "Timing tactics": 1}
    assert progress.step_complete("Timing tactics", 0)
    progress.phase_finish("Timing tactics")
    progress.cancelled = True
    assert not progress.step_complete("Building engine", 1)          # TensorRT then stops the build
    progress.phase_finish("Building engine")
    assert stream.getvalue() == "decoder: Building engine (3 steps)\n"   # top-level phases only, off a terminal
    assert progress.phases_seen == ["Building engine", "Timing tactics"]


def test_progress_bars_on_a_terminal():
    stream = io.StringIO()
    progress = BuildProgress("encoder", stream=stream, enabled=True)
    progress.phase_start("Building engine", None, 4)
    progress.step_complete("Building engine", 1)
    assert progress.bars["Building engine"].n == 2
    progress.phase_finish("Building engine")
    assert not progress.bars and "encoder: Building engine" in stream.getvalue()


def test_missing_tensorrt_is_a_reason_not_an_error():
    module, why = import_tensorrt(("avs_no_such_tensorrt",))
    assert module is None
    assert "TensorRT's Python package is not installed" in why and "avs_no_such_tensorrt" in why


def test_gpu_probe_gives_a_reason_without_a_driver():
    info, why = probe_gpu()
    if info is not None:
        pytest.skip(f"this machine has a GPU ({info.name}); the no-GPU path cannot be observed")
    assert why and ("libcuda" in why or "no usable GPU" in why or "no CUDA device" in why)


def _tiny_onnx(path):
    """A real (small) conv + relu + global-pool graph."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["y"], name="pool")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), path)
    return path


def test_real_engine_through_the_cache_with_tensorrt_rtx(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx")
    graph = _tiny_onnx(tmp_path / "tiny.onnx")
    key = dataclasses.replace(KEY, graph_sha256=graph_sha256(graph), tensorrt_version=tensorrt_version(trt),
                              precision="fp32")
    progress = BuildProgress("tiny", stream=io.StringIO(), enabled=False)
    calls = []

    def build() -> bytes:
        calls.append(build_serialized_engine(trt, graph, BuildOptions(), progress, say=lambda _: None))
        return calls[-1]

    cache = EngineCache(tmp_path / "engines")
    path, built, _ = _get(cache, key, build)
    assert built and "Building engine" in progress.phases_seen       # TensorRT's progress monitor reported
    plan = path.read_bytes()
    assert len(plan) > 1000 and plan == calls[0]                      # exactly TensorRT's serialized plan
    assert not _get(cache, key, build)[1] and len(calls) == 1
    stale = dataclasses.replace(key, tensorrt_version="tensorrt_rtx 1.6.0.0")
    path, built, lines = _get(cache, stale, build)
    assert built and "tensorrt version was" in lines[0] and len(calls) == 2


def test_unparsable_graph_is_a_clear_build_error(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx")
    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="avs.test", name="mystery")
    graph = helper.make_graph([node], "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("avs.test", 1)],
                                ir_version=10), path)
    with pytest.raises(EngineBuildError, match=r"cannot parse bad.onnx: .*mystery"):
        build_serialized_engine(trt, path, BuildOptions(), say=lambda _: None)


def test_fp16_needs_a_builder_flag(tmp_path):
    trt = pytest.importorskip("tensorrt_rtx")
    if hasattr(trt.BuilderFlag, "FP16"):
        pytest.skip("this TensorRT has an FP16 flag")
    graph = _tiny_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(EngineBuildError, match="no FP16 builder flag .* build with --precision fp32"):
        build_serialized_engine(trt, graph, BuildOptions(precision="fp16"), say=lambda _: None)


def test_layers_map_back_to_onnx_nodes(tmp_path):
    assert onnx_nodes_of_layer("node_linear", "[ONNX Layer: node_linear]") == {"node_linear"}
    assert onnx_nodes_of_layer("ONNXTRT_Broadcast", "[ONNX Layer: f] [ONNX Layer: node_2]") == {"f", "node_2"}
    assert onnx_nodes_of_layer("conv", "") == {"conv"}                   # older TensorRT: the layer's name
    trt = pytest.importorskip("tensorrt_rtx")
    path = _tiny_onnx(tmp_path / "tiny.onnx")
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(path))
    mapped = set().union(*(onnx_nodes_of_layer(network.get_layer(i).name, network.get_layer(i).metadata)
                           for i in range(network.num_layers)))
    assert {"conv", "relu", "pool"} <= mapped                           # the names fp16 pinning relies on
