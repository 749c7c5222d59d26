"""avs-stream end to end: generated clips through the real ONNX Runtime backend, and every fault's message and status.

Each case runs ``python -m runtime.cli`` in a subprocess, as a user would. The artifact is conftest's
session fixture, shared with the other modules. Files are read back with PyAV.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from runtime import builder
from runtime.builder import ArtifactError, BuilderMissing, ensure_artifacts
from runtime.cli import DEMO_MODEL, FORCE_QUIT, ExitCode, build_parser, run
from runtime.demo_clip import make_clip
from runtime.render import Mp4Writer
from tests.mjpeg_camera import MjpegCamera

REPO = Path(__file__).resolve().parents[1]
MODEL = "selm-s4-r50"
JSONL_KEYS = {"frame", "index", "timestamp", "mask_area", "mask_pixels", "latency_ms", "pipeline_ms", "frame_ms",
              "audio_window", "audio_missing_s", "window"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "talk.mp4", seconds=2.0, fps=3, width=320, height=180)


def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def avs_stream(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], cwd=cwd, env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


AAC_FRAME = 1024 / 44100


def _video_frames_and_audio(path: Path) -> tuple[int, list[float], float]:
    """Decoded video frames, their times, and the audio's end (0.0 without audio); asserts the audio ends within
    one AAC frame of the video's end."""
    with av.open(str(path)) as container:
        times = [frame.time for frame in container.decode(video=0)]
    ends = {"video": 0.0, "audio": 0.0}
    with av.open(str(path)) as container:
        for packet in container.demux():
            if packet.pts is not None and packet.size:
                end = float((packet.pts + packet.duration) * packet.time_base)
                ends[packet.stream.type] = max(ends[packet.stream.type], end)
    assert ends["audio"] <= ends["video"] + AAC_FRAME, ends
    return len(times), [t - times[0] for t in times], ends["audio"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_file_source_end_to_end(artifact, clip, tmp_path):
    out, jsonl, masks = tmp_path / "out.mp4", tmp_path / "out.jsonl", tmp_path / "masks"
    result = avs_stream("--source", clip.path, "--model-dir", artifact, "--output", out, "--jsonl", jsonl,
                        "--save-masks", masks, "--headless", "--backend", "onnxruntime", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stderr and "backend: ONNX Runtime" in result.stderr
    assert "audio: the source's own track (44100 Hz, 2 ch)" in result.stderr
    frames, times, audio_seconds = _video_frames_and_audio(out)
    assert frames == clip.frames
    assert np.allclose(times, np.arange(clip.frames) / clip.fps, atol=0.01)
    assert audio_seconds == pytest.approx(clip.seconds, abs=0.1)
    assert f"wrote {out} ({clip.frames} frames, video " in result.stderr  # read back from the file
    assert f"{jsonl} ({clip.frames} lines), {masks}/ ({clip.frames} PNGs)" in result.stderr
    records = _jsonl(jsonl)
    assert len(records) == clip.frames and all(JSONL_KEYS <= set(r) for r in records)
    assert [r["frame"] for r in records] == list(range(clip.frames))
    assert np.allclose([r["timestamp"] for r in records], np.arange(clip.frames) / clip.fps, atol=1e-3)
    assert all(r["audio_window"][1] <= r["timestamp"] + 1e-6 for r in records)
    assert records[-1]["audio_missing_s"] == 0.0
    assert [r["window"] for r in records] == [1, 1, 2, 2, 2, 3]  # slots 1 s apart, each +-0.5 s
    pngs = sorted(masks.glob("*.png"))
    assert len(pngs) == clip.frames
    mask = cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (clip.height, clip.width) and set(np.unique(mask)) <= {0, 255}
    assert np.count_nonzero(mask) == records[0]["mask_pixels"]


def test_demo_runs_without_devices_or_downloads(artifact, tmp_path):
    """``--demo`` with its artifact already in the cache (the build step itself is what --demo shares with the
    fixture, ensure_artifacts): generated clip in, annotated mp4 with audio out."""
    cache = tmp_path / "cache"
    (cache / "demo").mkdir(parents=True)
    (cache / "demo" / DEMO_MODEL).symlink_to(artifact, target_is_directory=True)   # a random-weights artifact
    result = avs_stream("--demo", "--duration", "0.5", "--headless", cwd=tmp_path, env=_env(AVS_EDGE_CACHE=str(cache)))
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stderr and "demo: generated clip" in result.stderr
    frames, _, audio_seconds = _video_frames_and_audio(tmp_path / "avs-demo.mp4")
    assert frames == 4 and audio_seconds > 0.4  # 8 fps clip, first 0.5 s


def test_mic_none_runs_video_only_and_says_so(artifact, clip, tmp_path):
    out, jsonl = tmp_path / "silent.mp4", tmp_path / "silent.jsonl"
    result = avs_stream("--source", clip.path, "--mic", "none", "--model-dir", artifact, "--duration", "0.5",
                        "--output", out, "--jsonl", jsonl, "--headless", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "audio: none (--mic none): video-only, the model hears silence" in result.stderr
    frames, _, audio_seconds = _video_frames_and_audio(out)
    assert frames == 2 and audio_seconds == 0.0
    assert len(_jsonl(jsonl)) == 2


def test_file_without_audio_runs_with_silence(artifact, tmp_path):
    silent = tmp_path / "noaudio.mp4"
    with Mp4Writer(silent, fps=2) as writer:
        for i in range(2):
            writer.add_frame(np.full((96, 128, 3), 80 * i, np.uint8), i / 2)
    result = avs_stream("--source", silent, "--model-dir", artifact, "--headless", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "has no audio track: video-only, the model hears silence" in result.stderr
    assert "segmented 2 frames" in result.stderr


def test_network_camera_lost_mid_stream_exits_cleanly(artifact, tmp_path):
    camera = MjpegCamera(frames=40, size=(96, 128), interval=0.05, path="/cam.mjpg")
    out, jsonl = tmp_path / "lost.mp4", tmp_path / "lost.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "runtime.cli", "--source", camera.url, "--mic", "none",
                                "--model-dir", str(artifact), "--output", str(out), "--jsonl", str(jsonl),
                                "--headless", "--retries", "2"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    camera.streamed.wait(60)
    camera.stop()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.SOURCE_LOST, stderr
    assert "reconnecting in 0.5 s (attempt 1/2)" in stderr and "reconnecting in 1.0 s (attempt 2/2)" in stderr
    assert "error: " in stderr and "was lost and did not come back after 2 attempts" in stderr
    assert "outputs up to that point are finalised" in stderr
    records = _jsonl(jsonl)
    frames, _, _ = _video_frames_and_audio(out)
    assert frames == len(records) >= 1
    assert "capture_to_written_ms" in records[0]


def test_ctrl_c_finalises_every_output(artifact, tmp_path):
    long_clip = make_clip(tmp_path / "long.mp4", seconds=20.0, fps=5, width=160, height=96)
    out, jsonl = tmp_path / "int.mp4", tmp_path / "int.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "runtime.cli", "--source", str(long_clip.path),
                                "--model-dir", str(artifact), "--output", str(out), "--jsonl", str(jsonl),
                                "--headless"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not jsonl.exists() or not jsonl.read_text().count("\n")):
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.OK, stderr
    assert "interrupted; segmented" in stderr
    records = _jsonl(jsonl)
    frames, _, audio_seconds = _video_frames_and_audio(out)
    assert 1 <= frames == len(records) < long_clip.frames
    assert audio_seconds > 0


@pytest.mark.parametrize("args, code, message", [
    ([], ExitCode.USAGE, "choose one input: --camera INDEX|PATH, --source FILE|URL or --demo (try: avs-stream --demo)"),
    (["--demo", "--camera", "0"], ExitCode.USAGE, "(got --camera and --demo)"),
    (["--source", "{clip}", "--model-dir", "{artifact}", "--alpha", "2"], ExitCode.USAGE, "--alpha must be in [0, 1]"),
    (["--source", "{clip}"], ExitCode.USAGE, "--model-dir DIR is required with --source"),
    # output paths are checked before the model: a missing --model-dir would otherwise give exit 5
    (["--source", "{clip}", "--model-dir", "{tmp}/none", "--output", "{tmp}"], ExitCode.USAGE,
     "--output {tmp}: is a directory"),
    (["--source", "{clip}", "--model-dir", "{tmp}/none", "--output", "{clip}/out.mp4"], ExitCode.USAGE,
     "{clip} is a file, so nothing can be created under it"),
    (["--source", "{clip}", "--model-dir", "{tmp}/none", "--jsonl", "/proc/avs-edge/log.jsonl"], ExitCode.USAGE,
     "--jsonl /proc/avs-edge/log.jsonl: cannot create files in /proc"),
    (["--source", "{clip}", "--model-dir", "{tmp}/none", "--save-masks", "{clip}"], ExitCode.USAGE,
     "--save-masks {clip}: exists and is not a directory"),
    (["--source", "{clip}", "--model-dir", "{tmp}/none", "--output", "{clip}"], ExitCode.USAGE,
     "--output {clip} is also --source"),
    (["--demo", "--output", "{tmp}"], ExitCode.USAGE, "--output {tmp}: is a directory"),
    (["--source", "{clip}", "--model-dir", "{tmp}/none"], ExitCode.ARTIFACTS,
     "does not exist; build it with: python -m export.build_engine"),
    (["--camera", "7", "--model-dir", "{artifact}"], ExitCode.VIDEO_SOURCE, "available cameras: "),
    (["--camera", "{clip}", "--model-dir", "{artifact}"], ExitCode.VIDEO_SOURCE, "use --source for files and URLs"),
    (["--source", "{tmp}/missing.mp4", "--model-dir", "{artifact}"], ExitCode.VIDEO_SOURCE, "does not exist"),
    (["--source", "{clip}", "--mic", "usb-mic", "--model-dir", "{artifact}"], ExitCode.AUDIO_SOURCE, "--mic none"),
    (["--source", "{clip}", "--backend", "tensorrt", "--model-dir", "{artifact}"], ExitCode.BACKEND,
     "--engine"),
])
def test_faults_say_what_to_do_and_exit_cleanly(artifact, clip, tmp_path, args, code, message):
    home = tmp_path / "home"  # no ALSA devices: no microphone
    home.mkdir()
    (home / ".asoundrc").write_text("# none\n")
    filled = [a.format(clip=clip.path, tmp=tmp_path, artifact=artifact) for a in args]
    result = avs_stream(*filled, cwd=tmp_path, env=_env(HOME=str(home), AVS_EDGE_CACHE=str(tmp_path / "cache")))
    assert result.returncode == code, result.stderr
    assert message.format(clip=clip.path, tmp=tmp_path) in result.stderr
    if "--demo" in args:
        assert not (tmp_path / "cache").exists()  # the output path was refused before any build
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_artifact_from_another_version_names_the_rebuild_command(artifact, clip, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for item in artifact.iterdir():
        if item.name != "manifest.json":
            (old / item.name).symlink_to(item)
    data = json.loads((artifact / "manifest.json").read_text())
    data["schema_version"] = 0
    (old / "manifest.json").write_text(json.dumps(data))
    result = avs_stream("--source", clip.path, "--model-dir", old, cwd=tmp_path)
    assert result.returncode == ExitCode.ARTIFACTS
    assert "schema_version is 0" in result.stderr and f"python -m export.build_engine --model {MODEL}" in result.stderr


def test_list_devices(tmp_path):
    result = avs_stream("--list-devices", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "cameras:" in result.stderr and "microphones:" in result.stderr


@pytest.mark.slow
def test_demo_builds_its_artifact_on_first_use(tmp_path):
    """The real first use: empty cache, so --demo runs python -m export.build_engine (minutes) before streaming."""
    result = avs_stream("--demo", "--duration", "0.3", "--headless", cwd=tmp_path,
                        env=_env(AVS_EDGE_CACHE=str(tmp_path / "cache")), timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"building the {DEMO_MODEL} artifact in" in result.stderr and "first use" in result.stderr
    assert "RANDOM" not in result.stderr                     # the demo model's shipped, trained weights
    assert (tmp_path / "cache" / "demo" / DEMO_MODEL / "manifest.json").is_file()
    frames, _, audio_seconds = _video_frames_and_audio(tmp_path / "avs-demo.mp4")
    assert frames == 3 and audio_seconds > 0.2


def test_overlay_blends_only_the_mask_and_names_bad_shapes():
    from runtime.render import HIGHLIGHT_BGR, colorize, draw_hud, format_hud, overlay

    image = np.full((40, 60, 3), 100, np.uint8)
    mask = np.zeros((40, 60), np.uint8)
    mask[10:30, 20:40] = 1
    out = overlay(image, mask, [[0, 0, 0], [255, 255, 255]], binary=True, alpha=0.5, contour=False)
    assert np.array_equal(out[~mask.astype(bool)], image[~mask.astype(bool)])
    expected = np.round(0.5 * 100 + 0.5 * np.array(HIGHLIGHT_BGR)).astype(np.uint8)
    assert np.abs(out[20, 30].astype(int) - expected).max() <= 1
    labels = np.array([[0, 1, 2]], np.uint8)
    assert colorize(labels, [[0, 0, 0], [10, 20, 30], [200, 100, 50]], binary=False).tolist() == \
        [[[0, 0, 0], [30, 20, 10], [50, 100, 200]]]  # palette rows are RGB, images BGR
    with pytest.raises(ValueError, match="does not match the image"):
        overlay(image, mask[:10], [[0, 0, 0]], binary=True)
    lines = format_hud(12.345, 81.0, -20.0, ["extra"])
    assert lines == [" 12.3 fps", "model   81.0 ms", "audio -20.0 dBFS", "extra"]
    hud = draw_hud(image.copy(), lines)
    assert (hud[:5, :5] < image[:5, :5]).all()  # the box darkens what is under it


def _builder_entry_point(monkeypatch, value: str) -> None:
    point = importlib.metadata.EntryPoint(builder.BUILDER_NAME, value, builder.BUILDER_GROUP)
    monkeypatch.setattr(builder.importlib.metadata, "entry_points",
                        lambda group: [point] if group == builder.BUILDER_GROUP else [])


def copy_artifact(model: str, out: Path, *, say=print) -> Path:
    """A stand-in builder for the entry point: copies the session's artifact (the real one takes minutes)."""
    shutil.copytree(os.environ["AVS_TEST_COPY_FROM"], out, dirs_exist_ok=True)
    return out


def fail_to_build(model: str, out: Path, *, say=print) -> Path:
    raise RuntimeError("out of memory")


def need_torch(model: str, out: Path, *, say=print) -> Path:
    raise ModuleNotFoundError("No module named 'torch'", name="torch")


def test_declared_builder_entry_point_names_the_export_function():
    points = [p for p in importlib.metadata.entry_points(group=builder.BUILDER_GROUP) if p.name == "artifact"]
    assert [p.value for p in points] == ["export.build_engine:build_artifact"]


def test_artifact_is_built_through_the_entry_point(artifact, tmp_path, monkeypatch):
    monkeypatch.setenv("AVS_TEST_COPY_FROM", str(artifact))
    _builder_entry_point(monkeypatch, "tests.test_stream_cli:copy_artifact")
    lines = []
    assert ensure_artifacts(tmp_path / "built", MODEL, lines.append) == tmp_path / "built"
    assert (tmp_path / "built" / "manifest.json").is_file() and "first use" in lines[0]
    _builder_entry_point(monkeypatch, "tests.test_stream_cli:fail_to_build")
    with pytest.raises(ArtifactError, match="out of memory"):
        ensure_artifacts(tmp_path / "other", MODEL, lines.append)
    _builder_entry_point(monkeypatch, "tests.test_stream_cli:need_torch")
    with pytest.raises(BuilderMissing, match=r"needs torch; install the export extra \(pip install -e '\.\[export\]'"):
        ensure_artifacts(tmp_path / "other", MODEL, lines.append)


@pytest.mark.parametrize("value", [None, "runtime.no_such_module:build", "runtime.builder:no_such_function"])
def test_demo_without_the_builder_says_what_to_install(tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.setattr(builder.importlib.metadata, "entry_points", lambda group: [])
    else:
        _builder_entry_point(monkeypatch, value)
    monkeypatch.setenv("AVS_EDGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BuilderMissing):
        ensure_artifacts(tmp_path / "none", MODEL)
    with pytest.raises(Exception) as caught:
        run(build_parser().parse_args(["--demo", "--headless"]), say=lambda line: None)
    assert caught.value.code == ExitCode.ARTIFACTS
    assert "pip install -e '.[export]'" in str(caught.value)  # the commands are the feature
    assert f"python -m export.build_engine --model {DEMO_MODEL} --out {tmp_path / 'cache' / 'demo' / DEMO_MODEL}" in \
        str(caught.value)


INTERRUPTED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from runtime.cli import _Interrupts
    from runtime.outputs import Outputs

    video = sys.argv[1]
    outputs = Outputs(video, fps=10)
    kill = lambda: os.kill(os.getpid(), signal.SIGINT)
    with _Interrupts(lambda line: print(line, file=sys.stderr, flush=True), video) as interrupts:
        try:
            kill()  # the first stops the loop
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr, flush=True)
        interrupts.finalising()
        kill()  # the second is reported and ignored
        for i in range(60):
            # the third comes from the writer thread while the main thread waits in close()
            outputs.render(np.full((240, 320, 3), i, np.uint8), i / 10, done=kill if i == int(sys.argv[2]) else None)
        print(outputs.close(), file=sys.stderr, flush=True)
""")


@pytest.mark.parametrize("third_at", [-1, 40])
def test_a_second_interrupt_is_ignored_and_a_third_still_leaves_a_playable_mp4(tmp_path, third_at):
    video = tmp_path / "out.mp4"
    done = subprocess.run([sys.executable, "-c", INTERRUPTED_WRITER, str(video), str(third_at)], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert "stopped" in done.stderr and "finishing the outputs" in done.stderr, done.stderr
    frames, times, _ = _video_frames_and_audio(video)
    if third_at < 0:
        assert done.returncode == 0 and frames == 60, done.stderr
    else:
        assert done.returncode == FORCE_QUIT, done.stderr
        assert 10 <= frames <= third_at + 1  # whole one-second fragments, up to the forced quit
        assert np.allclose(times, np.arange(frames) / 10, atol=1e-3)


@pytest.mark.slow
def test_repeated_ctrl_c_to_avs_stream_leaves_a_playable_mp4(artifact, tmp_path):
    long_clip = make_clip(tmp_path / "long.mp4", seconds=20.0, fps=5, width=160, height=96)
    out, jsonl = tmp_path / "int.mp4", tmp_path / "int.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "runtime.cli", "--source", str(long_clip.path),
                                "--model-dir", str(artifact), "--output", str(out), "--jsonl", str(jsonl),
                                "--headless"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not jsonl.exists() or jsonl.read_text().count("\n") < 12):
        time.sleep(0.1)
    for _ in range(3):
        process.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (ExitCode.OK, FORCE_QUIT), stderr
    frames, _, _ = _video_frames_and_audio(out)
    assert frames >= 5
    if process.returncode == ExitCode.OK:
        assert frames == len(_jsonl(jsonl))
