"""runtime.outputs through real files: every writer read back from disk (PyAV for the mp4), path checks, failures."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from runtime.outputs import Outputs, OutputError, OutputPathError, Window, check_output_path, read_mp4
from runtime.render import Mp4Writer

RATE = 44100
AAC_FRAME = 1024 / RATE


def _streams(path: Path) -> tuple[int, float, float]:
    """(decoded video frames, video end, audio end) in seconds, from PyAV's own reading of the file."""
    with av.open(str(path)) as container:
        assert container.streams.video, f"{path} has no video stream"
        frames = sum(1 for _ in container.decode(video=0))
    with av.open(str(path)) as container:
        ends = {"video": 0.0, "audio": 0.0}
        for packet in container.demux():
            if packet.pts is not None and packet.size:
                end = float((packet.pts + packet.duration) * packet.time_base)
                ends[packet.stream.type] = max(ends[packet.stream.type], end)
    return frames, ends["video"], ends["audio"]


def _frame(i: int) -> np.ndarray:
    return np.full((72, 128, 3), 30 * i % 256, np.uint8)


def test_every_output_is_written_and_read_back(tmp_path):
    video, masks, jsonl = tmp_path / "a" / "out.mp4", tmp_path / "masks", tmp_path / "b" / "log.jsonl"
    outputs = Outputs(video, masks, jsonl, fps=5, audio_rate=RATE, audio_channels=2)
    assert outputs.wants_audio
    outputs.add_audio(np.full((3 * RATE, 2), 0.1, np.float32), RATE, 0.0)  # 3 s of audio for 1 s of video
    for i in range(5):
        mask = np.zeros((72, 128), np.uint8)
        mask[: 10 * (i + 1)] = 255
        outputs.render(lambda i=i: _frame(i), i / 5, index=10 + i, mask=mask, record=lambda i=i: {"frame": i})
    report = outputs.close()
    assert outputs.close() == report  # finalised once; a second close repeats the report
    frames, video_end, audio_end = _streams(video)
    assert frames == 5 and video_end == pytest.approx(1.0, abs=0.03)
    assert 0.9 < audio_end <= video_end + AAC_FRAME  # trimmed to the video, not the 3 s given
    contents = read_mp4(video)
    assert contents.frames == 5 and contents.audio_seconds == pytest.approx(audio_end, abs=1e-6)
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == [{"frame": i} for i in range(5)]
    pngs = sorted(masks.glob("*.png"))
    assert [p.name for p in pngs] == [f"{10 + i:06d}.png" for i in range(5)]
    assert np.count_nonzero(cv2.imread(str(pngs[2]), cv2.IMREAD_UNCHANGED)) == 30 * 128
    assert report == [f"{video} (5 frames, video {contents.video_seconds:.2f} s, audio {audio_end:.2f} s)",
                      f"{jsonl} (5 lines)", f"{masks}/ (5 PNGs)"]


def test_mp4_writer_trims_audio_to_the_video(tmp_path):
    path = tmp_path / "plain.mp4"
    with Mp4Writer(path, audio_rate=RATE, audio_channels=1, fps=4) as writer:
        for i in range(4):
            writer.add_frame(_frame(i), 7.0 + i / 4)  # any clock: the first frame is time 0 of the file
            writer.add_audio(np.full(RATE // 2, 0.2, np.float32), RATE, 7.0 + i / 4)  # runs 0.25 s past each frame
    frames, video_end, audio_end = _streams(path)
    assert frames == 4 and video_end == pytest.approx(1.0, abs=1e-3)
    assert video_end - AAC_FRAME <= audio_end <= video_end + AAC_FRAME


def test_a_failing_output_is_reported_and_the_others_are_finalised(tmp_path):
    video, masks = tmp_path / "ok.mp4", tmp_path / "masks"
    outputs = Outputs(video, masks, fps=5)
    shutil.rmtree(masks)
    masks.write_text("now a file")  # so no PNG can be written
    with pytest.raises(OutputError):
        for i in range(20):
            outputs.render(_frame(i), i / 5, mask=np.zeros((72, 128), np.uint8))
        outputs.close()
    with pytest.raises(OutputError):
        outputs.close()  # whoever stopped at the failing render() still finalises the rest, and hears of it again
    assert outputs.report == [f"{video} (1 frame, video 0.20 s, no audio)", f"{masks}/ (0 PNGs)"]
    assert _streams(video)[0] == 1  # the frame before the failure, in a finalised, playable mp4


@pytest.mark.parametrize("make, directory, reason", [
    (lambda t: (t / "file").write_text("x") and t / "file" / "out.mp4", False, "is a file"),
    (lambda t: t, False, "is a directory"),
    (lambda t: (t / "masks").write_text("x") and t / "masks", True, "is not a directory"),
    (lambda t: Path("/proc/avs-edge/out.mp4"), False, "cannot create files in /proc"),
])
def test_unwritable_output_paths_are_named(tmp_path, make, directory, reason):
    path = make(tmp_path)
    with pytest.raises(OutputPathError) as caught:
        check_output_path(path, directory)
    assert caught.value.path == path and reason in caught.value.reason
    with pytest.raises(OutputPathError):
        Outputs(**{"masks" if directory else "video": path})


def test_a_good_path_is_checked_without_creating_anything(tmp_path):
    check_output_path(tmp_path / "new" / "deeper" / "out.mp4")
    check_output_path(tmp_path / "masks", directory=True)
    assert list(tmp_path.iterdir()) == []


def test_window_without_a_display_runs_headless(monkeypatch):
    if not sys.platform.startswith("linux"):
        pytest.skip("the no-display rule is Linux's")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    lines = []
    window = Window(lines.append)
    assert not window.enabled and window.show(_frame(0)) is True
    assert lines == ["display: no $DISPLAY or $WAYLAND_DISPLAY; running headless"]
