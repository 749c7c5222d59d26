"""avs-eval end to end (ONNX Runtime on the session's selm-s4-r50 artifact), its errors, --predictions, and the
PyTorch-side figures of the same weights."""
import json

import numpy as np
import pytest

from runtime.eval_cli import EvalExit, main as eval_main
from test_datasets import write_avss_tree, write_s4_tree


@pytest.fixture(scope="module")
def s4_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("s4")
    write_s4_tree(root, [("a1", "dog", "test"), ("b2quiet", "car", "test"), ("d4", "dog", "train")])
    return root


def _eval(capsys, *argv):
    code = eval_main([*map(str, argv), "--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def ort_run(artifact, s4_data, tmp_path_factory):
    """avs-eval on the artifact through ONNX Runtime: (exit status, stdout, stderr, report, masks folder)."""
    import contextlib
    import io

    out_dir = tmp_path_factory.mktemp("ort")
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = eval_main(["--model-dir", str(artifact), "--data", str(s4_data), "--backend", "onnxruntime", "--quiet",
                          "--json", str(out_dir / "ort.json"), "--save-masks", str(out_dir / "masks")])
    report = json.loads((out_dir / "ort.json").read_text()) if code == 0 else None
    return code, stdout.getvalue(), stderr.getvalue(), report, out_dir / "masks"


def test_avs_eval_scores_the_artifact(ort_run, s4_data, tmp_path, capsys):
    code, out, err, report, masks = ort_run
    assert code == 0, err
    assert "official (2 clips per batch, 1 batches)" in out and "per frame" in out
    assert report["task"] == "s4" and report["clips_evaluated"] == 2
    assert [c["name"] for c in report["clips"]] == ["a1", "b2quiet"]
    assert "ONNX Runtime" in report["backend"] and report["precision"] == "fp32"
    assert report["artifact"]["model"] == "selm-s4-r50" and report["artifact"]["random_weights"] is True
    assert "onnxruntime" in report["versions"]
    for protocol in ("official", "per_frame"):
        assert 0.0 <= report["metrics"][protocol]["M_J"] <= 1.0

    # the saved masks score as the model did (M_J thresholds at 0.5 either way)
    code, out, err = _eval(capsys, "--predictions", masks, "--task", "s4", "--data", s4_data,
                           "--json", tmp_path / "saved.json")
    assert code == 0, err
    saved = json.loads((tmp_path / "saved.json").read_text())
    assert saved["metrics"]["per_frame"]["M_J"] == pytest.approx(report["metrics"]["per_frame"]["M_J"], abs=1e-9)


def test_pytorch_side_gives_the_same_figures(ort_run, artifact, s4_data, tmp_path):
    code, _, err, report, _ = ort_run
    assert code == 0, err
    from export.evaluate import main as torch_main
    from runtime.manifest import load_manifest

    seed = load_manifest(artifact).model.weights_seed                 # the same random draw as the artifact's
    torch_path = tmp_path / "torch.json"
    assert torch_main(["--model", "selm-s4-r50", "--seed", str(seed), "--data", str(s4_data), "--quiet",
                       "--json", str(torch_path)]) == 0
    torch_report = json.loads(torch_path.read_text())
    for protocol in ("official", "per_frame"):
        for metric in ("M_J", "M_F"):
            assert torch_report["metrics"][protocol][metric] == pytest.approx(
                report["metrics"][protocol][metric], abs=0.002), (protocol, metric)


def test_segment_log_mel_equals_segment_clip(artifact):
    from runtime.audio import waveform_to_examples
    from runtime.segmenter import Segmenter

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    waveform = (rng.normal(scale=2000, size=16000 * 3)).astype(np.int16)
    with Segmenter(artifact, backend="onnxruntime", say=lambda line: None) as seg:
        by_wave = seg.segment_clip(frames, waveform, 16000)
        by_mel = seg.segment_log_mel(frames, waveform_to_examples(waveform, 16000))
        with pytest.raises(ValueError, match=r"log_mel must be \[T, 1, 96, 64\]"):
            seg.segment_log_mel(frames, np.zeros((2, 1, 96, 64)))
    for a, b in zip(by_wave, by_mel):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)


def test_flag_and_data_errors(s4_data, tmp_path, capsys):
    code, _, err = _eval(capsys, "--data", s4_data)
    assert code == EvalExit.USAGE and "--model-dir ART" in err
    code, _, err = _eval(capsys, "--predictions", tmp_path, "--data", s4_data)
    assert code == EvalExit.USAGE and "--task" in err
    code, _, err = _eval(capsys, "--predictions", tmp_path, "--task", "s4", "--data", s4_data, "--limit", "0")
    assert code == EvalExit.USAGE and "--limit" in err
    code, _, err = _eval(capsys, "--model-dir", tmp_path / "nowhere", "--data", s4_data)
    assert code == EvalExit.ARTIFACTS and "nowhere" in err
    code, _, err = _eval(capsys, "--predictions", tmp_path / "none", "--task", "s4", "--data", s4_data)
    assert code == EvalExit.DATA and "missing prediction" in err and "a1" in err
    code, _, err = _eval(capsys, "--predictions", tmp_path, "--task", "ms3", "--data", s4_data)
    assert code == EvalExit.DATA and "ms3_meta_data.csv" in err


def test_artifact_task_mismatch(artifact, s4_data, tmp_path, capsys):
    code, _, err = _eval(capsys, "--model-dir", artifact, "--data", s4_data, "--task", "avss")
    assert code == EvalExit.USAGE and "binary" in err
    code, _, err = _eval(capsys, "--model-dir", artifact, "--data", tmp_path)
    assert code == EvalExit.DATA and "s4_meta_data.csv" in err


def test_avss_predictions_perfect_labels(tmp_path, capsys):
    truth = write_avss_tree(tmp_path / "data", [("u1", "v1s", "test"), ("u2", "v2", "test")])
    from runtime.datasets.avsbench import AVSBench

    data = AVSBench(tmp_path / "data", "avss")
    for clip in data:
        (tmp_path / "pred" / clip.name).mkdir(parents=True)
        for i in range(clip.num_frames):
            np.save(tmp_path / "pred" / clip.name / f"{i}.npy", clip.masks[i])
    assert len(truth) == 2
    code, out, err = _eval(capsys, "--predictions", tmp_path / "pred", "--task", "avss", "--data", tmp_path / "data",
                           "--json", tmp_path / "r.json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "r.json").read_text())["metrics"]
    for protocol in ("official", "per_frame"):  # perfect on the classes that occur, 0 for the others (of 71)
        row = metrics[protocol]
        assert row["M_J"] == pytest.approx(row["classes_present"] / 71)
        assert row["M_F"] == pytest.approx(row["classes_present"] / 71)
    assert metrics["official"]["padded_frames"] == 5
