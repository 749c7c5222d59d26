"""Calibration and accuracy clips from an AVSBench-layout folder, a folder of videos, or the synthetic generator.

Every source gives :class:`runtime.datasets.avsbench.Clip` objects (BGR frames, one VGGish log-mel example per
frame, ground-truth masks where the source has them), split into *calibration* clips (the INT8 ranges and the
sensitivity sweep) and held-out *accuracy* clips (the figures recorded in the manifest):

* ``synth``: clips drawn by ``runtime.datasets.synth`` into a temporary folder: calibration from the train split
  (seed ``CALIBRATION_SEED``), accuracy from the test split of seed ``TEST_SEED`` (the demo model's held-out set);
* an AVSBench-layout folder (the official data sets, or ``avs-synth`` output): calibration from its train split
  (val when it has no train clips), accuracy from its test split;
* a folder of videos with audio (mp4, mkv, mov, avi, webm; decoded with PyAV): cut into clips of the model's
  ``frames_per_clip`` frames at one frame per second, each frame with the 0.96 s of audio ending at it (the live
  rule); every fifth clip is held out for accuracy. Videos have no ground truth: their accuracy is the agreement
  with fp32 only.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from runtime import audio as vggish_audio
from runtime.datasets.avsbench import MASK_SIZE, AVSBench, Clip, DatasetError, detect_task, read_wav

__all__ = ["SYNTH", "CALIBRATION_SEED", "TEST_SEED", "ClipList", "ClipSource", "open_source"]

SYNTH = "synth"
CALIBRATION_SEED, TEST_SEED = 11, 7
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
HOLD_OUT_EVERY = 5


@dataclass
class ClipList:
    """Clips in memory that look like an :class:`AVSBench` split to ``runtime.evaluate.evaluate``."""
    task: str
    split: str
    root: Path
    clips: list[Clip]
    class_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> Clip:
        return self.clips[index]

    @property
    def has_ground_truth(self) -> bool:
        return any(len(c.masks) for c in self.clips)


@dataclass
class ClipSource:
    """Calibration clips and held-out accuracy clips, with a one-line description of where they came from."""
    description: str
    calibration: ClipList
    accuracy: ClipList
    keep_alive: Optional[tempfile.TemporaryDirectory] = None


def _take(data: AVSBench, count: int) -> list[Clip]:
    clips = [data[i] for i in range(min(count, len(data)))]
    if not clips:
        raise DatasetError(f"{data.root}: the {data.split} split has no clips")
    return clips


def _split_with_clips(root: Path, task: Optional[str], splits: tuple[str, ...], resolution: int) -> AVSBench:
    for split in splits:
        data = AVSBench(root, task, split, resolution)
        if len(data):
            return data
    raise DatasetError(f"{root}: none of the splits {', '.join(splits)} has clips")


def _from_avsbench(root: Path, task: Optional[str], resolution: int, clips: int, accuracy_clips: int
                   ) -> tuple[str, ClipList, ClipList]:
    calibration = _split_with_clips(root, task, ("train", "val"), resolution)
    test = AVSBench(root, calibration.task, "test", resolution)
    names = list(getattr(test, "class_names", []))
    cal = ClipList(calibration.task, calibration.split, calibration.root, _take(calibration, clips), names)
    acc = ClipList(test.task, "test", test.root, _take(test, accuracy_clips), names)
    return (f"{calibration.root} ({calibration.task}): {len(cal)} {calibration.split} clips for calibration, "
            f"{len(acc)} test clips for accuracy"), cal, acc


def _video_frames(path: Path, times: np.ndarray, resolution: int) -> list[np.ndarray]:
    """The frames shown at ``times`` (seconds from the first frame): the last frame starting at or before each."""
    import av

    picked: list[Optional[np.ndarray]] = [None] * len(times)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            start = None
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                start = t if start is None else start
                image = None
                for i, target in enumerate(times):
                    if t - start <= target + 1e-6:
                        image = image if image is not None else cv2.resize(
                            frame.to_ndarray(format="bgr24"), (resolution, resolution), interpolation=cv2.INTER_AREA)
                        picked[i] = image
                if t - start > times[-1]:
                    break
    except (av.error.FFmpegError, IndexError) as exc:
        raise DatasetError(f"cannot decode the video of {path}: {exc}") from None
    if any(p is None for p in picked):
        raise DatasetError(f"{path} has no video frames")
    return picked


def _video_clips(path: Path, frames_per_clip: int, resolution: int) -> list[Clip]:
    """``path`` cut into clips of ``frames_per_clip`` seconds, frame i at second i + 1 of its clip."""
    samples, rate = read_wav(path)
    mono16k = vggish_audio.resample_to_16k(vggish_audio.to_mono(samples), rate)
    log_mel = vggish_audio.log_mel_frames(mono16k)
    seconds = mono16k.size / vggish_audio.SAMPLE_RATE
    count = int(seconds // frames_per_clip)
    if count == 0:
        raise DatasetError(f"{path} is {seconds:.1f} s long; calibration clips need at least {frames_per_clip} s "
                           "of audio and video")
    ends = np.arange(1, count * frames_per_clip + 1, dtype=np.float64)
    frames = _video_frames(path, ends - 0.5, resolution)
    examples = np.stack([log_mel[vggish_audio.example_frame_range(t)] for t in ends])[:, None]
    clips = []
    for c in range(count):
        part = slice(c * frames_per_clip, (c + 1) * frames_per_clip)
        clips.append(Clip(name=f"{path.stem}_{c:03d}", category="", frames=frames[part],
                          log_mel=examples[part].astype(np.float32), masks=np.zeros((0, MASK_SIZE, MASK_SIZE)),
                          valid=np.ones(frames_per_clip, bool), supervised=np.zeros(frames_per_clip, bool)))
    return clips


def _from_videos(root: Path, task: str, frames_per_clip: int, resolution: int, clips: int, accuracy_clips: int
                 ) -> tuple[str, ClipList, ClipList]:
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise DatasetError(f"{root} holds neither an AVSBench metadata csv nor videos "
                           f"({', '.join(VIDEO_SUFFIXES)})")
    cal: list[Clip] = []
    acc: list[Clip] = []
    index = 0
    for video in videos:
        if len(cal) >= clips and len(acc) >= accuracy_clips:
            break
        for clip in _video_clips(video, frames_per_clip, resolution):
            target = acc if index % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1 else cal
            index += 1
            limit = accuracy_clips if target is acc else clips
            if len(target) < limit:
                target.append(clip)
    if not cal or not acc:
        raise DatasetError(f"{root}: {len(videos)} video(s) gave {index} clips of {frames_per_clip} s; calibration "
                           f"needs at least {HOLD_OUT_EVERY} (every {HOLD_OUT_EVERY}th is held out for accuracy)")
    description = (f"{root}: {len(videos)} video(s) cut into {frames_per_clip}-s clips, {len(cal)} for calibration, "
                   f"{len(acc)} held out for accuracy (no ground truth: agreement with fp32 only)")
    return description, ClipList(task, "calibration", root, cal), ClipList(task, "test", root, acc)


def _from_synth(task: str, resolution: int, clips: int, accuracy_clips: int, say: Callable[[str], None]
                ) -> tuple[str, ClipList, ClipList, tempfile.TemporaryDirectory]:
    from runtime.datasets import synth

    folder = tempfile.TemporaryDirectory(prefix="avs-calibration-")
    root = Path(folder.name)
    say(f"drawing {clips} synthetic {task} calibration clips (seed {CALIBRATION_SEED}) and {accuracy_clips} test "
        f"clips (seed {TEST_SEED}) into {root}")
    synth.write_dataset(root, task, clips, CALIBRATION_SEED, split="train", progress=False)
    synth.write_dataset(root, task, accuracy_clips, TEST_SEED, split="test", progress=False)
    _, cal, acc = _from_avsbench(root, task, resolution, clips, accuracy_clips)
    description = (f"synthetic {task}: {len(cal)} train clips (seed {CALIBRATION_SEED}) for calibration, "
                   f"{len(acc)} test clips (seed {TEST_SEED}) for accuracy")
    return description, cal, acc, folder


def open_source(data: str, *, task: str, frames_per_clip: int, resolution: int, clips: int, accuracy_clips: int,
                say: Callable[[str], None] = print) -> ClipSource:
    """The clips of ``data``: ``'synth'``, an AVSBench-layout folder, or a folder of videos (see module docstring).

    ``task`` is the artifact's setting ('s4', 'ms3', 'avss'): the synthetic task, and the data set's expected one.
    """
    if clips < 1 or accuracy_clips < 1:
        raise ValueError(f"clip counts must be >= 1; got {clips} calibration and {accuracy_clips} accuracy clips")
    if data == SYNTH:
        description, cal, acc, folder = _from_synth(task, resolution, clips, accuracy_clips, say)
        return ClipSource(description, cal, acc, folder)
    root = Path(data)
    if not root.is_dir():
        raise DatasetError(f"calibration data {root} is not a folder; give an AVSBench-layout folder, a folder of "
                           f"videos with audio, or '{SYNTH}'")
    try:
        detect_task(root)
    except DatasetError:        # no AVSBench metadata anywhere: a folder of videos
        description, cal, acc = _from_videos(root, task, frames_per_clip, resolution, clips, accuracy_clips)
    else:
        description, cal, acc = _from_avsbench(root, task, resolution, clips, accuracy_clips)
    return ClipSource(description, cal, acc)
