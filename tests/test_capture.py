"""runtime.capture: sources, newest-frame policy, timestamps, missing and lost sources (real files and HTTP)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from runtime.capture import SourceError, VideoSource, VideoURI, parse_video_uri
from runtime.demo_clip import make_clip
from tests.mjpeg_camera import MjpegCamera


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("capture") / "clip.mp4", seconds=1.5, fps=10, width=160, height=120)


def test_parse_video_uri():
    assert parse_video_uri(0) == VideoURI("camera", 0)
    assert parse_video_uri("2") == VideoURI("camera", 2)
    assert parse_video_uri("/dev/video1") == VideoURI("camera", "/dev/video1")
    assert parse_video_uri("v4l2:///dev/video3") == VideoURI("camera", "/dev/video3")
    assert parse_video_uri("rtsp://cam.local:554/live") == VideoURI("url", "rtsp://cam.local:554/live")
    assert parse_video_uri("file://clip.mp4") == VideoURI("file", "clip.mp4")
    assert parse_video_uri("clip.mp4").kind == "file" and not parse_video_uri("clip.mp4").live
    with pytest.raises(SourceError, match="unsupported source scheme gopher"):
        parse_video_uri("gopher://x")


def test_file_delivers_every_frame_with_its_presentation_time(clip):
    with VideoSource(clip.path) as source:
        frames = []
        while source.is_streaming():
            frame = source.read(timeout=2.0)
            if frame is not None:
                frames.append(frame)
                time.sleep(0.01)  # a slow consumer must not lose file frames
    assert len(frames) == clip.frames
    assert [f.index for f in frames] == list(range(clip.frames))
    assert np.allclose([f.timestamp for f in frames], np.arange(clip.frames) / clip.fps, atol=1e-3)
    assert frames[0].image.shape == (clip.height, clip.width, 3) and frames[0].image.dtype == np.uint8
    assert source.dropped == 0 and not source.lost
    assert source.fps == pytest.approx(clip.fps)


def test_newest_frame_policy_drops_stale_frames(clip):
    with VideoSource(clip.path, drop_stale=True) as source:
        time.sleep(0.5)  # the decoder runs far ahead of us
        got = []
        while source.is_streaming():
            frame = source.read(timeout=2.0)
            if frame is not None:
                got.append(frame.index)
    assert got and got[-1] == clip.frames - 1
    assert source.dropped == clip.frames - len(got) > 0
    assert got == sorted(got)


def test_missing_sources_are_named():
    with pytest.raises(SourceError, match=r"cannot open camera 7: no such camera .*available cameras: "):
        VideoSource(7).start()
    with pytest.raises(SourceError, match="video file .*nope.mp4 does not exist"):
        VideoSource("nope.mp4").start()


def test_corrupt_file_is_a_source_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(SourceError, match="bad.mp4"):
        VideoSource(bad).start()


class _FlakyReader:
    finite, fps = False, 30.0

    def __init__(self, frames: int):
        self.left = frames

    def read(self):
        if self.left == 0:
            return None
        self.left -= 1
        return np.zeros((4, 4, 3), np.uint8), None

    def release(self):
        pass


def test_lost_camera_reconnects_with_backoff_then_gives_up():
    opens, events = [], []

    def opener(uri):
        opens.append(time.monotonic())
        if len(opens) > 2:
            raise SourceError("cannot open camera 0")
        return _FlakyReader(3)

    source = VideoSource(0, opener=opener, retries=3, backoff=0.02, max_backoff=1.0, on_event=events.append)
    with source:
        frames = 0
        while source.is_streaming():
            frames += source.read(timeout=0.5) is not None
    assert source.lost and source.reconnects == 1
    assert "did not come back after 3 attempts" in source.error and "cannot open camera 0" in source.error
    assert len(opens) == 2 + 3
    gaps = np.diff(opens[2:])
    assert gaps[1] >= gaps[0] * 1.5  # the wait grows between attempts
    assert any("reconnected" in e for e in events)
    assert 1 <= frames <= 6


def test_network_camera_that_goes_away_is_lost():
    """A real MJPEG-over-HTTP stream whose server shuts down: frames arrive, then retries fail, cleanly."""
    camera = MjpegCamera(frames=15, size=(48, 64), interval=0.02)
    source = VideoSource(camera.url, retries=2, backoff=0.05)
    with source:
        got = []
        camera.streamed.wait(10)
        camera.stop()
        while source.is_streaming():
            frame = source.read(timeout=1.0)
            if frame is not None:
                got.append(frame)
    assert got, "no frame arrived before the server went away"
    assert source.lost and "was lost" in source.error
    assert all(abs(f.timestamp - time.monotonic()) < 30 for f in got)  # stamped on the monotonic clock


def _faststart_clip(path, frames: int = 48) -> None:
    """An mp4 with its index first (as streamed downloads are), so a cut copy still opens."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=12)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(frames):
            image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(stream.encode())


def test_truncated_file_ends_incomplete_and_says_so(tmp_path):
    whole, cut = tmp_path / "whole.mp4", tmp_path / "cut.mp4"
    _faststart_clip(whole)
    data = whole.read_bytes()
    cut.write_bytes(data[:int(len(data) * 0.45)])
    events = []
    with VideoSource(whole) as source:
        while source.is_streaming():
            source.read(timeout=2.0)
    assert source.frames_read == 48 and not source.incomplete and source.error is None
    with VideoSource(cut, on_event=events.append) as source:
        while source.is_streaming():
            source.read(timeout=2.0)
    assert 0 < source.frames_read < 48 and source.incomplete
    assert f"after {source.frames_read} frames of the 48 its header declares" in source.error
    assert events == [source.error]
