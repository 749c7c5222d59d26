"""INT8 and FP16 with measured accuracy: the README's INT8 command on the trained demo model, the Q/DQ graphs it
writes, the runtime's precision choice, the calibration data sources and the CLI's errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from calibration.__main__ import main as calibration_main
from calibration.data import open_source
from calibration.groups import is_scan_node, sweep
from runtime.backends import BackendError
from runtime.manifest import ManifestError, load_manifest
from runtime.segmenter import Segmenter


def test_demo_int8_and_fp16_meet_the_bounds(int8_demo):
    """Issue bounds on the held-out synthetic test set: INT8 M_J within 0.01 of FP32 and mask agreement >= 0.98;
    FP16 M_J within 0.002."""
    manifest = load_manifest(int8_demo)
    int8, fp16 = manifest.precisions["int8"], manifest.precisions["fp16"]
    for record in (int8, fp16):
        assert record.accuracy.clips == 40 and record.accuracy.frames == 200
        assert set(record.accuracy.fp32) == {"M_J", "M_F"} and set(record.accuracy.reduced) == {"M_J", "M_F"}
    assert abs(int8.accuracy.reduced["M_J"] - int8.accuracy.fp32["M_J"]) <= 0.01
    assert int8.accuracy.mask_agreement >= 0.98 and int8.passed
    assert abs(fp16.accuracy.reduced["M_J"] - fp16.accuracy.fp32["M_J"]) <= 0.002 and fp16.passed
    assert int8.accuracy.fp32["M_J"] > 0.7             # a trained model: the figures mean something
    assert int8.calibration.method == "minmax" and int8.calibration.clips == 16
    assert "selective_scan" in int8.keep_fp32_groups and int8.backends == ["onnxruntime", "tensorrt"]
    assert fp16.graphs == {} and fp16.backends == ["tensorrt"]


def test_int8_graphs_are_explicit_qdq_for_tensorrt(int8_demo):
    """Per-channel int8 weights, symmetric int8 activations (zero point 0), no bias Q/DQ, the scan untouched."""
    manifest = load_manifest(int8_demo)
    record = manifest.precisions["int8"]
    assert set(record.graphs) <= {"encoder", "temporal", "decoder"} and "decoder" in record.graphs
    for role, spec in record.graphs.items():
        assert spec.file == f"{role}.int8.onnx" and spec.inputs == manifest.graph(role).inputs
        model = onnx.load(str(int8_demo / spec.file))
        inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        producers = {o: n for n in model.graph.node for o in n.output}
        quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        dequantize = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        assert quantize and dequantize
        for node in quantize + dequantize:
            zero = inits.get(node.input[2]) if len(node.input) > 2 else None
            assert zero is not None and zero.dtype == np.int8 and not zero.any(), node.name
        assert not [n for n in dequantize if inits.get(n.input[0]) is not None
                    and inits[n.input[0]].dtype == np.int32], "bias Q/DQ would break TensorRT's parser"
        weights = [n for n in dequantize if n.input[0] in inits and inits[n.input[1]].size > 1]
        assert weights, "per-channel weight scales expected"
        for node in model.graph.node:
            if is_scan_node(node) and node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear"
                           for i in node.input), f"scan node {node.name} reads int8 data"
        assert sorted(record.keep_fp32[role]) == record.keep_fp32[role]


def test_auto_picks_int8_on_onnxruntime_and_says_so(int8_demo):
    lines: list[str] = []
    with Segmenter(int8_demo, "onnxruntime", say=lines.append) as segmenter:
        assert segmenter.precision == "int8"
        assert segmenter._decoder.spec.file == "decoder.int8.onnx"
        frame = np.zeros((96, 128, 3), np.uint8)
        result = segmenter.segment_clip([frame], np.zeros(16000, np.float32), 16000)[0]
        assert result.mask.shape == (96, 128)
    assert any("precision int8 (M_J" in line and "fastest validated" in line for line in lines)
    with Segmenter(int8_demo, "onnxruntime", precision="fp32", say=lines.append) as segmenter:
        assert segmenter.precision == "fp32" and segmenter._decoder.spec.file == "decoder.onnx"


def test_unavailable_precisions_name_the_fix(int8_demo, tiny_artifact):
    with pytest.raises(BackendError, match="fp16 runs on TensorRT only"):
        Segmenter(int8_demo, "onnxruntime", precision="fp16", say=lambda line: None)
    with pytest.raises(BackendError, match="python -m calibration --model-dir"):
        Segmenter(tiny_artifact, "onnxruntime", precision="int8", say=lambda line: None)
    with pytest.raises(BackendError, match="unknown precision"):
        Segmenter(tiny_artifact, "onnxruntime", precision="int4", say=lambda line: None)
    with pytest.raises(BackendError, match="--precision int8"):
        Segmenter(int8_demo, "tensorrt", precision="int8", say=lambda line: None)


def test_a_failed_precision_is_not_auto_picked(int8_demo, tmp_path):
    from runtime.manifest import write_manifest
    import dataclasses

    copy = tmp_path / "art"
    shutil.copytree(int8_demo, copy)
    manifest = load_manifest(copy)
    failed = dataclasses.replace(manifest.precisions["int8"], passed=False)
    write_manifest(dataclasses.replace(manifest, precisions={**manifest.precisions, "int8": failed}), copy)
    lines: list[str] = []
    with Segmenter(copy, "onnxruntime", say=lines.append) as segmenter:
        assert segmenter.precision == "fp32"
    with Segmenter(copy, "onnxruntime", precision="int8", say=lines.append) as segmenter:
        assert segmenter.precision == "int8"
    assert any("WARNING: int8" in line and "failed its accuracy check" in line for line in lines)


def test_tampered_int8_graph_is_refused(int8_demo, tmp_path):
    copy = tmp_path / "art"
    shutil.copytree(int8_demo, copy)
    with open(copy / "decoder.int8.onnx", "r+b") as handle:
        handle.seek(200)
        byte = handle.read(1)
        handle.seek(200)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ManifestError, match=r"decoder.int8.onnx \(precisions.int8.graphs.decoder.file\) does not "
                                            r"match the sha256"):
        load_manifest(copy)


def test_avs_eval_scores_int8_next_to_fp32(int8_demo, tmp_path, capsys):
    from runtime.datasets import synth
    from runtime.eval_cli import main as eval_main

    synth.write_dataset(tmp_path / "data", "s4", 4, 7, split="test", progress=False)
    report = tmp_path / "report.json"
    assert eval_main(["--model-dir", str(int8_demo), "--data", str(tmp_path / "data"), "--precision", "int8",
                      "--backend", "onnxruntime", "--quiet", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "int8 - fp32: M_J" in out and "\nfp32 " in out
    data = json.loads(report.read_text())
    assert data["precision"] == "int8" and "fp32" in data and "M_J" in data["fp32"]["metrics"]["official"]


def test_video_folder_source_cuts_clips_and_holds_some_out(tmp_path):
    """Real mp4s with audio (PyAV): 5-s clips at 1 frame per second, every fifth held out, no ground truth."""
    from runtime.demo_clip import make_clip

    videos = tmp_path / "videos"
    videos.mkdir()
    make_clip(videos / "a.mp4", seconds=16.0, fps=4, width=160, height=120, sample_rate=22050)
    make_clip(videos / "b.mp4", seconds=11.0, fps=4, width=160, height=120, sample_rate=44100, seed=1)
    source = open_source(str(videos), task="s4", frames_per_clip=5, resolution=64, clips=10, accuracy_clips=3)
    assert [c.name for c in source.calibration.clips] == ["a_000", "a_001", "a_002", "b_000"]
    assert [c.name for c in source.accuracy.clips] == ["b_001"]
    clip = source.calibration.clips[0]
    assert len(clip.frames) == 5 and clip.frames[0].shape == (64, 64, 3)
    assert clip.log_mel.shape == (5, 1, 96, 64) and clip.log_mel.dtype == np.float32
    assert not source.accuracy.has_ground_truth
    frames = np.stack(clip.frames).astype(np.float32)
    assert np.abs(np.diff(frames, axis=0)).mean() > 1.0         # five different seconds, not one frame repeated


def test_sources_name_bad_data(tmp_path):
    from runtime.datasets.avsbench import DatasetError

    with pytest.raises(DatasetError, match="is not a folder"):
        open_source(str(tmp_path / "missing"), task="s4", frames_per_clip=5, resolution=64, clips=1,
                    accuracy_clips=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="neither an AVSBench metadata csv nor videos"):
        open_source(str(tmp_path / "empty"), task="s4", frames_per_clip=5, resolution=64, clips=1,
                    accuracy_clips=1)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "clip.mp4").write_bytes(b"not a video")
    with pytest.raises(DatasetError, match="clip.mp4"):
        open_source(str(tmp_path / "broken"), task="s4", frames_per_clip=5, resolution=64, clips=1,
                    accuracy_clips=1)


def test_cli_errors_and_exit_statuses(tmp_path, tiny_artifact, capsys):
    assert calibration_main(["--model-dir", str(tiny_artifact), "--data", "synth", "--precisions", "int4"]) == 2
    assert "--precisions takes int8, fp16" in capsys.readouterr().err
    assert calibration_main(["--model-dir", str(tiny_artifact), "--data", "synth", "--clips", "0"]) == 2
    assert "--clips must be >= 1" in capsys.readouterr().err
    assert calibration_main(["--model-dir", str(tmp_path / "none"), "--data", "synth"]) == 5
    assert f"artifact directory {tmp_path / 'none'} does not exist" in capsys.readouterr().err
    assert calibration_main(["--model-dir", str(tiny_artifact), "--data", str(tmp_path / "missing")]) == 3
    assert "is not a folder" in capsys.readouterr().err


def test_build_engine_int8_flag_rules(tmp_path):
    from export.build_engine import UserError, build_artifact

    with pytest.raises(UserError, match="--precision int8 needs calibration data"):
        build_artifact("selm-test", tmp_path / "a", precision="int8")
    with pytest.raises(UserError, match="--calibration is for --precision int8"):
        build_artifact("selm-test", tmp_path / "b", calibration="synth")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sweep_keeps_only_the_harmful_groups():
    """A made-up error: group 'm.bad.x' costs 0.05, the rest 0.001 each; budget 0.01."""
    paths = ["m.good.a", "m.good.b", "m.bad.x", "m.bad.y", "n.other"]

    def error(groups):
        chosen = {g for g, _ in groups}
        cost = 0.0
        for path in paths:
            if any(path == g or path.startswith(g + ".") for g in chosen):
                cost += 0.05 if path == "m.bad.x" else 0.001
        return cost

    found = sweep(paths, error, 0.01, what="test", say=lambda line: None)
    assert found.keep == ["m.bad.x"]
    assert found.all_error == pytest.approx(0.054)
    assert found.mixed_error <= 0.01 and ("m.bad.y", 3) in found.reduced
