"""runtime.segmenter and runtime.backends on a real exported artifact (selm-s4-r50, random weights, ONNX Runtime).

The artifact is conftest's session fixture (built once by ``python -m export.build_engine``).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from plugins import scan_contract
from runtime.audio import waveform_to_examples
from runtime.backends import BackendError, check_feeds, open_backend
from runtime.backends.onnxruntime import OrtRunner, choose_providers, onnx_opset_domains
from runtime.backends.tensorrt import CudaApi, engines_for_this_machine, tensor_table
from runtime.demo_clip import synth_audio, synth_frames
from runtime.manifest import GraphSpec, ManifestError, TensorSpec, load_manifest
from runtime.segmenter import Segmenter, preprocess_frame
from runtime.sync import training_timestamps

REPO = Path(__file__).resolve().parents[1]
MODEL = "selm-s4-r50"


@pytest.fixture(scope="module")
def segmenter(artifact):
    with Segmenter(artifact, "onnxruntime", say=lambda line: None) as seg:
        yield seg


def _clip(frames: int, width: int = 320, height: int = 180, rate: int = 44100):
    images = list(synth_frames(frames, 1.0, width, height))
    waveform = synth_audio(frames + 0.5, rate, channels=2)
    return images, waveform, rate


def test_streaming_path_equals_segment_clip(segmenter):
    """push_frame/push_audio/wait (worker thread) and segment() give exactly segment_clip's masks."""
    images, waveform, rate = _clip(3)
    offline = segmenter.segment_clip(images, waveform, rate)
    stamps = training_timestamps(3)
    assert [r.timestamp for r in offline] == pytest.approx(stamps)
    assert [len(r.window) for r in offline] == [1, 2, 3]
    segmenter.reset()
    chunk = rate // 10
    for start in range(0, waveform.shape[0], chunk):  # audio in 0.1 s chunks, stamped with their start times
        segmenter.push_audio(waveform[start:start + chunk], rate, start / rate)
    streamed = []
    for image, t in zip(images, stamps):
        segmenter.push_frame(image, t)
        streamed.append(segmenter.wait(after=streamed[-1].index if streamed else -1, timeout=120))
    for live, ref in zip(streamed, offline):
        assert live.mask.shape == (180, 320) and live.mask.dtype == np.uint8
        assert np.array_equal(live.mask, ref.mask)
        assert np.array_equal(live.probabilities, ref.probabilities)
        assert live.window == ref.window and live.audio_window == pytest.approx(ref.audio_window)
        assert live.audio_missing == 0.0 and live.model_latency > 0
    segmenter.reset()
    segmenter.push_audio(waveform, rate, 0.0)
    synchronous = [segmenter.segment(image, t) for image, t in zip(images, stamps)]
    assert all(np.array_equal(a.probabilities, b.probabilities) for a, b in zip(synchronous, offline))


def test_segment_clip_equals_the_full_graph(artifact, segmenter):
    """The streaming split with the 1 Hz window reproduces the exported full-clip graph frame by frame."""
    manifest = segmenter.manifest
    t = manifest.streaming.window
    images, waveform, rate = _clip(t, 224, 224)
    ours = segmenter.segment_clip(images, waveform, rate)
    full = OrtRunner(artifact, manifest.graph("full"))
    frames = np.concatenate([preprocess_frame(image, manifest.video) for image in images])
    log_mel = waveform_to_examples(waveform, rate)[:t]
    logits = full.infer({"frames": frames, "log_mel": log_mel})["logits"]
    reference = 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))
    for i, result in enumerate(ours):
        diff = np.abs(result.probabilities - reference[i])
        print(f"frame {i}: window {len(result.window)}, max abs diff {diff.max():.2e}, mean {diff.mean():.2e}")
        assert diff.max() < 1e-4
        agreement = np.mean((result.probabilities > 0.5) == (reference[i] > 0.5))
        assert agreement > 0.999


def test_newest_frame_wins_and_late_audio_is_counted(artifact):
    with Segmenter(artifact, "onnxruntime", audio_wait=0.3, say=lambda line: None) as seg:
        images, _, _ = _clip(3, 64, 48)
        start = time.perf_counter()
        for i, image in enumerate(images):  # pushed faster than they can be segmented, with no audio at all
            seg.push_frame(image, 10.0 + i * 0.1)
        first = seg.wait(timeout=120)
        last = seg.wait(after=first.index, timeout=120) if first.timestamp != 10.2 else first
        assert last.timestamp == pytest.approx(10.2)
        assert seg.stats["pushed"] == 3 and seg.stats["dropped"] >= 1
        assert seg.stats["segmented"] == 3 - seg.stats["dropped"]
        assert seg.stats["audio_late"] >= 1 and last.audio_missing == pytest.approx(0.975)
        assert time.perf_counter() - start >= 0.3  # it waited for the audio before giving up
        assert seg.latest() is last


def test_bad_input_is_named(segmenter):
    with pytest.raises(ValueError, match=r"BGR uint8 with shape \(H, W, 3\); got uint8 \(48, 64\)"):
        segmenter.push_frame(np.zeros((48, 64), np.uint8), 0.0)
    with pytest.raises(ValueError, match="got float32"):
        segmenter.segment(np.zeros((48, 64, 3), np.float32), 0.0)
    with pytest.raises(ValueError, match="timestamp must be a finite number"):
        segmenter.push_frame(np.zeros((48, 64, 3), np.uint8), float("nan"))
    with pytest.raises(ValueError, match="2 frames but 3 timestamps"):
        segmenter.segment_clip([np.zeros((8, 8, 3), np.uint8)] * 2, np.zeros(16000, np.float32), 16000, [0, 1, 2])
    with pytest.raises(ValueError, match="sample_rate"):
        segmenter.push_audio(np.zeros(100, np.float32), -1)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _copy_artifact(artifact: Path, target: Path, edit) -> Path:
    target.mkdir()
    for item in artifact.iterdir():
        if item.is_file() and item.name != "manifest.json":
            _link_or_copy(item, target / item.name)  # a symlink out of the directory would be refused
    data = json.loads((artifact / "manifest.json").read_text())
    edit(data)
    (target / "manifest.json").write_text(json.dumps(data))
    return target


def test_artifacts_missing_or_foreign_say_how_to_rebuild(artifact, tmp_path):
    with pytest.raises(ManifestError, match="does not exist; build it with: python -m export.build_engine"):
        Segmenter(tmp_path / "nowhere")
    old = _copy_artifact(artifact, tmp_path / "old", lambda d: d.update(schema_version=99))
    with pytest.raises(ManifestError, match=f"schema_version is 99.*--model {MODEL} --out"):
        Segmenter(old)
    foreign = _copy_artifact(artifact, tmp_path / "foreign", lambda d: d["audio"].update(sample_rate=22050))
    with pytest.raises(ManifestError, match="audio front end .* rebuild it with"):
        Segmenter(foreign)


def test_backend_choice_is_explained(artifact):
    manifest = load_manifest(artifact)
    lines = []
    backend = open_backend(artifact, manifest, "auto", ("temporal",), lines.append)
    assert backend.name == "onnxruntime" and "CPUExecutionProvider" in backend.description
    assert lines[0].startswith("backend: ONNX Runtime ") and "; not TensorRT: " in lines[0]
    with pytest.raises(BackendError, match=f"--backend tensorrt: .*--model {MODEL} --out .* --engine"):
        open_backend(artifact, manifest, "tensorrt", ("temporal",), lines.append)
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        open_backend(artifact, manifest, "cuda")
    engines, why = engines_for_this_machine(artifact, manifest, ("encoder",))
    assert engines is None and why


def test_feeds_are_checked(artifact):
    spec = load_manifest(artifact).graph("temporal")
    good = {t.name: np.zeros(t.shape, np.float64) for t in spec.inputs}
    assert all(v.dtype == np.float32 for v in check_feeds(spec, good).values())
    with pytest.raises(ValueError, match="missing audio; unexpected extra"):
        check_feeds(spec, {"pooled": good["pooled"], "extra": 1})
    with pytest.raises(ValueError, match=r"input 'audio' must have shape \[5, 256\]; got \[4, 256\]"):
        check_feeds(spec, {**good, "audio": np.zeros((4, 256))})


def test_opset_domains_read_without_onnx(artifact):
    onnx = pytest.importorskip("onnx")
    path = artifact / "encoder.onnx"
    expected = {o.domain: o.version for o in onnx.load(str(path), load_external_data=False).opset_import}
    assert onnx_opset_domains(path) == expected
    with pytest.raises(BackendError, match="not a readable ONNX model"):
        onnx_opset_domains(REPO / "pyproject.toml")
    assert choose_providers(["CPUExecutionProvider", "TensorrtExecutionProvider", "CUDAExecutionProvider"], True) \
        == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _scan_reference(u, delta, a, b, c):
    h = np.zeros((*u.shape[:2], a.shape[1]))
    y = np.zeros(u.shape)
    for step in range(u.shape[2]):
        h = np.exp(delta[:, :, step, None] * a) * h + delta[:, :, step, None] * b[:, None, :, step] * u[:, :, step,
                                                                                                      None]
        y[:, :, step] = (h * c[:, None, :, step]).sum(-1)
    return y


def test_custom_op_graph_registers_our_library(tmp_path):
    """A graph with an avs::SelectiveScan node runs through OrtRunner with plugins.ort_library_path()."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    batch, dim, state, length = 1, 4, 3, 6
    shapes = {"u": [batch, dim, length], "delta": [batch, dim, length], "A": [dim, state],
              "B": [batch, state, length], "C": [batch, state, length]}
    node = helper.make_node(scan_contract.OP_TYPE, list(shapes), ["y"], domain=scan_contract.DOMAIN,
                            **scan_contract.node_attributes())
    graph = helper.make_graph([node], "scan", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                               for n, s in shapes.items()],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shapes["u"])])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(scan_contract.DOMAIN, scan_contract.OPSET_VERSION)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=9)
    onnx.save(model, str(tmp_path / "scan.onnx"))
    spec = GraphSpec("temporal", "scan.onnx", "", [TensorSpec(n, s, "float32") for n, s in shapes.items()],
                     [TensorSpec("y", shapes["u"], "float32")])
    try:
        runner = OrtRunner(tmp_path, spec)
    except BackendError as exc:
        assert "python -m plugins.build" in str(exc)
        pytest.skip(f"custom-op library not built: {exc}")
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    feeds["delta"] = np.abs(feeds["delta"]) * 0.1
    feeds["A"] = -np.abs(feeds["A"])
    assert runner.uses_custom_ops
    got = runner.infer(feeds)["y"]
    expected = _scan_reference(*(feeds[n].astype(np.float64) for n in shapes))
    print(f"custom op vs numpy: max abs diff {np.abs(got - expected).max():.2e}")
    assert np.allclose(got, expected, atol=1e-5)


class _FakeEngine:
    """Duck-typed ICudaEngine: the attributes tensor_table reads."""

    def __init__(self, tensors):
        self._tensors = tensors
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, i):
        return self._tensors[i][0]

    def get_tensor_mode(self, name):
        return dict((t[0], t[1]) for t in self._tensors)[name]

    def get_tensor_shape(self, name):
        return dict((t[0], t[2]) for t in self._tensors)[name]

    def get_tensor_dtype(self, name):
        return SimpleNamespace(name=dict((t[0], t[3]) for t in self._tensors)[name])


FAKE_TRT = SimpleNamespace(TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out"))


def test_tensorrt_tensor_table_host_logic():
    engine = _FakeEngine([("pooled", "in", (5, 4, 256), "FLOAT"), ("gates", "out", (5, 4, 256), "HALF")])
    table = tensor_table(engine, FAKE_TRT)
    assert [(t.name, t.is_input, t.dtype, t.nbytes) for t in table] == [
        ("pooled", True, np.float32, 5 * 4 * 256 * 4), ("gates", False, np.float16, 5 * 4 * 256 * 2)]
    with pytest.raises(BackendError, match="dynamic shape"):
        tensor_table(_FakeEngine([("x", "in", (-1, 3), "FLOAT")]), FAKE_TRT)
    with pytest.raises(BackendError, match="type FP8"):
        tensor_table(_FakeEngine([("x", "in", (1, 3), "FP8")]), FAKE_TRT)


def test_cuda_error_codes_become_messages():
    api = CudaApi.__new__(CudaApi)
    api._cudart = SimpleNamespace(cudaGetErrorString=lambda err: (0, b"out of memory"))
    assert api.check((0, 1234)) == 1234
    assert api.check((0,)) is None
    with pytest.raises(BackendError, match="CUDA error 2: out of memory"):
        api.check((2, None))


@pytest.mark.gpu
def test_tensorrt_backend_matches_onnxruntime(tmp_path_factory):
    """GPU self-test: build engines for this GPU, then TensorRT and ONNX Runtime must agree on a clip."""
    from runtime.cli import ensure_artifacts
    from runtime.gpu import probe_gpu

    if probe_gpu()[0] is None:
        pytest.skip("no NVIDIA GPU")
    directory = tmp_path_factory.mktemp("gpu") / MODEL
    ensure_artifacts(directory, MODEL)
    images, waveform, rate = _clip(3)
    with Segmenter(directory, "tensorrt") as trt, Segmenter(directory, "onnxruntime") as ort:
        assert trt.backend.name == "tensorrt"
        for a, b in zip(trt.segment_clip(images, waveform, rate), ort.segment_clip(images, waveform, rate)):
            diff = np.abs(a.probabilities - b.probabilities)
            print(f"tensorrt vs onnxruntime: max abs diff {diff.max():.2e}, mean {diff.mean():.2e}")
            assert np.mean(a.mask == b.mask) > 0.99


@pytest.mark.slow
def test_plugin_scan_artifact_matches_the_lowered_one(artifact, segmenter, tmp_path_factory):
    """An artifact exported with ``--scan plugin`` (avs::SelectiveScan nodes, served by our ONNX Runtime custom-op
    library) segments like the default stock-op one built from the same seeded random weights."""
    import subprocess
    import sys

    manifest = load_manifest(artifact)
    directory = tmp_path_factory.mktemp("plugin") / MODEL
    subprocess.run([sys.executable, "-m", "export.build_engine", "--model", MODEL, "--out", str(directory),
                    "--scan", "plugin", "--seed", str(manifest.model.weights_seed), "--no-engine"],
                   cwd=REPO, check=True, capture_output=True)
    with Segmenter(directory, "onnxruntime", say=lambda line: None) as plugin:
        assert load_manifest(directory).scan == "plugin"
        assert plugin._temporal.uses_custom_ops
        images, waveform, rate = _clip(3)
        for a, b in zip(plugin.segment_clip(images, waveform, rate), segmenter.segment_clip(images, waveform, rate)):
            diff = np.abs(a.probabilities - b.probabilities)
            print(f"plugin vs lowered scan: max abs diff {diff.max():.2e}")
            assert diff.max() < 1e-4


@pytest.mark.slow
def test_gumbel_input_artifact_is_fed_reproducible_noise(tmp_path_factory):
    """An artifact exported with ``--gumbel input`` gets uniform noise derived from (seed, frame timestamp): the
    same frames give the same masks live and offline, and another seed gives other probabilities."""
    import subprocess
    import sys

    directory = tmp_path_factory.mktemp("gumbel") / MODEL
    subprocess.run([sys.executable, "-m", "export.build_engine", "--model", MODEL, "--out", str(directory),
                    "--gumbel", "input", "--no-engine"], cwd=REPO, check=True, capture_output=True)
    images, waveform, rate = _clip(2)
    with Segmenter(directory, "onnxruntime", say=lambda line: None) as seg:
        assert any(t.name == "gumbel_noise" for t in seg.manifest.graph("decoder").inputs)
        offline = seg.segment_clip(images, waveform, rate)
        seg.push_audio(waveform, rate, 0.0)
        live = [seg.segment(image, t) for image, t in zip(images, training_timestamps(2))]
        assert all(np.array_equal(a.probabilities, b.probabilities) for a, b in zip(live, offline))
    with Segmenter(directory, "onnxruntime", say=lambda line: None, seed=1) as other:
        reseeded = other.segment_clip(images, waveform, rate)
        assert not np.array_equal(reseeded[0].probabilities, offline[0].probabilities)
