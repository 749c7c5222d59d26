"""Play a video file (or the demo clip) as a ROS 2 image topic, or write it to a rosbag2, for ``avs-ros2``.

    python -m runtime.ros2.play --demo                          # the demo clip on /image, in real time
    python -m runtime.ros2.play clip.mp4 --topic /camera/image_raw --loop
    python -m runtime.ros2.play --demo --bag demo-bag           # a rosbag2 of it instead (rosbags; no ROS needed)

Frame i is stamped ``t0 + pts_i`` (t0: the clock when playing starts; with ``--loop`` each pass continues after
the previous one), so the node sees the clip's own timing whatever ``--rate`` publishes at. Publishing waits for a
subscriber first (``--wait``), so the node, started before or after, misses no frame. The clip's audio is not
published: no standard ROS 2 audio message ships with the PyPI wheels (see README, 'ROS 2').
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

__all__ = ["ClipError", "read_clip", "demo_clip", "write_bag", "publish", "main"]


class ClipError(ValueError):
    """The file cannot be read as a video."""


def read_clip(path: Path) -> tuple[float, Iterator[tuple[float, np.ndarray]]]:
    """(frame rate, an iterator of (presentation time in seconds from the first frame, BGR frame)); raises
    :class:`ClipError` when the file cannot be read as a video."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ClipError(f"cannot open {path} as a video: {exc}") from None
    if not container.streams.video:
        container.close()
        raise ClipError(f"{path} has no video stream")
    stream = container.streams.video[0]
    rate = float(stream.average_rate or 30)

    def frames():
        try:
            first = None
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / rate
                first = t if first is None else first
                yield t - first, frame.to_ndarray(format="bgr24")
        finally:
            container.close()

    return rate, frames()


def demo_clip(say: Callable[[str], None] = print) -> Path:
    """The clip ``avs-stream --demo`` segments (generated on first use in the demo cache)."""
    from runtime.builder import demo_cache_dir
    from runtime.cli import DEMO_CLIP, DEMO_SEED
    from runtime.datasets.synth import render_demo_clip

    clip = demo_cache_dir() / DEMO_CLIP
    if not clip.is_file():
        clip.parent.mkdir(parents=True, exist_ok=True)
        render_demo_clip(clip, seed=DEMO_SEED)
        say(f"generated the demo clip {clip}")
    return clip


def _encode(image: np.ndarray, compression: str) -> np.ndarray:
    import cv2

    ok, data = cv2.imencode(".jpg" if compression == "jpeg" else f".{compression}", image)
    if not ok:
        raise ValueError(f"OpenCV cannot encode {compression}")
    return data.reshape(-1)


def _stamp(start_ns: int, seconds: float) -> tuple[int, int]:
    """(sec, nanosec) of ``start_ns + seconds``, in integers: float seconds since 1970 would lose 0.2 us."""
    ns = start_ns + int(round(seconds * 1e9))
    return ns // 1_000_000_000, ns % 1_000_000_000


def write_bag(clip: Path, out: Path, topic: str = "/image", frame_id: str = "camera", storage: str = "sqlite3",
              compressed: Optional[str] = None, start: Optional[float] = None) -> int:
    """Write the clip's frames to a new rosbag2 directory ``out`` (``rosbags``; no ROS installation needed): one
    ``sensor_msgs/Image`` bgr8 (or ``CompressedImage`` on ``topic/compressed``) per frame, stamped ``start + pts``
    (default: now). Returns the number of messages."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = store.types
    kind = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    topic = "/" + topic.strip("/") + ("/compressed" if compressed else "")
    start_ns = time.time_ns() if start is None else int(round(start * 1e9))
    _, frames = read_clip(clip)
    count = 0
    with Writer(out, version=8, storage_plugin=StoragePlugin[storage.upper()]) as writer:
        connection = writer.add_connection(topic, kind, typestore=store)
        for pts, image in frames:
            sec, nanosec = _stamp(start_ns, pts)
            header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=sec,
                                                                                              nanosec=nanosec),
                                                  frame_id=frame_id)
            if compressed:
                msg = types[kind](header=header, format=compressed, data=_encode(image, compressed))
            else:
                msg = types[kind](header=header, height=image.shape[0], width=image.shape[1], encoding="bgr8",
                                  is_bigendian=0, step=image.shape[1] * 3, data=image.reshape(-1))
            writer.write(connection, sec * 1_000_000_000 + nanosec, store.serialize_cdr(msg, kind))
            count += 1
    return count


def publish(clip: Path, topic: str = "image", frame_id: str = "camera", rate: Optional[float] = None,
            compressed: Optional[str] = None, qos: str = "reliable", wait: float = math.inf, loop: bool = False,
            say: Callable[[str], None] = print) -> int:
    """Publish the clip's frames on ``topic`` until it ends (or forever with ``loop``); returns the count.

    ``rate``: frames per second published (default the clip's; 0 as fast as possible); ``wait``: seconds to
    wait for a subscriber first."""
    from runtime.ros2 import import_rclpy
    from runtime.ros2.images import fill_image

    rclpy = import_rclpy()
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CompressedImage, Image

    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)  # Ctrl-C: KeyboardInterrupt
    node = rclpy.create_node("avs_clip_player", context=context)
    try:
        profile = (qos_profile_sensor_data if qos == "sensor_data"
                   else QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        name = topic.rstrip("/") + "/compressed" if compressed else topic
        publisher = node.create_publisher(CompressedImage if compressed else Image, name, profile)
        deadline = time.monotonic() + wait
        if publisher.get_subscription_count() == 0 and wait > 0:
            say(f"waiting for a subscriber on {publisher.topic_name} (start avs-ros2; --wait S gives up after S s)")
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if publisher.get_subscription_count() == 0:
            say(f"no subscriber on {publisher.topic_name} after {wait:g} s; publishing anyway")
        clip_rate, frames = read_clip(clip)
        period = 0.0 if rate == 0 else 1.0 / (rate or clip_rate)
        say(f"publishing {clip} on {publisher.topic_name} ({'CompressedImage' if compressed else 'Image bgr8'}, "
            f"{'as fast as possible' if not period else f'{1 / period:g} frames/s'})")
        t0, offset, count, began = node.get_clock().now().nanoseconds, 0.0, 0, time.monotonic()
        while True:
            last = 0.0
            for pts, image in frames:
                delay = began + count * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if compressed:
                    msg = CompressedImage(format=compressed, data=_encode(image, compressed).tobytes())
                else:
                    msg = fill_image(Image(), image, "bgr8")
                msg.header.frame_id = frame_id
                msg.header.stamp.sec, msg.header.stamp.nanosec = _stamp(t0, offset + pts)
                publisher.publish(msg)
                count, last = count + 1, pts
            if not loop:
                break
            offset += last + 1.0 / clip_rate
            _, frames = read_clip(clip)
        time.sleep(1.0)  # let reliable delivery of the last frames finish before the publisher goes away
        say(f"published {count} frames")
        return count
    finally:
        node.destroy_node()
        context.try_shutdown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.ros2.play", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", nargs="?", type=Path, help="video file (mp4, avi, ...)")
    parser.add_argument("--demo", action="store_true", help="the demo clip of avs-stream --demo (made on first use)")
    parser.add_argument("--topic", default="image", help="image topic (default image)")
    parser.add_argument("--frame-id", default="camera", help="header frame_id (default camera)")
    parser.add_argument("--rate", type=float, metavar="HZ",
                        help="frames published per second (default the clip's: real time; 0 as fast as possible)")
    parser.add_argument("--compressed", choices=("jpeg", "png"),
                        help="publish sensor_msgs/CompressedImage on TOPIC/compressed instead of Image")
    parser.add_argument("--qos", choices=("reliable", "sensor_data"), default="reliable",
                        help="publisher QoS (default reliable: also serves best-effort subscribers)")
    parser.add_argument("--wait", type=float, default=math.inf, metavar="S",
                        help="seconds to wait for a subscriber before publishing (default: until one comes)")
    parser.add_argument("--loop", action="store_true", help="play again and again (stamps keep increasing)")
    parser.add_argument("--bag", type=Path, metavar="DIR", help="write a rosbag2 to DIR instead of publishing")
    parser.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3",
                        help="rosbag2 storage for --bag (default sqlite3)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Exit status: 0 done, 2 bad arguments, 3 the clip cannot be read, 6 ROS 2 (or rosbags) is missing."""
    args = build_parser().parse_args(argv)
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    if (args.clip is None) == (not args.demo):
        say("error: give a video file or --demo (not both)")
        return 2
    if args.rate is not None and args.rate < 0:
        say(f"error: --rate must be >= 0; got {args.rate}")
        return 2
    clip = demo_clip(say) if args.demo else args.clip
    if not clip.is_file():
        say(f"error: no video file at {clip}")
        return 3
    try:
        if args.bag is not None:
            if args.bag.exists():
                say(f"error: {args.bag} exists; rosbag2 writes a new directory: remove it or choose another")
                return 2
            try:
                import rosbags  # noqa: F401
            except ImportError:
                say("error: writing a bag needs the rosbags package: pip install -e '.[ros]' (or pip install rosbags)")
                return 6
            count = write_bag(clip, args.bag, args.topic, args.frame_id, args.storage, args.compressed)
            say(f"wrote {count} frames of {clip} to the rosbag2 {args.bag} (play it with: ros2 bag play {args.bag})")
            return 0
        from runtime.ros2 import RosUnavailable

        try:
            publish(clip, args.topic, args.frame_id, args.rate, args.compressed, args.qos, args.wait, args.loop, say)
        except RosUnavailable as exc:
            say(f"error: {exc}")
            return 6
    except ClipError as exc:
        say(f"error: {exc}")
        return 3
    except KeyboardInterrupt:
        say("interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
