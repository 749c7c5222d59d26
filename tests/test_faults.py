"""The fault matrix: every bad input a user or a tampered download can bring, with the exit status (or exception)
it must give, and what must be true of the outputs afterwards (complete, or absent; never half-written).

Each row names the fault. CLI rows run ``avs-stream`` / ``python -m export.build_engine`` in-process on a copy of
the tiny ``selm-test`` artifact; library rows drive ``runtime.Segmenter`` directly.
"""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.cli import ExitCode
from runtime.cli import main as avs_stream
from runtime.demo_clip import make_clip
from runtime.segmenter import Segmenter, SegmenterClosed

ARTIFACT_ERROR = int(ExitCode.ARTIFACTS)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("faults") / "clip.mp4", seconds=1.5, fps=4, width=160, height=120)


@pytest.fixture
def art(tiny_artifact, tmp_path):
    """A private copy of the tiny artifact, free to break."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "artifact"))


def _edit_manifest(art: Path, edit) -> None:
    import json

    data = json.loads((art / "manifest.json").read_text())
    edit(data)
    (art / "manifest.json").write_text(json.dumps(data))


def _random_same_size(art: Path) -> None:
    target = art / "temporal.onnx.data" if (art / "temporal.onnx.data").exists() else art / "temporal.onnx"
    target.write_bytes(os.urandom(target.stat().st_size))


def _constant_decoder(art: Path) -> None:
    """A valid ONNX graph with the decoder's interface that answers 'everything is foreground'."""
    real = onnx.load(str(art / "decoder.onnx"), load_external_data=False)
    out = real.graph.output[0]
    dims = [d.dim_value or 1 for d in out.type.tensor_type.shape.dim]
    const = helper.make_node("Constant", [], [out.name],
                             value=helper.make_tensor("c", TensorProto.FLOAT, dims, [9.0] * int(np.prod(dims))))
    graph = helper.make_graph([const], "constant", list(real.graph.input), [out])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(art / "decoder.onnx"))


def _outside_path(path: str):
    def edit(art: Path) -> None:
        outside = art.parent / "outside"
        outside.mkdir(exist_ok=True)
        shutil.copy2(art / "decoder.onnx", outside / "decoder.onnx")
        _edit_manifest(art, lambda d: d["graphs"]["decoder"].update(file=path))
    return edit


def _symlink_out(art: Path) -> None:
    outside = art.parent / "elsewhere.onnx"
    shutil.move(art / "decoder.onnx", outside)
    (art / "decoder.onnx").symlink_to(outside)


def _declared_shape(art: Path) -> None:
    def edit(data):
        spec = data["graphs"]["decoder"]["inputs"][0]
        spec["shape"] = [s + 1 if isinstance(s, int) else s for s in spec["shape"]]
    _edit_manifest(art, edit)


def _truncate(name: str):
    def edit(art: Path) -> None:
        data = (art / name).read_bytes()
        (art / name).write_bytes(data[:len(data) // 3])
    return edit


# fault name -> (artifact edit, expected exit status, text the message must contain)
ARTIFACT_FAULTS = {
    "external data replaced by random bytes of the same size": (_random_same_size, ARTIFACT_ERROR, "does not match"),
    "decoder replaced by a valid constant-output graph": (_constant_decoder, ARTIFACT_ERROR, "decoder.onnx"),
    "graph path climbing out of the artifact": (_outside_path("../outside/decoder.onnx"), ARTIFACT_ERROR,
                                                 "graphs.decoder.file"),
    "graph path absolute (/etc/passwd)": (_outside_path("/etc/passwd"), ARTIFACT_ERROR, "is absolute"),
    "graph file a symlink out of the artifact": (_symlink_out, ARTIFACT_ERROR, "outside the artifact directory"),
    "declared input shape disagrees with the graph": (_declared_shape, ARTIFACT_ERROR, "does not match its manifest"),
    "truncated graph file": (_truncate("decoder.onnx"), ARTIFACT_ERROR, "python -m export.build_engine"),
    "manifest missing": (lambda art: (art / "manifest.json").unlink(), ARTIFACT_ERROR, "build it with"),
    "manifest unreadable": (lambda art: (art / "manifest.json").write_text("{"), ARTIFACT_ERROR, "cannot read"),
}


@pytest.mark.parametrize("fault", list(ARTIFACT_FAULTS))
def test_broken_artifact(fault, art, clip, tmp_path, capsys):
    edit, status, text = ARTIFACT_FAULTS[fault]
    edit(art)
    out = tmp_path / "out.mp4"
    code = avs_stream(["--source", str(clip.path), "--model-dir", str(art), "--output", str(out), "--headless"])
    err = capsys.readouterr().err
    assert code == status, err
    assert text in err and "Traceback" not in err
    assert not out.exists()                                          # refused before any output was opened


def _under_a_file(tmp_path: Path) -> str:
    (tmp_path / "plain").write_text("x")
    return str(tmp_path / "plain" / "out.mp4")


OUTPUT_FAULTS = {
    "--output under a file": lambda t: ["--output", _under_a_file(t)],
    "--output at a directory": lambda t: ["--output", str(t)],
    "--output in /proc": lambda t: ["--output", "/proc/avs-out.mp4"],
    "--jsonl under a file": lambda t: ["--jsonl", _under_a_file(t)],
    "--save-masks under a file": lambda t: ["--save-masks", _under_a_file(t)],
    "--save-masks in /proc": lambda t: ["--save-masks", "/proc/avs-masks"],
}


@pytest.mark.parametrize("fault", list(OUTPUT_FAULTS))
def test_unwritable_output_fails_before_the_model_loads(fault, clip, tmp_path, capsys):
    flags = OUTPUT_FAULTS[fault](tmp_path)
    code = avs_stream(["--source", str(clip.path), "--model-dir", str(tmp_path / "no-artifact"), "--headless", *flags])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE, err                                # not 5: the (missing) model was never opened
    assert "Traceback" not in err


def _stream_status(argv) -> int:
    try:
        return avs_stream(argv)
    except SystemExit as exc:                                        # argparse's own usage errors
        return int(exc.code)


CLI_FAULTS = {
    "unknown flag value (--backend cuda9)": (["--backend", "cuda9"], ExitCode.USAGE),
    "alpha out of range": (["--alpha", "2"], ExitCode.USAGE),
    "threshold out of range": (["--threshold", "1.5"], ExitCode.USAGE),
    "no input chosen": ([], ExitCode.USAGE),
    "missing source file": (["--source", "/nonexistent/clip.mp4"], ExitCode.VIDEO_SOURCE),
    "missing microphone": (["--mic", "no-such-microphone"], ExitCode.AUDIO_SOURCE),
}


@pytest.mark.parametrize("fault", list(CLI_FAULTS))
def test_bad_invocation(fault, tiny_artifact, clip, capsys):
    flags, status = CLI_FAULTS[fault]
    argv = list(flags)
    if "--source" not in argv and fault != "no input chosen":
        argv += ["--source", str(clip.path)]
    if fault != "no input chosen":
        argv += ["--model-dir", str(tiny_artifact)]
    code = _stream_status(argv + ["--headless"])
    assert code == status, capsys.readouterr().err


def test_truncated_source_ends_with_a_warning_and_complete_outputs(tiny_artifact, tmp_path, capsys):
    from tests.test_capture import _faststart_clip

    whole, cut, out = tmp_path / "whole.mp4", tmp_path / "cut.mp4", tmp_path / "out.mp4"
    _faststart_clip(whole, frames=24)
    cut.write_bytes(whole.read_bytes()[:int(whole.stat().st_size * 0.45)])
    code = avs_stream(["--source", str(cut), "--model-dir", str(tiny_artifact), "--output", str(out), "--headless",
                       "--mic", "none"])
    err = capsys.readouterr().err
    assert code == ExitCode.SOURCE_INCOMPLETE, err
    assert "truncated or corrupt" in err
    with av.open(str(out)) as container:                             # the output is complete and playable
        frames = sum(1 for _ in container.decode(video=0))
    assert 0 < frames < 24


# -- export side: python -m export.build_engine -----------------------------------------------------------------
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def _build(argv, capsys) -> tuple[int, str]:
    from export.build_engine import main as build_engine

    try:
        code = build_engine(argv)
    except SystemExit as exc:
        code = int(exc.code)
    return code, capsys.readouterr().err


def test_random_bytes_checkpoint_is_named_and_never_suggests_full_unpickling(tmp_path, capsys):
    ckpt = tmp_path / "random.pth"
    ckpt.write_bytes(os.urandom(4096))
    out = tmp_path / "out"
    code, err = _build(["--model", "selm-test", "--checkpoint", str(ckpt), "--out", str(out)], capsys)
    assert code == 1 and "random.pth" in err
    assert "weights_only=False" not in err and "weights_only" not in err.replace("weights_only=True", "")
    assert not out.exists()                                          # a failed export leaves no --out behind


def test_checkpoint_that_would_run_code_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "evil.pth"
    ckpt.write_bytes(pickle.dumps({"state_dict": _RunsCode()}))
    code, err = _build(["--model", "selm-test", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "evil.pth" in err
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_bad_precision_exits_as_documented(tmp_path, capsys):
    from export.build_engine import build_parser

    code, err = _build(["--model", "selm-test", "--precision", "int4", "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "1 bad input (flags" in build_parser().epilog
    assert "int4" in err and not (tmp_path / "o").exists()


# -- library: runtime.Segmenter -------------------------------------------------------------------------------
IMAGE = np.full((48, 64, 3), 90, np.uint8)


def test_segmenter_survives_a_backwards_timestamp(tiny_artifact):
    with Segmenter(tiny_artifact, "onnxruntime", audio=False, say=lambda line: None) as seg:
        seg.push_frame(IMAGE, 2.0)
        seg.wait(timeout=60)
        with pytest.raises(ValueError):
            seg.push_frame(IMAGE, 1.0)
        seg.push_frame(IMAGE, 3.0)
        assert seg.wait(after=0, timeout=60).timestamp == 3.0


def test_segmenter_after_close(tiny_artifact):
    seg = Segmenter(tiny_artifact, "onnxruntime", audio=False, say=lambda line: None)
    seg.close()
    for call in (lambda: seg.push_frame(IMAGE, 1.0), lambda: seg.latest(), lambda: seg.reset(),
                 lambda: seg.push_audio(np.zeros(10, np.float32), 16000), lambda: seg.segment(IMAGE, 1.0)):
        with pytest.raises(SegmenterClosed):
            call()
