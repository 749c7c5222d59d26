"""COMBO in the torch-free runtime: the Maskige of each frame from a mask source, through the Segmenter, avs-stream
and avs-eval, on the real ``combo-test`` artifact (conftest's ``combo_artifact``) run by ONNX Runtime."""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from runtime.cli import main as stream_main
from runtime.datasets.avsbench import AVSBench
from runtime.datasets.synth import write_dataset
from runtime.eval_cli import EvalExit, main as eval_main
from runtime.evaluate import PublishedMaskiges, segmenter_predictor
from runtime.manifest import load_manifest
from runtime.mask_sources import MaskSourceError, OversegmentMaskSource, PrecomputedMaskige, maskige_path
from runtime.maskige import ADE20K_PALETTE, MASKIGE_COLORS, paint_ids
from runtime.segmenter import Segmenter

REPO = Path(__file__).resolve().parents[1]


def _ids(seed: int, size: int) -> np.ndarray:
    """A Maskige id map painted from a few random boxes (the official painting, ``paint_ids``)."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((6, size, size), bool)
    for mask in masks:
        top, left = rng.integers(0, size // 2, 2)
        height, width = rng.integers(size // 8, size // 2, 2)
        mask[top:top + height, left:left + width] = True
    return paint_ids(masks, size)


def _write_maskige(path: Path, ids: np.ndarray) -> np.ndarray:
    """Save ``ids`` as the published files are (palette PNG, ADE20K colours); returns its RGB Maskige."""
    Image = pytest.importorskip("PIL.Image")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(ids)
    image.putpalette(ADE20K_PALETTE.tobytes())
    image.save(path)
    return MASKIGE_COLORS[ids]


def _normalise(rgb: np.ndarray, manifest) -> np.ndarray:
    """``[1, 3, R, R]`` as COMBO's loader: RGB / 255, ImageNet mean and std (written out here, not the runtime's)."""
    v = manifest.video
    x = (rgb.astype(np.float32) * np.float32(v.value_scale) - np.float32(v.mean)) / np.float32(v.std)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


@functools.lru_cache(maxsize=2)
def _session(artifact: Path) -> ort.InferenceSession:
    path = artifact / load_manifest(artifact).graph("full").file
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _full_graph(artifact: Path, frame_rgb: np.ndarray, maskige_rgb: np.ndarray, log_mel: np.ndarray) -> np.ndarray:
    """The artifact's full graph on one frame, straight through ONNX Runtime: sigmoid of the binary logit."""
    manifest = load_manifest(artifact)
    feeds = {"frames": _normalise(frame_rgb, manifest), "maskige": _normalise(maskige_rgb, manifest),
             "log_mel": log_mel[None].astype(np.float32)}
    logits = _session(artifact).run(None, feeds)[0]
    return 1.0 / (1.0 + np.exp(-logits[0, 0].astype(np.float64)))


class _Recording(PrecomputedMaskige):
    """A precomputed source that records the timestamps it was asked for and whether it was closed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.asked: list[float] = []
        self.closed = False

    def maskige(self, frame_rgb, timestamp):
        self.asked.append(timestamp)
        return super().maskige(frame_rgb, timestamp)

    def close(self):
        self.closed = True


# -- the Segmenter ---------------------------------------------------------------------------------------------------

def test_segmenter_feeds_each_frames_maskige_as_the_full_graph_takes_it(combo_artifact, tmp_path):
    size = load_manifest(combo_artifact).video.resolution
    rng = np.random.default_rng(0)
    frames_rgb = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(3)]
    log_mel = rng.normal(0, 1, (3, 1, 96, 64)).astype(np.float32)
    maskiges = {}
    for video, seed in (("a", 10), ("b", 20)):
        maskiges[video] = [_write_maskige(tmp_path / video / f"{video}_{n}_mask_color.png", _ids(seed + n, size))
                           for n in (1, 2, 3)]
    frames_bgr = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames_rgb]
    probabilities = {}
    for video in ("a", "b"):
        source = _Recording(tmp_path / video, size=size)
        with Segmenter(combo_artifact, "onnxruntime", mask_source=source, say=lambda line: None) as segmenter:
            results = segmenter.segment_log_mel(frames_bgr, log_mel)
        assert source.closed and len(source.asked) == 3
        probabilities[video] = np.stack([r.probabilities for r in results])
        for i, result in enumerate(results):  # frame i with file i + 1, exactly as the graph takes them
            expected = _full_graph(combo_artifact, frames_rgb[i], maskiges[video][i], log_mel[i])
            np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    assert np.abs(probabilities["a"] - probabilities["b"]).max() > 1e-3  # the Maskige reaches the model


def test_default_source_is_announced_and_live_equals_recorded(combo_artifact):
    lines: list[str] = []
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for _ in range(2)]
    waveform = rng.normal(0, 0.1, 32000).astype(np.float32)
    with Segmenter(combo_artifact, "onnxruntime", say=lines.append) as segmenter:
        assert isinstance(segmenter.mask_source, OversegmentMaskSource)
        recorded = segmenter.segment_clip(frames, waveform, 16000, timestamps=[1.0, 2.0])
        segmenter.push_audio(waveform, 16000, 0.0)
        live = [segmenter.segment(frame, t) for frame, t in zip(frames, (1.0, 2.0))]
    announced = [line for line in lines if line.startswith("mask source: ")]
    assert len(announced) == 1 and "overseg FALLBACK" in announced[0] and "the artifact's default" in announced[0]
    assert "--mask-source" in announced[0]
    for a, b in zip(recorded, live):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        assert a.mask.shape == (48, 80)


def test_wrong_mask_source_and_model_combinations_are_refused(combo_artifact, tiny_artifact, tmp_path):
    with pytest.raises(MaskSourceError, match="selm-test .* has no Maskige input .*drop --mask-source"):
        Segmenter(tiny_artifact, "onnxruntime", mask_source="overseg", say=lambda line: None)
    with pytest.raises(MaskSourceError, match="mask source 'sam' cannot be opened: unknown mask source"):
        Segmenter(combo_artifact, "onnxruntime", mask_source="sam", say=lambda line: None)
    with pytest.raises(MaskSourceError, match="does not exist"):
        Segmenter(combo_artifact, "onnxruntime", mask_source=f"precomputed:{tmp_path / 'nowhere'}",
                  say=lambda line: None)


# -- avs-stream ------------------------------------------------------------------------------------------------------

def test_avs_stream_runs_combo_with_an_oversegmentation_source(combo_artifact, tmp_path):
    jsonl = tmp_path / "combo.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "--demo", "--model-dir", str(combo_artifact), "--mask-source",
         "overseg", "--duration", "1", "--headless", "--jsonl", str(jsonl), "--output", str(tmp_path / "out.mp4")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "AVS_EDGE_CACHE": str(tmp_path / "cache")},
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mask source: overseg FALLBACK" in result.stderr and "the artifact's default" not in result.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 8 and all(0.0 <= r["mask_area"] <= 1.0 for r in records)  # the demo clip is 8 fps


def test_avs_stream_stops_cleanly_past_the_last_precomputed_maskige(combo_artifact, tmp_path, monkeypatch, capsys):
    """One published Maskige (second 0) for a longer video: the frames of second 0 are segmented with it, then the
    run ends with a usage error naming the missing file, its outputs finalised."""
    monkeypatch.setenv("AVS_EDGE_CACHE", str(tmp_path / "cache"))
    _write_maskige(tmp_path / "maskiges" / "v_1_mask_color.png", _ids(7, 64))
    jsonl = tmp_path / "out.jsonl"
    code = stream_main(["--demo", "--model-dir", str(combo_artifact), "--mask-source",
                        f"precomputed:{tmp_path / 'maskiges'}", "--headless", "--jsonl", str(jsonl),
                        "--output", str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "mask source: precomputed Maskiges: 1 files" in err and "segmented 8 frames" in err
    assert "--mask-source: no Maskige for the frame at 1.000 s: no precomputed Maskige for frame 1" in err
    assert str(tmp_path / "maskiges" / "v_2_mask_color.png") in err
    assert len(jsonl.read_text().splitlines()) == 8


@pytest.mark.parametrize("args, message", [
    (["--mask-source", "sam"], "--mask-source: unknown mask source 'sam': use precomputed:DIR"),
    (["--mask-source", "precomputed:{tmp}/nowhere"], "Maskige folder {tmp}/nowhere does not exist"),
    (["--mask-source", "onnx:{tmp}/sam.onnx@0"], "the rate must be a positive number"),
])
def test_avs_stream_checks_the_mask_source_before_the_model_loads(args, message, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code = stream_main(["--source", str(tmp_path / "none.mp4"), "--model-dir", str(tmp_path / "no-model"), *args])
    assert code == 2 and message.replace("{tmp}", str(tmp_path)) in capsys.readouterr().err


def test_avs_stream_refuses_a_mask_source_for_a_model_without_maskige(tiny_artifact, tmp_path, capsys):
    code = stream_main(["--source", str(tmp_path / "none.mp4"), "--model-dir", str(tiny_artifact),
                        "--mask-source", "overseg"])
    assert code == 2
    assert "--mask-source: selm-test" in capsys.readouterr().err


# -- avs-eval --------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s4_with_maskiges(tmp_path_factory) -> Path:
    """Two avs-synth S4 test clips, each frame with a published-style Maskige PNG (224 px) at its maskige_path."""
    root = tmp_path_factory.mktemp("synth")
    write_dataset(root, "s4", 2, seed=5, split="test", progress=False)
    for n, frame in enumerate(sorted((root / "Single-source" / "s4_data" / "visual_frames").rglob("*.png"))):
        _write_maskige(maskige_path(frame), _ids(100 + n, 224))
    return root


def test_published_maskiges_reach_each_frame_of_each_clip(combo_artifact, s4_with_maskiges):
    manifest = load_manifest(combo_artifact)
    size = manifest.video.resolution
    data = AVSBench(s4_with_maskiges, "s4", "test", size)
    with Segmenter(combo_artifact, "onnxruntime", mask_source=PublishedMaskiges(size),
                   say=lambda line: None) as segmenter:
        predict = segmenter_predictor(segmenter)
        for clip in data:
            scores = predict(clip)
            for i in (0, 4):
                published = PrecomputedMaskige(maskige_path(clip.frame_paths[i]).parent, size=size)
                maskige = published.path(i)
                assert maskige.name == f"{clip.name}_{i + 1}_mask_color.png"
                expected = _full_graph(combo_artifact, clip.frames[i][:, :, ::-1],
                                       published.maskige(np.zeros((1, 1, 3), np.uint8), float(i)), clip.log_mel[i])
                np.testing.assert_allclose(scores[i], expected, atol=1e-5)


def test_avs_eval_scores_combo_with_the_published_maskiges(combo_artifact, s4_with_maskiges, tmp_path, capsys):
    code = eval_main(["--model-dir", str(combo_artifact), "--data", str(s4_with_maskiges), "--backend",
                      "onnxruntime", "--mask-source", "precomputed", "--json", str(tmp_path / "r.json"), "--quiet"])
    out = capsys.readouterr()
    assert code == EvalExit.OK, out.err
    assert "Maskiges: published Maskiges of the data set" in out.out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["clips_evaluated"] == 2
    assert report["mask_source"]["spec"] == "precomputed" and report["mask_source"]["default"] is False

    code = eval_main(["--model-dir", str(combo_artifact), "--data", str(s4_with_maskiges), "--backend",
                      "onnxruntime", "--json", str(tmp_path / "d.json"), "--quiet"])
    out = capsys.readouterr()
    assert code == EvalExit.OK, out.err
    assert "the artifact's default" in out.err
    default = json.loads((tmp_path / "d.json").read_text())["mask_source"]
    assert default["spec"] == "overseg" and default["default"] is True and "overseg" in default["description"]


def test_avs_eval_names_a_missing_maskige_file(combo_artifact, s4_with_maskiges, tmp_path, capsys):
    frame = sorted((s4_with_maskiges / "Single-source" / "s4_data" / "visual_frames").rglob("*_3.png"))[1]
    missing = maskige_path(frame)
    kept = missing.read_bytes()
    missing.unlink()
    try:
        code = eval_main(["--model-dir", str(combo_artifact), "--data", str(s4_with_maskiges), "--backend",
                          "onnxruntime", "--mask-source", "precomputed", "--quiet"])
    finally:
        missing.write_bytes(kept)
    assert code == EvalExit.DATA
    assert f"missing Maskige {missing}" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--mask-source", "precomputed:/data/pre_SAM_mask"], "write --mask-source precomputed"),
    (["--mask-source", "sam"], "unknown mask source 'sam'"),
])
def test_avs_eval_mask_source_flag_errors(combo_artifact, s4_with_maskiges, extra, message, capsys):
    code = eval_main(["--model-dir", str(combo_artifact), "--data", str(s4_with_maskiges), *extra, "--quiet"])
    assert code == EvalExit.USAGE and message in capsys.readouterr().err


def test_avs_eval_refuses_a_mask_source_without_a_maskige_model(tiny_artifact, s4_with_maskiges, capsys):
    code = eval_main(["--model-dir", str(tiny_artifact), "--data", str(s4_with_maskiges), "--mask-source", "overseg",
                      "--quiet"])
    assert code == EvalExit.USAGE and "selm-test has no Maskige input" in capsys.readouterr().err
    code = eval_main(["--predictions", "masks", "--task", "s4", "--data", str(s4_with_maskiges), "--mask-source",
                      "overseg", "--quiet"])
    assert code == EvalExit.USAGE and "not saved --predictions" in capsys.readouterr().err
