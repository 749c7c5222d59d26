"""``python -m export.build_engine`` end to end (selm-s4-r50, random weights, exported once per session), bad input.

The session's artifact is the CLI's output (``tests/conftest.py``: ``artifact``, exported once and cached); these
tests check it independently: ONNX Runtime against a PyTorch model rebuilt from the recorded seed, on inputs the
export never saw, and the streaming split against the full graph.
"""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.build_engine import (UserError, build_artifact, build_parser, engine_environment, engine_step,
                                 load_models, main)
from plugins import scan_contract
from runtime.engine_cache import graph_sha256
from runtime.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
MODEL = "selm-s4-r50"
SEED = 7
T, R = 5, 224
_EXPORTS: dict[tuple[str, ...], SimpleNamespace] = {}


def exported_artifact(tmp_path_factory, *extra: str) -> SimpleNamespace:
    """Run the CLI (seed ``SEED``) once per distinct argument list in this test process; ``out`` and ``proc``."""
    if extra not in _EXPORTS:
        out = tmp_path_factory.mktemp("artifact")
        cmd = [sys.executable, "-m", "export.build_engine", "--model", "selm", "--out", str(out), "--seed", str(SEED),
               *extra]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200)
        _EXPORTS[extra] = SimpleNamespace(out=out, proc=proc)
    return _EXPORTS[extra]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _clip(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"frames": rng.standard_normal((T, 3, R, R), dtype=np.float32),
            "log_mel": rng.uniform(-4.6, 3.0, size=(T, 1, 96, 64)).astype(np.float32)}


def _torch_models(manifest):
    """PyTorch SelM + VGGish with the artifact's weights (its checkpoints, or its random-weight seed)."""
    from export.models import create_model

    info = manifest.model
    torch.manual_seed(info.weights_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (create_model(info.name, info.checkpoint.path if info.checkpoint else None),
                create_model("vggish", info.vggish_checkpoint.path if info.vggish_checkpoint else None))


# -- the artifact -------------------------------------------------------------------------------------------------

def test_random_weights_are_announced():
    lines = []
    load_models(MODEL, None, None, "none", lines.append)
    text = "\n".join(lines)
    assert "RANDOM weights" in text and "no --vggish: vggish has random weights" in text


@pytest.mark.parametrize("flags", [["--no-engine"], []])
def test_engine_step_is_skipped_in_one_line(artifact, flags):
    args = build_parser().parse_args(["--model", "selm", *flags])
    env = engine_environment(args, "lowered")
    if not env.reason:
        pytest.skip("TensorRT and a GPU are present: engines would be built")
    lines = []
    manifest = load_manifest(artifact)
    paths = {role: artifact / g.file for role, g in manifest.graphs.items()}
    status = engine_step(args, env, artifact, paths, {}, lines.append)
    assert lines == [f"engine build skipped: {env.reason}"] and not status.built
    if not flags:                                       # the CLI's own run recorded the same reason
        assert manifest.engine.reason == env.reason and not manifest.engine.built


def test_manifest_describes_every_graph(artifact):
    m = load_manifest(artifact)
    assert (m.model.name, m.model.setting, m.model.backbone) == (MODEL, "s4", "r50")
    assert m.model.random_weights and m.model.checkpoint is None and m.model.gumbel == "none"
    assert (m.opset, m.scan, m.precision) == (18, "lowered", "fp32")
    shapes = {role: ({t.name: t.shape for t in g.inputs}, {t.name: t.shape for t in g.outputs})
              for role, g in m.graphs.items()}
    maps = {f"map{i}": [1, 256, R // s, R // s] for i, s in enumerate((4, 8, 16, 32), start=1)}
    assert shapes["full"] == ({"frames": [T, 3, R, R], "log_mel": [T, 1, 96, 64]}, {"logits": [T, 1, 224, 224]})
    assert shapes["encoder"] == ({"frame": [1, 3, R, R], "log_mel": [1, 1, 96, 64]},
                                 {**maps, "pooled": [1, 4, 256], "audio": [1, 256]})
    assert shapes["temporal"] == ({"pooled": [T, 4, 256], "audio": [T, 256]},
                                  {"gates": [T, 4, 256], "audio_out": [T, 256]})
    assert shapes["decoder"] == ({**maps, "gates": [1, 4, 256], "audio_out": [1, 256]}, {"logits": [1, 1, 224, 224]})
    for graph in m.graphs.values():
        assert all(t.dtype == "float32" for t in graph.inputs + graph.outputs)
        assert graph.sha256 == graph_sha256(artifact / graph.file)
    assert (m.video.resolution, m.video.frames_per_clip, m.video.frame_rate_hz) == (R, T, 1.0)
    assert m.video.mean == [0.485, 0.456, 0.406] and m.video.std == [0.229, 0.224, 0.225]
    a = m.audio
    assert (a.sample_rate, a.window_length, a.hop_length, a.fft_length, a.mel_bins) == (16000, 400, 160, 512, 64)
    assert (a.mel_min_hz, a.mel_max_hz, a.log_offset) == (125, 7500, 0.01)
    assert (a.example_frames, a.example_seconds) == (96, 0.96)
    assert (m.output.kind, m.output.threshold, m.output.size) == ("binary", 0.5, [224, 224])
    assert (m.streaming.window, m.streaming.decode_index, m.streaming.carry) == (T, T - 1, ["pooled", "audio"])
    assert [v.graph for v in m.validation] == ["full", "encoder", "temporal", "decoder", "streaming"]
    for record in m.validation:
        assert record.passed and record.max_abs_diff <= record.atol and record.seed == m.model.weights_seed
    assert m.validation[0].mask_agreement == 1.0 or m.validation[0].mask_agreement > 0.999
    assert {"torch", "onnx", "onnxruntime", "onnxscript"} <= set(m.tools)


def test_graphs_carry_metadata_but_no_local_paths(artifact):
    model = onnx.load(str(artifact / "decoder.onnx"), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["avs.model"] == MODEL and props["avs.graph"] == "decoder"
    node_keys = {p.key for node in model.graph.node for p in node.metadata_props}
    assert "pkg.torch.onnx.stack_trace" not in node_keys and str(REPO) not in str(model.graph)


def test_onnx_runtime_equals_pytorch_on_new_inputs(artifact):
    selm, vggish = _torch_models(load_manifest(artifact))       # the CLI's weights, rebuilt
    clip = _clip(seed=1)
    with torch.inference_mode():
        expected = selm(torch.from_numpy(clip["frames"]), vggish(torch.from_numpy(clip["log_mel"]))).numpy()
    got = _session(artifact / "model.onnx").run(["logits"], clip)[0]
    diff = np.abs(got - expected)
    print(f"ORT vs PyTorch: max abs diff {diff.max():.3g}, mean {diff.mean():.3g}")
    assert diff.max() <= 1e-3 + 1e-3 * np.abs(expected).max()
    assert np.mean((got > 0) == (expected > 0)) > 0.999                 # the binary mask (sigmoid > 0.5)
    median = np.median(expected)        # random-weight logits lean to one sign: also split them evenly
    assert np.mean((got > median) == (expected > median)) > 0.999


def test_streaming_split_equals_full_graph(artifact):
    clip = _clip(seed=2)
    full = _session(artifact / "model.onnx").run(["logits"], clip)[0]
    encoder, temporal, decoder = (_session(artifact / f"{g}.onnx") for g in ("encoder", "temporal", "decoder"))
    per_frame = [dict(zip([o.name for o in encoder.get_outputs()],
                          encoder.run(None, {"frame": clip["frames"][t:t + 1], "log_mel": clip["log_mel"][t:t + 1]})))
                 for t in range(T)]                                     # the encoder once per new frame
    gates, audio_out = temporal.run(None, {"pooled": np.concatenate([f["pooled"] for f in per_frame]),
                                           "audio": np.concatenate([f["audio"] for f in per_frame])})
    for t in (T - 1, 0):                                                 # the newest frame, and the oldest
        feeds = {f"map{i}": per_frame[t][f"map{i}"] for i in range(1, 5)}
        feeds.update(gates=gates[t:t + 1], audio_out=audio_out[t:t + 1])
        logits = decoder.run(["logits"], feeds)[0]
        diff = np.abs(logits - full[t:t + 1]).max()
        print(f"frame {t}: split vs full max abs diff {diff:.3g}")
        assert diff <= 1e-4
        assert np.mean((logits > 0) == (full[t:t + 1] > 0)) > 0.9999


# -- bad input ----------------------------------------------------------------------------------------------------

def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_unknown_model_suggests_close_names(capsys, tmp_path):
    code, _, err = _cli(capsys, "--model", "selm-s4-r5O", "--out", str(tmp_path))
    assert code == 1 and "unknown model 'selm-s4-r5O'. Did you mean selm-s4-r50" in err
    code, _, err = _cli(capsys, "--model", "vggish", "--out", str(tmp_path))
    assert code == 1 and "pass its weights with --vggish" in err
    code, _, err = _cli(capsys, "--out", str(tmp_path))
    assert code == 1 and "--model is required" in err


def test_missing_or_unreadable_checkpoint(capsys, tmp_path):
    code, _, err = _cli(capsys, "--model", "selm", "--checkpoint", str(tmp_path / "S4_r50.pth"), "--out", str(tmp_path))
    assert code == 1 and f"--checkpoint {tmp_path / 'S4_r50.pth'} does not exist" in err
    code, _, err = _cli(capsys, "--model", "selm", "--checkpoint", str(tmp_path), "--out", str(tmp_path))
    assert code == 1 and "is not a file" in err
    broken = tmp_path / "broken.pth"
    torch.save({"w": torch.zeros(1000)}, broken)
    broken.write_bytes(broken.read_bytes()[:300])                       # a truncated download
    code, _, err = _cli(capsys, "--model", "selm", "--checkpoint", str(broken), "--out", str(tmp_path / "o"))
    assert code == 1 and err.startswith("error: --checkpoint: ") and str(broken) in err
    assert "weights_only" not in err and not (tmp_path / "o").exists()     # the --out it created is gone


def test_checkpoint_of_another_variant_names_it(capsys, tmp_path):
    from export.models import model_builder
    from export.models.checkpoint import key_shapes

    with torch.device("meta"):
        shapes = key_shapes(model_builder("selm-avss-r50")())
    flat = torch.zeros(max(int(np.prod(s)) for s in shapes.values()))  # one shared storage keeps the file small
    state = {k: flat[:int(np.prod(s))].view(s) for k, s in shapes.items()}
    path = tmp_path / "avss_r50.pth"
    torch.save(state, path)
    code, _, err = _cli(capsys, "--model", "selm", "--checkpoint", str(path), "--out", str(tmp_path / "o"))
    assert code == 1 and "use --model selm-avss-r50" in err


def test_unwritable_output_directory(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = _cli(capsys, "--model", "selm", "--out", str(blocker / "out"))
    assert code == 1 and f"cannot write to output directory {blocker / 'out'}" in err and "choose another --out" in err


def test_read_only_output_directory(capsys, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    code, _, err = _cli(capsys, "--model", "selm", "--out", str(ro))
    assert code == 1 and "cannot write to output directory" in err


def test_bad_numbers_and_opset(capsys, tmp_path):
    code, _, err = _cli(capsys, "--model", "selm", "--opset", "17", "--out", str(tmp_path))
    assert code == 1 and "--opset 17 is too old" in err
    code, _, err = _cli(capsys, "--model", "selm", "--atol", "-1", "--out", str(tmp_path))
    assert code == 1 and "--atol must be positive" in err


def test_plugin_scan_without_the_custom_op_library(capsys, tmp_path, monkeypatch):
    import plugins

    monkeypatch.setattr(plugins, "LIB_DIR", tmp_path / "lib")
    monkeypatch.setattr(plugins, "STATUS_FILE", tmp_path / "lib" / "build_status.json")
    code, _, err = _cli(capsys, "--model", "selm", "--scan", "plugin", "--out", str(tmp_path / "o"))
    assert code == 1 and "--scan plugin:" in err and "python -m plugins.build" in err


def test_demanded_engine_fails_fast_with_the_reason(capsys, tmp_path):
    from export.build_engine import build_parser, engine_environment

    env = engine_environment(build_parser().parse_args(["--engine"]), "lowered")
    if not env.reason:
        pytest.skip("TensorRT and a GPU are present: engines can be built here")
    code, _, err = _cli(capsys, "--model", "selm", "--engine", "--out", str(tmp_path))
    assert code == 2 and f"--engine was demanded, but no engine can be built here: {env.reason}" in err
    assert not list(tmp_path.glob("*.onnx"))                            # nothing exported before failing


def test_every_file_of_the_artifact_is_named_in_the_manifest(artifact):
    on_disk = {p.name for p in artifact.iterdir() if p.is_file()} - {"manifest.json"}
    assert on_disk == set(load_manifest(artifact).files)


def test_bad_flag_values_exit_1_as_documented(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", "selm", "--precision", "int4"])
    assert info.value.code == 1 and "invalid choice: 'int4'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 done; 1 bad input (flags, model name, files, numbers) or export/validation failed; " \
           "2 --engine demanded but no engine could be built" in text


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch, existing):
    import export.onnx_export as onnx_export

    out = tmp_path / "mine" if existing else tmp_path / "new" / "artifact"
    if existing:
        out.mkdir()
        (out / "notes.txt").write_text("the user's file")

    def crash(*_args, **_kwargs):
        (out / "model.onnx").write_bytes(b"half-written")
        raise RuntimeError("export crashed")

    monkeypatch.setattr(onnx_export, "sample_inputs", crash)
    with pytest.raises(RuntimeError, match="export crashed"):
        build_artifact("selm-test", out, engine=False, say=lambda _: None)
    if existing:
        assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text()
    else:
        assert not (tmp_path / "new").exists()


def test_build_artifact_refuses_unknown_or_bad_options(tmp_path):
    with pytest.raises(TypeError, match=r"build_artifact: unknown option\(s\) precison; known: atol, "):
        build_artifact("selm-test", tmp_path / "o", precison="fp16")
    with pytest.raises(UserError, match="--precision must be one of fp32, fp16, int8, got 'int4'") as err:
        build_artifact("selm-test", tmp_path / "o", precision="int4")
    assert err.value.exit_status == 1 and not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="vggish-test is an audio encoder"):
        build_artifact("vggish-test", tmp_path / "o")


def test_list_models_and_help(capsys):
    code, out, _ = _cli(capsys, "--list-models")
    assert code == 0 and "selm-s4-r50   (default for --model selm)" in out and "selm-avss-pvt" in out
    assert "selm-test   (tiny test variant" in out and "vggish" not in out
    assert "selm-s4-demo   (trained here on synthetic data; weights shipped)" in out
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "examples:" in capsys.readouterr().out


# -- other variants and modes (slow) ------------------------------------------------------------------------------

@pytest.mark.slow
def test_tiny_variant_artifact_follows_its_config(tmp_path):
    from export.models import pretrained_cfg

    out = build_artifact("selm-test", tmp_path / "tiny", engine=False, say=lambda _: None)
    m, cfg = load_manifest(out), pretrained_cfg("selm-test")
    assert (m.model.name, m.model.family, m.model.backbone) == ("selm-test", "selm", "pvt-test") and m.validated
    assert (m.video.resolution, m.video.frames_per_clip, m.output.size) == (64, 5, [64, 64])
    assert m.audio == cfg.audio and m.output.class_names == list(cfg.class_names)
    assert m.graph("full").input("frames").shape == [5, 3, 64, 64]
    assert {p.name for p in out.iterdir()} - {"manifest.json"} == set(m.files)


@pytest.mark.slow
def test_gumbel_noise_input_export(tmp_path_factory):
    result = exported_artifact(tmp_path_factory, "--gumbel", "input")
    assert result.proc.returncode == 0, result.proc.stderr[-3000:]
    m = load_manifest(result.out)
    s = sum(p * p for p in (R // 16, R // 8, R // 4))
    assert m.graph("full").input("gumbel_noise").shape == [T, 2, s]
    assert m.graph("decoder").input("gumbel_noise").shape == [1, 2, s]
    assert m.model.gumbel == "input" and m.validated


@pytest.mark.slow
def test_plugin_scan_export(tmp_path_factory):
    pytest.importorskip("plugins").ort_library_path()
    result = exported_artifact(tmp_path_factory, "--scan", "plugin")
    assert result.proc.returncode == 0, result.proc.stderr[-3000:]
    m = load_manifest(result.out)
    assert m.scan == "plugin" and m.validated
    temporal = onnx.load(str(result.out / "temporal.onnx"), load_external_data=False)
    scan_op = (scan_contract.DOMAIN, scan_contract.OP_TYPE)
    assert sum((n.domain, n.op_type) == scan_op for n in temporal.graph.node) == 24


@pytest.mark.slow
def test_semantic_variant_export(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "export.build_engine", "--model", "selm-avss-r50", "--out",
                           str(tmp_path), "--no-engine"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = load_manifest(tmp_path)
    assert (m.output.kind, m.output.num_classes, len(m.output.class_names), len(m.output.palette)) == \
        ("semantic", 71, 71, 71)
    assert m.output.class_names[0] == "background" and m.output.palette[:3] == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    assert m.graph("full").output("logits").shape == [10, 71, 224, 224] and m.streaming.window == 10
    assert "engine build skipped: --no-engine given" in proc.stdout


@pytest.mark.slow
def test_fp16_check_recorded(tmp_path_factory):
    result = exported_artifact(tmp_path_factory, "--precision", "fp16")
    assert result.proc.returncode == 0, result.proc.stderr[-3000:]
    report = load_manifest(result.out).fp16
    assert report is not None and "selective_scan" in report.keep_fp32_groups
    assert report.mixed_error <= report.budget
    assert report.keep_fp32_nodes["temporal"] and set(report.keep_fp32_nodes) == {"full", "encoder", "temporal",
                                                                                    "decoder"}


# -- the fp16 sensitivity check, on a small real graph -------------------------------------------------------------

class _Sensitive(torch.nn.Module):
    """``small`` is harmless in fp16; ``big`` makes values above fp16's 65504 before they are scaled back."""

    def __init__(self):
        super().__init__()
        self.small = torch.nn.Linear(16, 16)
        self.big = torch.nn.Linear(16, 16)
        with torch.no_grad():
            self.big.weight.mul_(1e5)

    def forward(self, x):
        return self.big(torch.relu(self.small(x))) * 2.0 ** -17           # a scale fp16 represents exactly


def test_fp16_check_keeps_only_the_overflowing_module(tmp_path):
    from export.fp16 import OVERFLOW, fp16_sensitivity, module_path

    torch.manual_seed(0)
    path = tmp_path / "net.onnx"
    x = torch.randn(4, 16)
    torch.onnx.export(_Sensitive().eval(), (x,), str(path), dynamo=True, opset_version=18, input_names=["x"],
                      output_names=["logits"], verbose=False)
    report = fp16_sensitivity({"full": path}, "full", {"x": x.numpy()}, kind="binary", say=lambda _: None)
    assert report.all_fp16_error == OVERFLOW                            # big's outputs overflow fp16
    assert report.keep_fp32_groups == ["big"]
    assert report.group_errors["small"] <= report.budget < report.group_errors["big"]
    assert report.mixed_error <= 1e-3 and report.mixed_mask_agreement == 1.0
    graph = onnx.load(str(path))
    big = {n.name for n in graph.graph.node if module_path(n) == "big"}
    assert big and set(report.keep_fp32_nodes["full"]) == big
