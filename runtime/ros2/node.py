"""``avs-ros2``: a ROS 2 node that segments the sounding objects of an image topic with :class:`runtime.Segmenter`.

Frames come from ``sensor_msgs/Image`` (or ``sensor_msgs/CompressedImage``, JPEG/PNG), audio from a local
microphone (``runtime.microphone``, stamped on the node's ROS clock), from a file's audio track (a recorded clip
played as a topic: its time 0 at the first frame's stamp) or nowhere (silence). Each frame's header stamp
is its timestamp, so the live runtime's rules hold: the 0.96 s of audio ending at the stamp, the 1 Hz temporal
window over earlier stamps. Per segmented frame the node publishes the mask (``mono8``, the frame's header), the
overlay (``bgr8``, optional) and a ``std_msgs/String`` JSON status (latencies, counts).

The subscription callback only queues the message; one worker thread converts, segments and publishes. The queue
is bounded (``drop_policy``): a frame that arrives while it is full pushes out the oldest one, so the newest frame
always wins and nothing piles up; drops are counted in the status. Ctrl-C, SIGTERM or an rclpy shutdown stop the
spin loop, then the worker is joined, the audio source and the Segmenter are closed and the node destroyed.

``avs-ros2 --help`` lists the parameters (``--ros-args -p name:=value``).
"""
from __future__ import annotations

import collections
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from runtime.backends import BACKENDS, PRECISION_CHOICES
from runtime.cli import DEMO_MODEL, LIVE_AUDIO_WAIT, ExitCode
from runtime.render import overlay
from runtime.ros2 import RosUnavailable, import_rclpy
from runtime.ros2.images import compressed_to_bgr, fill_image, image_to_bgr

__all__ = ["PARAMETERS", "Parameter", "AvsNode", "NodeError", "main"]

QOS_CHOICES = ("sensor_data", "reliable", "system_default")
DROP_POLICIES = ("newest", "queue")
TRANSPORTS = ("raw", "compressed")


@dataclass(frozen=True)
class Parameter:
    """One ROS parameter of the node: its default (which fixes its type) and what it means."""
    name: str
    default: Any
    help: str


PARAMETERS = (
    Parameter("model_dir", "", "artifact directory (python -m export.build_engine); empty: the demo model "
                               f"{DEMO_MODEL}, built on first use in the avs-stream --demo cache"),
    Parameter("backend", "auto", "auto (TensorRT when engines fit this machine, else ONNX Runtime), tensorrt or "
                                 "onnxruntime"),
    Parameter("precision", "auto", "auto (the fastest precision the artifact was validated for on the "
                                      "backend), fp32, fp16 (TensorRT) or int8 (python -m calibration)"),
    Parameter("threshold", 0.0, "mask threshold of binary models, in (0, 1); 0: the artifact's"),
    Parameter("mic", "default", "microphone: default, a name or an index (avs-stream --list-devices); none: "
                                "the model hears silence"),
    Parameter("audio_file", "", "instead of a microphone, the audio track of this file, its time 0 at the first "
                                "frame's stamp (a recorded clip played as a topic); demo: the demo clip's"),
    Parameter("image_topic", "image", "input topic (sensor_msgs/Image: bgr8, rgb8, bgra8, rgba8, mono8)"),
    Parameter("image_transport", "raw", "raw: Image on image_topic; compressed: CompressedImage (JPEG/PNG) on "
                                        "image_topic/compressed"),
    Parameter("mask_topic", "mask", "output: sensor_msgs/Image mono8, the frame's header; binary models 0/255, "
                                    "semantic models class indices"),
    Parameter("publish_overlay", False, "also publish the frame with the mask blended in"),
    Parameter("overlay_topic", "overlay", "output: sensor_msgs/Image bgr8, the frame's header"),
    Parameter("alpha", 0.5, "overlay opacity in [0, 1]"),
    Parameter("status_topic", "status", "output: std_msgs/String, one JSON object per segmented frame"),
    Parameter("qos", "sensor_data", "input QoS: sensor_data (best effort, depth 5), reliable (depth 10) or "
                                    "system_default"),
    Parameter("output_qos", "reliable", "output QoS (reliable also serves best-effort subscribers)"),
    Parameter("drop_policy", "newest", "newest: one frame waits, a newer one replaces it; queue: up to "
                                       "queue_size frames wait, the oldest dropped when full"),
    Parameter("queue_size", 100, "frames that may wait with drop_policy queue"),
    Parameter("audio_wait", LIVE_AUDIO_WAIT, "seconds a frame waits for its audio from the microphone"),
    Parameter("log_period", 5.0, "seconds between progress lines in the log (counts, latency); 0: none"),
)


class NodeError(Exception):
    """A fault at start-up, reported in one line, with its exit status (``runtime.cli.ExitCode``)."""

    def __init__(self, code: ExitCode, message: str):
        super().__init__(message)
        self.code = code


def usage() -> str:
    """``--help``: the command line and the parameter table."""
    lines = ["usage: avs-ros2 [--help] [--ros-args -p NAME:=VALUE ... -r FROM:=TO ...]", "",
             "ROS 2 node: audio-visual segmentation of an image topic (see README, 'ROS 2').", "", "parameters:"]
    lines += [f"  {p.name} (default {p.default!r}): {p.help}" for p in PARAMETERS]
    return "\n".join(lines)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise NodeError(ExitCode.USAGE, f"parameter {name} must be one of {', '.join(choices)}; got {value!r} "
                                        f"(--ros-args -p {name}:={choices[0]})")
    return value


class AvsNode:
    """The node's state: parameters, Segmenter, audio source, publishers, subscription and worker.

    ``AvsNode(context)`` declares and checks the parameters, opens everything (raising :class:`NodeError`) and
    starts the worker; the caller spins ``self.node`` and calls :meth:`close` once.
    """

    def __init__(self, context=None, node_name: str = "avs_segmenter"):
        rclpy = import_rclpy()
        from rcl_interfaces.msg import ParameterDescriptor

        self.node = rclpy.create_node(node_name, context=context)
        self.log = self.node.get_logger()
        self.segmenter = self.microphone = self.pump = None
        self.counts = {"received": 0, "segmented": 0, "dropped": 0, "failed": 0}
        self._logged = dict(self.counts)
        self._model_ms: collections.deque = collections.deque(maxlen=30)
        self._queue: collections.deque = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._last_stamp: Optional[float] = None
        self._audio_origin: Optional[float] = None  # audio_file: the stamp of its time 0 (the first frame's)
        self._audio_name = "none"
        self._reported: set[str] = set()
        self._worker: Optional[threading.Thread] = None
        try:
            self.params = self._declare_parameters(ParameterDescriptor)
            self._check_parameters()
            self._capacity = 1 if self.params["drop_policy"] == "newest" else int(self.params["queue_size"])
            self.segmenter = self._open_segmenter()
            self._open_audio()
            self.log.info(f"warm-up run: {self.segmenter.warmup():.2f} s")
            self._create_topics()
            if self.params["log_period"] > 0:
                self.node.create_timer(self.params["log_period"], self._log_progress)
            self._worker = threading.Thread(target=self._work, name="avs-ros2-worker")
            self._worker.start()
        except BaseException:
            self.close()
            raise

    # -- start-up ----------------------------------------------------------------------------------------------
    def _declare_parameters(self, descriptor) -> dict[str, Any]:
        from rclpy.exceptions import InvalidParameterTypeException

        values = {}
        for p in PARAMETERS:
            try:
                values[p.name] = self.node.declare_parameter(p.name, p.default, descriptor(description=p.help)).value
            except InvalidParameterTypeException as exc:
                kind = {bool: "true or false", int: "an integer", float: "a number with a decimal point",
                        str: "a string"}[type(p.default)]
                raise NodeError(ExitCode.USAGE, f"parameter {p.name} must be {kind} (e.g. -p {p.name}:="
                                                f"{str(p.default).lower() if isinstance(p.default, bool) else p.default}"
                                                f"): {exc}") from None
        return values

    def _check_parameters(self) -> None:
        p = self.params
        _choice("backend", p["backend"], BACKENDS)
        _choice("precision", p["precision"], PRECISION_CHOICES)
        _choice("qos", p["qos"], QOS_CHOICES)
        _choice("output_qos", p["output_qos"], QOS_CHOICES)
        _choice("drop_policy", p["drop_policy"], DROP_POLICIES)
        _choice("image_transport", p["image_transport"], TRANSPORTS)
        if p["threshold"] != 0.0 and not 0.0 < p["threshold"] < 1.0:
            raise NodeError(ExitCode.USAGE, f"parameter threshold must be in (0, 1), or 0 for the artifact's; "
                                            f"got {p['threshold']}")
        if not 0.0 <= p["alpha"] <= 1.0:
            raise NodeError(ExitCode.USAGE, f"parameter alpha must be in [0, 1]; got {p['alpha']}")
        if p["queue_size"] < 1:
            raise NodeError(ExitCode.USAGE, f"parameter queue_size must be >= 1; got {p['queue_size']}")
        if p["log_period"] < 0:
            raise NodeError(ExitCode.USAGE, f"parameter log_period must be >= 0; got {p['log_period']}")
        if p["audio_wait"] < 0:
            raise NodeError(ExitCode.USAGE, f"parameter audio_wait must be >= 0; got {p['audio_wait']}")
        for name in ("image_topic", "mask_topic", "overlay_topic", "status_topic"):
            if not p[name]:
                raise NodeError(ExitCode.USAGE, f"parameter {name} is empty; give a topic name")

    def _create_topics(self) -> None:
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import String

        self._Image, self._String = Image, String
        p = self.params
        out_qos = self._qos(p["output_qos"])
        self._mask_pub = self.node.create_publisher(Image, p["mask_topic"], out_qos)
        self._overlay_pub = (self.node.create_publisher(Image, p["overlay_topic"], out_qos)
                             if p["publish_overlay"] else None)
        self._status_pub = self.node.create_publisher(String, p["status_topic"], out_qos)
        compressed = p["image_transport"] == "compressed"
        self._convert = compressed_to_bgr if compressed else image_to_bgr
        topic = p["image_topic"].rstrip("/") + "/compressed" if compressed else p["image_topic"]
        subscription = self.node.create_subscription(CompressedImage if compressed else Image, topic,
                                                     self._on_image, self._qos(p["qos"]))
        self.log.info(f"{self.segmenter.manifest.model.name} on {self.segmenter.backend.name}: "
                      f"{subscription.topic_name} ({'CompressedImage' if compressed else 'Image'}, qos {p['qos']}) "
                      f"-> {self._mask_pub.topic_name}"
                      + (f", {self._overlay_pub.topic_name}" if self._overlay_pub else "")
                      + f", {self._status_pub.topic_name}; drop policy {p['drop_policy']} "
                        f"({self._capacity} waiting at most)")

    @staticmethod
    def _qos(choice: str):
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data, qos_profile_system_default

        if choice == "sensor_data":
            return qos_profile_sensor_data
        if choice == "reliable":
            return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        return qos_profile_system_default

    def _open_segmenter(self):
        from runtime.backends import BackendError
        from runtime.builder import ArtifactError, demo_cache_dir, ensure_artifacts
        from runtime.manifest import ManifestError
        from runtime.segmenter import Segmenter

        p = self.params
        try:
            if p["model_dir"]:
                model_dir = p["model_dir"]
            else:
                self.log.info(f"model_dir not set: the demo model {DEMO_MODEL} (trained on synthetic data; "
                              "-p model_dir:=DIR for yours)")
                model_dir = ensure_artifacts(demo_cache_dir() / DEMO_MODEL, DEMO_MODEL, self.log.info)
        except ArtifactError as exc:
            raise NodeError(ExitCode.ARTIFACTS, str(exc)) from None
        try:
            return Segmenter(model_dir, p["backend"], precision=p["precision"], threshold=p["threshold"] or None,
                             audio=bool(p["audio_file"]) or p["mic"].strip().lower() != "none", say=self.log.info)
        except ManifestError as exc:
            raise NodeError(ExitCode.ARTIFACTS, str(exc)) from None
        except BackendError as exc:
            raise NodeError(ExitCode.BACKEND, str(exc)) from None

    def _open_audio(self) -> None:
        from runtime.microphone import AudioPump, Microphone, MicrophoneError, TrackAudio

        if self.params["audio_file"]:
            path = self.params["audio_file"]
            if path == "demo":
                from runtime.ros2.play import demo_clip

                path = str(demo_clip(self.log.info))
            try:
                track = TrackAudio(path).start()
            except MicrophoneError as exc:
                raise NodeError(ExitCode.AUDIO_SOURCE, f"parameter audio_file: {exc}") from None
            self.pump = AudioPump(track, [self._push_file_audio], self.log.warning)
            self._audio_name = path
            self.log.info(f"audio: the track of {path} ({track.sample_rate} Hz, {track.channels} ch), its time 0 "
                          "at the first frame's stamp")
            return
        mic = self.params["mic"].strip()
        if mic.lower() == "none":
            self.log.info("audio: none (mic:=none): the model hears silence")
            return
        if self.node.get_parameter("use_sim_time").value:
            self.log.warning("audio: use_sim_time is true but the microphone is live; its samples are stamped on "
                             "the simulated clock, which pairs them with the frames only when that clock runs in "
                             "real time")
        clock = self.node.get_clock()
        try:
            self.microphone = Microphone(int(mic) if mic.isdigit() else mic,
                                         clock=lambda: clock.now().nanoseconds * 1e-9).start()
        except MicrophoneError as exc:
            raise NodeError(ExitCode.AUDIO_SOURCE, f"{exc} (parameter mic; -p mic:=none for silence)") from None
        self.pump = AudioPump(self.microphone, [self.segmenter.push_audio], self.log.warning)
        self._audio_name = self.microphone.name
        self.log.info(f"audio: microphone {self.microphone.name!r} at {self.microphone.sample_rate} Hz, "
                      f"{self.microphone.channels} ch, stamped on the ROS clock")

    def _push_file_audio(self, samples: np.ndarray, sample_rate: int, timestamp: float) -> None:
        self.segmenter.push_audio(samples, sample_rate, self._audio_origin + timestamp)

    # -- the stream --------------------------------------------------------------------------------------------
    def _on_image(self, msg) -> None:
        """The subscription callback: queue the message (bounded; the oldest waiting frame is dropped)."""
        with self._cond:
            self.counts["received"] += 1
            if len(self._queue) >= self._capacity:
                self._queue.popleft()
                self.counts["dropped"] += 1
            self._queue.append((msg, time.perf_counter()))
            self._cond.notify()

    def _work(self) -> None:
        """The worker: the oldest waiting frame, converted, paired with its audio, segmented, published."""
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(0.1)
                    if self.microphone is not None:  # keep its ring from overflowing while no frame comes
                        self.pump.pump()
                if self._stopping:
                    return
                msg, received = self._queue.popleft()
            try:
                self._segment(msg, received)
            except Exception as exc:  # noqa: BLE001  (one bad frame must not stop the node; counted, reported)
                with self._cond:
                    if self._stopping:
                        return
                    self.counts["failed"] += 1
                self._report(exc)

    def _segment(self, msg, received: float) -> None:
        image = self._convert(msg)
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if self._last_stamp is not None and stamp < self._last_stamp:
            self.log.warning(f"frame stamp {stamp:.6f} s is before the previous one ({self._last_stamp:.6f} s): "
                             "starting a new stream (a bag restarted?)")
            self.segmenter.reset()
        self._last_stamp = stamp
        if self.microphone is not None:
            self.pump.wait_live(stamp, self.params["audio_wait"])
        elif self.pump is not None:  # audio_file
            if self._audio_origin is None:
                self._audio_origin = stamp
            self.pump.pump_file_until(stamp - self._audio_origin)
        result = self.segmenter.segment(image, stamp)
        mask = result.mask * np.uint8(255) if self.segmenter.binary else result.mask
        out = fill_image(self._Image(), mask, "mono8")
        out.header = msg.header
        self._mask_pub.publish(out)
        if self._overlay_pub is not None:
            blended = overlay(image, result.mask, self.segmenter.manifest.output.palette, self.segmenter.binary,
                              self.params["alpha"])
            view = fill_image(self._Image(), blended, "bgr8")
            view.header = msg.header
            self._overlay_pub.publish(view)
        self._model_ms.append(result.model_latency * 1e3)
        with self._cond:
            self.counts["segmented"] += 1
            counts = dict(self.counts, waiting=len(self._queue))
        now = self.node.get_clock().now().nanoseconds * 1e-9
        status = {"stamp": round(stamp, 9), "frame_id": msg.header.frame_id, "index": result.index,
                  "mask_area": round(result.area, 6), "model_ms": round(result.model_latency * 1e3, 3),
                  "pipeline_ms": round((time.perf_counter() - received) * 1e3, 3),
                  "age_ms": round((now - stamp) * 1e3, 3), "window": len(result.window),
                  "audio": self._audio_name,
                  "audio_missing_s": round(result.audio_missing, 6), **counts}
        self._status_pub.publish(self._String(data=json.dumps(status)))

    def _log_progress(self) -> None:
        """The timer: one line of counts and latency, when something happened since the last one."""
        with self._cond:
            counts = dict(self.counts)
        if counts == self._logged:
            return
        new = {k: counts[k] - self._logged[k] for k in counts}
        self._logged = counts
        mean = f", model {np.mean(self._model_ms):.1f} ms/frame" if self._model_ms else ""
        self.log.info(f"last {self.params['log_period']:g} s: received {new['received']}, segmented "
                      f"{new['segmented']}, dropped {new['dropped']}, failed {new['failed']}{mean}")

    def _report(self, exc: Exception) -> None:
        """Log a failed frame; the same kind of fault only once (then it is counted in the status)."""
        kind = f"{type(exc).__name__}: {str(exc)[:80]}"
        if kind not in self._reported:
            self._reported.add(kind)
            self.log.error(f"frame skipped: {exc} (further frames failing the same way are only counted)")

    # -- lifetime ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop and join the worker, close the audio source and the Segmenter, destroy the node (once)."""
        if self._worker is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._worker.join()
            self._worker = None
            mean = f", model {np.mean(self._model_ms):.1f} ms/frame" if self._model_ms else ""
            self.log.info(f"stopped: received {self.counts['received']}, segmented {self.counts['segmented']}, "
                          f"dropped {self.counts['dropped']}, failed {self.counts['failed']}{mean}")
        if self.pump is not None and self.pump.source is not None:
            self.pump.source.close()  # the microphone or the file's track
            self.pump = self.microphone = None
        if self.segmenter is not None:
            self.segmenter.close()
            self.segmenter = None
        if self.node is not None:
            self.node.destroy_node()
            self.node = None


def _split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(our arguments, the ROS arguments from ``--ros-args`` on)."""
    if "--ros-args" in argv:
        at = argv.index("--ros-args")
        return argv[:at], argv[at:]
    return argv, []


def main(argv: Optional[list[str]] = None, say: Optional[Callable[[str], None]] = None) -> int:
    """``avs-ros2``: spin the node until Ctrl-C, SIGTERM or an rclpy shutdown; returns the exit status."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    ours, ros_args = _split_argv(list(sys.argv[1:] if argv is None else argv))
    if ours in (["-h"], ["--help"]):
        print(usage())
        return ExitCode.OK
    if ours:
        say(f"error: unexpected arguments {' '.join(ours)}; parameters go after --ros-args "
            "(avs-ros2 --ros-args -p model_dir:=DIR -p mic:=none); avs-ros2 --help lists them")
        return ExitCode.USAGE
    try:
        rclpy = import_rclpy()
    except RosUnavailable as exc:
        say(f"error: {exc}")
        return ExitCode.BACKEND
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    context = rclpy.Context()
    try:
        rclpy.init(args=["avs-ros2", *ros_args], context=context, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # noqa: BLE001  (rcl's argument errors have several types)
        say(f"error: invalid ROS arguments {' '.join(ros_args)}: {exc}")
        return ExitCode.USAGE
    stop = threading.Event()
    handlers = {}
    node = None
    try:
        node = AvsNode(context)
        # From here our own signal handlers: the spin loop ends, then everything closes in order while the
        # context is still up (rclpy's handlers would shut the context down under the worker).
        handlers = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node.node)
        while not stop.is_set() and context.ok():
            executor.spin_once(timeout_sec=0.1)
        node.log.info("shutting down (" + ("signal" if stop.is_set() else "rclpy shutdown") + ")")
        executor.shutdown()
        return ExitCode.OK
    except NodeError as exc:
        say(f"error: {exc}")
        return exc.code
    except KeyboardInterrupt:
        say("interrupted during start-up")
        return ExitCode.OK
    finally:
        if node is not None:
            node.close()
        for number, handler in handlers.items():
            signal.signal(number, handler)
        context.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
