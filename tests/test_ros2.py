"""``avs-ros2`` on real ROS 2 middleware (rclpy + Fast DDS from PyPI's wheels), process against process.

The player (``python -m runtime.ros2.play --demo``) and the node (``avs-ros2``) run as subprocesses, as a user
starts them; this process subscribes to the node's outputs with its own rclpy context. Everything is confined to
this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``), a random ``ROS_DOMAIN_ID`` and a namespace per test,
so concurrent runs never see each other. Where rclpy cannot be installed (PyPI's ROS 2 wheels are x86_64 only) the
ROS tests are skipped with the reason; on an x86_64 CI machine a missing rclpy is a failure (the install is broken).
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.cli import ExitCode

# rosidl's old lark-parser imports sre_parse (deprecated since Python 3.11), not our code.
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
NODE = [sys.executable, "-m", "runtime.ros2.node"]
PLAY = [sys.executable, "-m", "runtime.ros2.play"]
CLIP_FRAMES, CLIP_FPS, CLIP_SIZE = 40, 8.0, 448  # the demo clip: 5 s at 8 frames/s, 448 x 448


def _ros_missing() -> str:
    """Why the ROS tests cannot run here ('' when they can)."""
    if platform.machine() != "x86_64" or sys.platform != "linux":
        return (f"PyPI's ROS 2 wheels exist for x86_64 Linux only (this is {sys.platform}/{platform.machine()}); "
                "on a Jetson install ROS 2 from apt, source its setup.bash and run these tests again")
    if importlib.util.find_spec("rclpy") is None:
        return "rclpy is not installed: pip install -e '.[ros]' (scripts/install.sh does it on x86_64)"
    return ""


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """Environment of a ROS test: localhost discovery, a random domain, logs in tmp; skips without rclpy."""
    reason = _ros_missing()
    if reason:
        if os.environ.get("CI") and platform.machine() == "x86_64":
            pytest.fail(f"CI on x86_64 must run the ROS 2 tests, but {reason}")
        pytest.skip(reason)
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_DOMAIN_ID": str(random.SystemRandom().randint(1, 100)),
           "ROS_LOG_DIR": str(tmp_path / "ros-log"), "AVS_EDGE_CACHE": str(tmp_path.parent / "avs-cache"),
           "PYTHONUNBUFFERED": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ROS_STATIC_PEERS", raising=False)
    return dict(os.environ)


class Listener:
    """Subscribes (reliable) to a node's mask, overlay and status topics in its own rclpy context and thread."""

    def __init__(self, namespace: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(os.environ["ROS_DOMAIN_ID"]),
                   signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("avs_test_listener", context=self.context)
        self.ns = namespace
        self.masks, self.overlays, self.status = [], [], []
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, f"{namespace}/mask", self.masks.append, qos)
        self.node.create_subscription(Image, f"{namespace}/overlay", self.overlays.append, qos)
        self.node.create_subscription(String, f"{namespace}/status", lambda m: self.status.append(json.loads(m.data)),
                                      qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="listener")
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except ExternalShutdownException:  # close() shut the context down
            pass

    def wait_for(self, condition, timeout: float, what: str, process: subprocess.Popen = None) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if process is not None and process.poll() is not None:
                raise AssertionError(f"{what}: the node exited with {process.returncode}: {_output(process)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def node_ready(self) -> bool:
        """The node's mask publisher and image subscription are both discovered."""
        return (self.node.count_publishers(f"{self.ns}/mask") >= 1
                and self.node.count_subscribers(f"{self.ns}/image") + self.node.count_subscribers(
                    f"{self.ns}/image/compressed") >= 1)

    def close(self) -> None:
        self.context.try_shutdown()
        self._thread.join(timeout=10)
        self.executor.shutdown()
        self.node.destroy_node()


def _output(process: subprocess.Popen) -> str:
    if process.poll() is None:
        process.kill()
    out, _ = process.communicate(timeout=10)
    return out[-3000:]


def _start_node(env: dict, namespace: str, *params: str) -> subprocess.Popen:
    args = [*NODE, "--ros-args", "-r", f"__ns:={namespace}", "-p", "mic:=none"]
    for param in params:
        args += ["-p", param]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(process: subprocess.Popen, signum: int = signal.SIGINT, timeout: float = 30) -> str:
    """Signal the node; it must exit 0 by itself (a thread left behind would keep it alive)."""
    process.send_signal(signum)
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        raise AssertionError(f"the node did not exit within {timeout} s of signal {signum}: {out[-3000:]}")
    assert process.returncode == 0, out[-3000:]
    return out


def _stamp(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _stamp_ns(header) -> int:
    return header.stamp.sec * 10 ** 9 + header.stamp.nanosec


def _namespace() -> str:
    return f"/avs_test_{os.getpid()}_{random.SystemRandom().randint(0, 10 ** 6)}"


@pytest.fixture(scope="module")
def demo_frames(tmp_path_factory):
    """The demo clip (rendered as ``play --demo`` does) and its decoded frames."""
    from runtime.datasets.synth import render_demo_clip
    from runtime.cli import DEMO_CLIP, DEMO_SEED
    from runtime.ros2.play import read_clip

    clip = tmp_path_factory.mktemp("avs-cache") / "demo" / DEMO_CLIP
    clip.parent.mkdir()
    render_demo_clip(clip, seed=DEMO_SEED)
    rate, frames = read_clip(clip)
    frames = list(frames)
    assert rate == CLIP_FPS and len(frames) == CLIP_FRAMES
    return clip, frames


def _cache_for(env: dict, clip: Path) -> dict:
    """``play --demo`` finds the module's rendered clip: the cache is the clip's grandparent."""
    return dict(env, AVS_EDGE_CACHE=str(clip.parent.parent))


# -- without ROS -------------------------------------------------------------------------------------------------
def test_modules_import_without_rclpy_and_the_node_names_the_install():
    code = ("import sys\nsys.modules['rclpy'] = None\n"
            "import runtime.ros2.node, runtime.ros2.play, runtime.ros2.images\n"
            "sys.exit(runtime.ros2.node.main(['--ros-args', '-p', 'mic:=none']))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == ExitCode.BACKEND, result.stderr
    assert "ROS 2 for Python is not available" in result.stderr and "pip install -e '.[ros]'" in result.stderr


def test_bag_of_the_demo_clip_holds_every_frame(demo_frames, tmp_path):
    pytest.importorskip("rosbags", reason="rosbags is not installed: pip install -e '.[ros]'")
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    from runtime.ros2.images import image_to_bgr
    from runtime.ros2.play import main

    clip, frames = demo_frames
    bag = tmp_path / "demo-bag"
    assert main([str(clip), "--bag", str(bag), "--topic", "camera/image_raw"]) == 0
    assert main([str(clip), "--bag", str(bag)]) == 2                               # never over an existing bag
    (tmp_path / "notes.mp4").write_text("not a video")
    assert main([str(tmp_path / "notes.mp4"), "--bag", str(tmp_path / "bag2")]) == 3
    assert not (tmp_path / "bag2").exists()
    store = get_typestore(Stores.ROS2_KILTED)
    with Reader(bag) as reader:
        [connection] = reader.connections
        assert (connection.topic, connection.msgtype) == ("/camera/image_raw", "sensor_msgs/msg/Image")
        messages = [(t, store.deserialize_cdr(raw, connection.msgtype)) for _, t, raw in reader.messages()]
    assert len(messages) == CLIP_FRAMES
    start = messages[0][0]
    for i, ((bag_time, msg), (pts, frame)) in enumerate(zip(messages, frames)):
        assert bag_time == msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec
        assert bag_time - start == i * 125_000_000 and pts == pytest.approx(i / CLIP_FPS)   # 8 frames/s
        assert msg.encoding == "bgr8" and msg.header.frame_id == "camera"
        np.testing.assert_array_equal(image_to_bgr(msg), frame)


# -- message conversions (real rclpy messages) -------------------------------------------------------------------
def test_image_conversions(ros_env):
    from sensor_msgs.msg import CompressedImage, Image

    from runtime.ros2.images import compressed_to_bgr, fill_image, image_to_bgr

    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    padded = np.zeros((5, 7 * 3 + 3), np.uint8)                                  # rows padded to step 24
    padded[:, :21] = bgr[:, :, ::-1].reshape(5, 21)
    msg = Image(height=5, width=7, encoding="rgb8", step=24, data=padded.tobytes())
    np.testing.assert_array_equal(image_to_bgr(msg), bgr)
    gray = bgr[:, :, 0].copy()
    out = image_to_bgr(fill_image(Image(), gray, "mono8"))
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    bgra = np.concatenate([bgr, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    np.testing.assert_array_equal(image_to_bgr(Image(height=5, width=7, encoding="bgra8", step=28,
                                                     data=bgra.tobytes())), bgr)
    with pytest.raises(ValueError, match="encoding '16UC1' is not supported.*image_transport:=compressed"):
        image_to_bgr(Image(height=5, width=7, encoding="16UC1", step=14, data=bytes(70)))
    with pytest.raises(ValueError, match="malformed bgr8 image: 7x5, step 21, 20 bytes"):
        image_to_bgr(Image(height=5, width=7, encoding="bgr8", step=21, data=bytes(20)))
    png = cv2.imencode(".png", bgr)[1].tobytes()
    np.testing.assert_array_equal(compressed_to_bgr(CompressedImage(format="png", data=png)), bgr)
    with pytest.raises(ValueError, match="cannot decode a compressed image of format 'jpeg'"):
        compressed_to_bgr(CompressedImage(format="jpeg", data=b"not a jpeg"))


# -- the node, end to end ----------------------------------------------------------------------------------------
def _clip_audio(clip: Path) -> tuple[np.ndarray, int]:
    """The clip's audio track as the node decodes it (``runtime.microphone.TrackAudio``), from time 0."""
    from runtime.microphone import TrackAudio

    track, chunks = TrackAudio(str(clip)).start(), []
    try:
        while True:
            chunks += track.read()
            if track.finished:
                break
            track.wait(0.05)
    finally:
        track.close()
    assert chunks[0].timestamp == 0.0
    return np.concatenate([c.samples for c in chunks]), chunks[0].sample_rate


@pytest.mark.parametrize("transport, audio", [("raw", "demo"), ("png", "none")])
def test_node_segments_the_played_demo_clip_like_segment_clip(ros_env, tiny_artifact, demo_frames, transport, audio):
    """Every frame played (reliable QoS, a queue that never fills): one mask each, with the frame's header, equal
    to ``Segmenter.segment_clip`` on the same frames and audio: the clip's own track (``audio_file:=demo``) or
    silence (``mic:=none``)."""
    from runtime.segmenter import Segmenter

    clip, frames = demo_frames
    env = _cache_for(ros_env, clip)
    ns = _namespace()
    node = _start_node(env, ns, f"model_dir:={tiny_artifact}", "qos:=reliable", "drop_policy:=queue",
                       "publish_overlay:=true", f"image_transport:={'raw' if transport == 'raw' else 'compressed'}",
                       *(["audio_file:=demo"] if audio == "demo" else []))
    listener = Listener(ns)
    try:
        listener.wait_for(listener.node_ready, 90, "the node's topics", node)
        play = [*PLAY, "--demo", "--topic", f"{ns}/image", "--rate", "20", "--wait", "30"]
        if transport == "png":
            play += ["--compressed", "png"]
        player = subprocess.run(play, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert player.returncode == 0 and f"published {CLIP_FRAMES} frames" in player.stderr, player.stderr
        listener.wait_for(lambda: len(listener.status) >= CLIP_FRAMES and len(listener.masks) >= CLIP_FRAMES
                          and len(listener.overlays) >= CLIP_FRAMES, 60, "a mask per frame", node)
        out = _stop(node, signal.SIGTERM)
    finally:
        listener.close()
        if node.poll() is None:
            node.kill()
    assert f"stopped: received {CLIP_FRAMES}, segmented {CLIP_FRAMES}, dropped 0, failed 0" in out, out
    masks, overlays, status = listener.masks, listener.overlays, listener.status
    assert len(masks) == len(overlays) == len(status) == CLIP_FRAMES
    stamps_ns = np.array([_stamp_ns(m.header) for m in masks])
    np.testing.assert_array_equal(stamps_ns - stamps_ns[0], np.arange(CLIP_FRAMES) * 125_000_000)  # 8 frames/s
    for mask, view, record in zip(masks, overlays, status):
        assert (mask.encoding, mask.height, mask.width, mask.step) == ("mono8", CLIP_SIZE, CLIP_SIZE, CLIP_SIZE)
        assert (view.encoding, view.height, view.width) == ("bgr8", CLIP_SIZE, CLIP_SIZE)
        assert mask.header.frame_id == view.header.frame_id == record["frame_id"] == "camera"
        assert view.header.stamp == mask.header.stamp and abs(record["stamp"] - _stamp(mask.header)) < 1e-6
        assert record["model_ms"] > 0 and record["pipeline_ms"] >= record["model_ms"]
        assert record["audio"] == (str(clip) if audio == "demo" else "none")
    assert [r["segmented"] for r in status] == list(range(1, CLIP_FRAMES + 1))
    assert status[-1]["received"] == CLIP_FRAMES and status[-1]["dropped"] == 0
    got = np.stack([np.frombuffer(m.data, np.uint8).reshape(CLIP_SIZE, CLIP_SIZE) for m in masks])
    pts = [t for t, _ in frames]
    waveform, rate = _clip_audio(clip) if audio == "demo" else (np.zeros(16000 * 6, np.float32), 16000)
    with Segmenter(tiny_artifact, backend="onnxruntime", say=lambda line: None) as segmenter:
        reference = segmenter.segment_clip([f for _, f in frames], waveform, rate, timestamps=pts)
        expected = np.stack([r.mask for r in reference])
        silent = np.stack([r.mask for r in segmenter.segment_clip([f for _, f in frames], waveform * 0, rate,
                                                                  timestamps=pts)])
    assert 0 < np.count_nonzero(expected) < expected.size                       # masks that could differ
    assert (audio == "demo") == bool(np.any(expected != silent))                # and hear the audio
    np.testing.assert_array_equal(got, expected * 255)
    missing = [round(r.audio_missing, 6) if audio == "demo" else 0.0 for r in reference]
    assert [r["audio_missing_s"] for r in status] == missing                   # 0.975 s before the clip's start


def test_node_drops_frames_under_load_newest_wins_and_stops_mid_stream(ros_env, artifact, demo_frames):
    """selm-s4-r50 (about 0.5 s a frame here) fed 20 frames/s: the node segments the newest frame each time,
    drops and counts the rest, still segments the clip's last frame; then Ctrl-C while frames keep coming and a
    frame is being segmented: the node exits 0 by itself (its worker thread is not a daemon: one left behind would
    keep the process alive)."""
    clip, _ = demo_frames
    ns = _namespace()
    node = _start_node(ros_env, ns, f"model_dir:={artifact}", "qos:=reliable")
    listener = Listener(ns)
    play = [*PLAY, "--demo", "--topic", f"{ns}/image", "--rate", "20", "--wait", "30"]
    looping = None
    try:
        listener.wait_for(listener.node_ready, 120, "the node's topics", node)
        player = subprocess.run(play, cwd=REPO, env=_cache_for(ros_env, clip), capture_output=True, text=True,
                                timeout=120)
        assert player.returncode == 0, player.stderr
        listener.wait_for(lambda: listener.status and listener.status[-1]["received"] == CLIP_FRAMES
                          and listener.status[-1]["waiting"] == 0, 60, "the last frame's mask", node)
        last = listener.status[-1]
        masks = list(listener.masks)
        # NOTE: SIGINT back to its default first: a test run started in the background (CI) passes SIGINT on
        # as ignored, and Python then never raises KeyboardInterrupt (as Ctrl-C in a terminal does)
        looping = subprocess.Popen([*play, "--loop"], cwd=REPO, env=_cache_for(ros_env, clip),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        listener.wait_for(lambda: len(listener.status) >= last["segmented"] + 2, 60, "masks of the loop", node)
        out = _stop(node, signal.SIGINT)
    finally:
        listener.close()
        if node.poll() is None:
            node.kill()
        if looping is not None:
            looping.send_signal(signal.SIGINT)
            try:
                looping.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # NOTE: in two full CI runs the looping player did not stop on SIGINT (cause not found; it does
                # when this test runs alone); the player is this test's load, the node is what it checks.
                looping.kill()
                looping.wait()
    assert last["segmented"] == len(masks) and listener.status[last["segmented"] - 1] == last
    assert last["dropped"] > 0 and last["segmented"] + last["dropped"] == CLIP_FRAMES, last
    stamps_ns = np.array([_stamp_ns(m.header) for m in masks])
    frame, rest = np.divmod(stamps_ns - stamps_ns[0], 125_000_000)               # the clip's frames, 8 a second
    assert np.all(np.diff(frame) > 0) and not rest.any()
    assert frame[-1] == CLIP_FRAMES - 1                         # the first and the last frame are never dropped
    assert max(r["model_ms"] for r in listener.status) > 50                       # the load was real
    final = listener.status[-1]
    assert "shutting down (signal)" in out and "Traceback" not in out, out
    assert "stopped: received " in out and final["dropped"] > last["dropped"], out


def test_node_start_up_faults_name_the_parameter(ros_env, tiny_artifact, tmp_path):
    cases = [(["drop_policy:=fifo"], ExitCode.USAGE, "parameter drop_policy must be one of newest, queue"),
             (["threshold:=1.5"], ExitCode.USAGE, "parameter threshold must be in (0, 1)"),
             (["threshold:=1"], ExitCode.USAGE, "parameter threshold must be a number with a decimal point"),
             (["queue_size:=many"], ExitCode.USAGE, "parameter queue_size must be an integer"),
             ([f"model_dir:={tmp_path / 'nowhere'}"], ExitCode.ARTIFACTS, "nowhere"),
             ([f"model_dir:={tiny_artifact}", "backend:=onnxruntime", "precision:=fp16"], ExitCode.BACKEND, "fp16"),
             ([f"model_dir:={tiny_artifact}", f"audio_file:={tmp_path / 'none.mp4'}"], ExitCode.AUDIO_SOURCE,
              "parameter audio_file: cannot open")]
    for params, code, message in cases:
        node = _start_node(ros_env, _namespace(), *params)
        out, _ = node.communicate(timeout=60)
        assert node.returncode == code and message in out, out
