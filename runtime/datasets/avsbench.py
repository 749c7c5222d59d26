"""AVSBench readers (S4, MS3, AVSS), torch-free, reading what the official dataloaders read, the way they read it.

Layouts (``root`` is the folder holding the metadata csv):

* **S4** (``Single-source/``): ``s4_meta_data.csv`` (column 0 = video name, column 2 = category, a ``split``
  column); ``s4_data/visual_frames/<split>/<cat>/<vid>/<vid>_<1..5>.png``,
  ``s4_data/audio_log_mel/<split>/<cat>/<vid>.pkl`` (pickled torch tensor ``[5, 1, 96, 64]``),
  ``s4_data/audio_wav/<split>/<cat>/<vid>.wav``, ``s4_data/gt_masks/<split>/<cat>/<vid>/<vid>_<i>.png``. The train
  split has the mask of frame 1 only (semi-supervised); val/test have all 5.
* **MS3** (``Multi-sources/``): ``ms3_meta_data.csv`` (column 0 = video name, ``split``);
  ``ms3_data/visual_frames/<vid>/<vid>.mp4_<1..5>.png`` (no split folder), ``ms3_data/audio_log_mel/<split>/<vid>.pkl``,
  ``ms3_data/audio_wav/<split>/<vid>.wav``, ``ms3_data/gt_masks/<split>/<vid>/<vid>_<1..5>.png``.
* **AVSS** (``AVSBench_semantic/``): ``metadata.csv`` (``uid``, ``label`` = v1s | v1m | v2, ``split``),
  ``label2idx.json`` (71 classes), ``<label>/<uid>/frames/<i>.jpg``, ``<label>/<uid>/audio.wav``,
  ``<label>/<uid>/labels_rgb/<i>.png`` (colour label maps, i from 0). v1s/v1m clips have 5 frames, zero-padded to
  10 with validity flags; v2 clips have 10.

Official processing reproduced: frames resized with Pillow's bilinear filter (``pil_resize``; S4/MS3 PNGs are
224 px, the 448-px models up-sample them; AVSS val/test resize the JPGs straight to 224), ImageNet mean/std; masks
as PIL ``convert('1')`` (S4) or ``convert('P') / 255`` (MS3) would give for grey-level PNGs; AVSS colour maps
resized with Pillow's nearest rule, then decoded to class indices through the 71-entry palette (a colour not in
the palette reads as class 0, as the official argmax does); AVSS audio = VGGish examples of ``audio.wav``,
zero-padded to 10. Any missing or malformed file raises :class:`DatasetError` naming it.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import cv2
import numpy as np

from runtime.datasets.torch_pickle import UnsafePickleError, load_log_mel

__all__ = ["TASKS", "Clip", "AVSBench", "DatasetError", "avss_palette", "detect_task", "pil_resize",
           "pil_nearest_index", "normalize_frames", "read_wav", "IMAGENET_MEAN", "IMAGENET_STD"]

TASKS = ("s4", "ms3", "avss")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
_CSV = {"s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv", "avss": "metadata.csv"}
_SUBSET_DIRS = {"s4": "Single-source", "ms3": "Multi-sources", "avss": "AVSBench_semantic"}
AVSS_FRAMES = 10
AVSS_CLASSES = 71
MASK_SIZE = 224  # every AVSBench metric is computed on 224 x 224 masks
_PRECISION_BITS = 22  # Pillow's fixed-point resampling: 32 - 8 - 2


class DatasetError(ValueError):
    """A data set file is missing, unreadable or malformed; the message names the file."""


@dataclass(frozen=True)
class Clip:
    """One clip as the official test loader yields it.

    Attributes:
        name: video name (S4/MS3) or uid (AVSS).
        category: S4 category, '' for MS3, the AVSS set (v1s, v1m, v2).
        frames: the real frames, BGR uint8 ``[R, R, 3]`` at the requested resolution (no padding).
        log_mel: VGGish examples ``[T, 1, 96, 64]`` float32 (AVSS: zero-padded to 10).
        masks: ground truth of the annotated frames ``[M, 224, 224]``: float32 in [0, 1] (S4/MS3), or int64 class
            indices (AVSS, zero-padded to 10 like the official loader).
        valid: ``[T]`` bool, frames that exist (AVSS ``vid_temporal_mask_flag``; all True for S4/MS3).
        supervised: ``[T]`` bool, frames with a training mask (S4 train: frame 1 only; AVSS
            ``gt_temporal_mask_flag``).
        frame_paths: the files of ``frames``, in order (e.g. to find their published Maskiges).
    """
    name: str
    category: str
    frames: list
    log_mel: np.ndarray
    masks: np.ndarray
    valid: np.ndarray
    supervised: np.ndarray
    frame_paths: tuple = ()

    @property
    def num_frames(self) -> int:
        return len(self.frames)


# -- image helpers -------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's bilinear taps for one axis: indices ``[out, k]`` and fixed-point weights ``[out, k]``."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    index = np.zeros((out_size, ksize), np.int64)
    weight = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        w = np.array([max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax)])
        total = w.sum()
        if total != 0.0:
            w = w / total
        fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << _PRECISION_BITS)), np.trunc(0.5 + w * (1 << _PRECISION_BITS)))
        index[xx, :xmax] = np.arange(xmin, xmin + xmax)
        weight[xx, :xmax] = fixed.astype(np.int64)
    return index, weight


def _resample_axis(image: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    index, weight = _bilinear_taps(image.shape[axis], out_size)
    moved = np.moveaxis(image, axis, 0).astype(np.int64)
    acc = np.full((out_size,) + moved.shape[1:], 1 << (_PRECISION_BITS - 1), np.int64)
    extra = (1,) * (moved.ndim - 1)
    for k in range(index.shape[1]):
        acc += moved[index[:, k]] * weight[:, k].reshape((-1,) + extra)
    return np.moveaxis(np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8), 0, axis)


def pil_resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 ``[H, W, C]`` image to ``size`` x ``size`` exactly as Pillow's ``resize(BILINEAR)`` does
    (triangle filter widened when shrinking, 22-bit fixed point, horizontal pass first)."""
    out = image
    if out.shape[1] != size:
        out = _resample_axis(out, size, 1)
    if out.shape[0] != size:
        out = _resample_axis(out, size, 0)
    return np.ascontiguousarray(out)


@functools.lru_cache(maxsize=32)
def pil_nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source index per output pixel of Pillow's ``resize(NEAREST)``: trunc((x + 0.5) * scale), accumulated."""
    scale, position, index = in_size / out_size, in_size / out_size * 0.5, []
    for _ in range(out_size):
        index.append(min(int(position), in_size - 1))
        position += scale
    return np.asarray(index)


def normalize_frames(frames: list, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """BGR uint8 frames -> ``[T, 3, R, R]`` float32 RGB, ``ToTensor`` then ``Normalize`` (the model input)."""
    x = np.stack([f[:, :, ::-1] for f in frames]).astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def avss_palette(num_classes: int = AVSS_CLASSES) -> np.ndarray:
    """AVSBench's colour for each class index (PASCAL-VOC style: index bits spread over R, G, B from bit 7 down)."""
    palette = np.zeros((num_classes, 3), np.int64)
    for label in range(num_classes):
        value, bit = label, 0
        while value > 0:
            for channel in range(3):
                palette[label, channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
            bit += 1
    return palette


def _imread(path: Path, mode: int, missing: str, kind: str) -> np.ndarray:
    """``cv2.imread`` that names the file when it is missing or cannot be decoded."""
    if not path.is_file():
        raise DatasetError(f"missing {missing} {path}")
    image = cv2.imread(str(path), mode)
    if image is None:
        raise DatasetError(f"cannot decode {kind} {path} (corrupt or not an image)")
    return image


def _read_image(path: Path) -> np.ndarray:
    return _imread(path, cv2.IMREAD_COLOR, "frame", "image")


def _read_gray(path: Path) -> np.ndarray:
    image = _imread(path, cv2.IMREAD_GRAYSCALE, "ground-truth mask", "mask")
    if image.shape != (MASK_SIZE, MASK_SIZE):
        raise DatasetError(f"mask {path} is {image.shape[1]}x{image.shape[0]}, expected {MASK_SIZE}x{MASK_SIZE} "
                           "(AVSBench masks are 224 x 224)")
    return image


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Decode an audio file with PyAV: ``(samples [n, channels], rate)``; 16-bit PCM stays int16 (the official
    reader's int16 / 32768 scaling happens in ``runtime.audio``)."""
    import av

    if not Path(path).is_file():
        raise DatasetError(f"missing audio file {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            chunks, rate = [], stream.codec_context.sample_rate
            for frame in container.decode(stream):
                array = frame.to_ndarray()
                chunks.append(array.T if frame.format.is_planar else array.reshape(-1, len(frame.layout.channels)))
    except (av.error.FFmpegError, IndexError) as exc:
        raise DatasetError(f"cannot decode audio {path}: {exc}") from None
    if not chunks:
        raise DatasetError(f"audio file {path} holds no samples")
    return np.concatenate(chunks), int(rate)


# -- the data set --------------------------------------------------------------------------------------------------

def _resolve_root(root: Path, task: Optional[str]) -> tuple[Path, str]:
    for t in ((task,) if task else TASKS):
        for candidate in (root, root / _SUBSET_DIRS[t]):
            if (candidate / _CSV[t]).is_file():
                return candidate, t
    wanted = _CSV[task] if task else " or ".join(_CSV.values())
    raise DatasetError(f"{root} is not an AVSBench {task.upper() if task else ''} folder: no {wanted} in it "
                       f"(or in {'/'.join(_SUBSET_DIRS[t] for t in ((task,) if task else TASKS))}/ below it)")


def detect_task(root: Union[str, os.PathLike]) -> str:
    """'s4', 'ms3' or 'avss' from the metadata file found in (or just below) ``root``."""
    return _resolve_root(Path(root), None)[1]


def _read_rows(path: Path, split: str, columns: dict) -> list[dict]:
    """Rows of the metadata csv in ``split``: ``columns`` maps our field to a header name or a column index."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read metadata {path}: {exc}") from None
    if not rows or "split" not in rows[0]:
        raise DatasetError(f"metadata {path} has no header with a 'split' column")
    header = rows[0]
    where = {k: (v if isinstance(v, int) else header.index(v) if v in header else None) for k, v in columns.items()}
    missing = [str(columns[k]) for k, v in where.items() if v is None]
    if missing:
        raise DatasetError(f"metadata {path} lacks the column(s) {', '.join(missing)}")
    where["split"] = header.index("split")
    out = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < len(header) or any(i >= len(row) for i in where.values()):
            raise DatasetError(f"metadata {path} line {line} has {len(row)} fields, the header has {len(header)}")
        if row[where["split"]] == split:
            out.append({k: row[i] for k, i in where.items()})
    return out


class AVSBench:
    """One split of an AVSBench subset; ``clip = data[i]`` reads clip i (in metadata order) from disk.

    Args:
        root: the subset folder (holding its metadata csv) or the folder above it.
        task: 's4', 'ms3' or 'avss' (default: from the metadata file found).
        split: 'train', 'val' or 'test'.
        resolution: frame side the model takes (224 or 448; AVSS 224).
    """

    def __init__(self, root: Union[str, os.PathLike], task: Optional[str] = None, split: str = "test",
                 resolution: int = 224):
        if task is not None and task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
        self.root, self.task = _resolve_root(Path(root), task)
        self.split, self.resolution = split, int(resolution)
        csv_path = self.root / _CSV[self.task]
        columns = {"s4": {"name": 0, "category": 2}, "ms3": {"name": 0},
                   "avss": {"name": "uid", "category": "label"}}[self.task]
        self.rows = _read_rows(csv_path, split, columns)
        if self.task == "avss":
            self.class_names = self._read_label_index()
            self.palette = avss_palette(len(self.class_names))
            bad = [r for r in self.rows if r["category"] not in ("v1s", "v1m", "v2")]
            if bad:
                raise DatasetError(f"metadata {csv_path}: clip {bad[0]['name']} has label {bad[0]['category']!r}; "
                                   "expected v1s, v1m or v2")

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Clip]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> Clip:
        row = self.rows[index]
        return {"s4": self._s4, "ms3": self._ms3, "avss": self._avss}[self.task](row)

    @property
    def frames_per_clip(self) -> int:
        return AVSS_FRAMES if self.task == "avss" else 5

    def _read_label_index(self) -> list[str]:
        path = self.root / "label2idx.json"
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
        except FileNotFoundError:
            raise DatasetError(f"missing {path} (AVSBench-semantic's class index)") from None
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read {path}: {exc}") from None
        if not isinstance(table, dict) or len(table) != AVSS_CLASSES:
            raise DatasetError(f"{path} must map the {AVSS_CLASSES} AVSS class names to indices; "
                               f"it has {len(table) if isinstance(table, dict) else 'no'} entries")
        return [name for name, _ in sorted(table.items(), key=lambda kv: kv[1])]

    def _frame(self, path: Path) -> np.ndarray:
        return pil_resize(_read_image(path), self.resolution)

    def _log_mel(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise DatasetError(f"missing audio log-mel {path}")
        try:
            log_mel = load_log_mel(path)
        except (ValueError, UnsafePickleError) as exc:  # the message names the file
            raise DatasetError(str(exc)) from None
        if log_mel.shape != (5, 1, 96, 64):
            raise DatasetError(f"log-mel {path} has shape {list(log_mel.shape)}, expected [5, 1, 96, 64]")
        return log_mel

    def _binary_clip(self, row, frames_dir, frame_name, mel_path, mask_dir, binary: bool) -> Clip:
        name = row["name"]
        paths = tuple(frames_dir / frame_name.format(name, i) for i in range(1, 6))
        frames = [self._frame(path) for path in paths]
        count = 1 if (self.task == "s4" and self.split == "train") else 5
        masks = []
        for i in range(1, count + 1):
            gray = _read_gray(mask_dir / f"{name}_{i}.png")
            masks.append((gray >= 128).astype(np.float32) if binary else gray.astype(np.float32) / 255.0)
        supervised = np.arange(5) < count
        return Clip(name, row.get("category", ""), frames, self._log_mel(mel_path), np.stack(masks),
                    np.ones(5, bool), supervised, paths)

    def _s4(self, row) -> Clip:
        base, rel = self.root / "s4_data", Path(self.split, row["category"], row["name"])
        return self._binary_clip(row, base / "visual_frames" / rel, "{}_{}.png",
                                 (base / "audio_log_mel" / rel).with_name(row["name"] + ".pkl"),
                                 base / "gt_masks" / rel, binary=True)

    def _ms3(self, row) -> Clip:
        base, name = self.root / "ms3_data", row["name"]
        return self._binary_clip(row, base / "visual_frames" / name, "{}.mp4_{}.png",
                                 base / "audio_log_mel" / self.split / f"{name}.pkl",
                                 base / "gt_masks" / self.split / name, binary=False)

    def _avss(self, row) -> Clip:
        from runtime.audio import waveform_to_examples

        name, label = row["name"], row["category"]
        base = self.root / label / name
        frames_dir, labels_dir = base / "frames", base / "labels_rgb"
        if not frames_dir.is_dir():
            raise DatasetError(f"missing frame folder {frames_dir}")
        count = len(os.listdir(frames_dir))
        expected = 10 if label == "v2" else 5
        if count != expected:
            raise DatasetError(f"{frames_dir} holds {count} files; a {label} clip has {expected} frames")
        paths = tuple(frames_dir / f"{i}.jpg" for i in range(count))
        frames = [self._frame(path) for path in paths]
        if not labels_dir.is_dir():
            raise DatasetError(f"missing label folder {labels_dir}")
        mask_count = sum(1 for f in os.listdir(labels_dir) if f.endswith(".png"))
        if self.split != "train" and mask_count != expected:
            raise DatasetError(f"{labels_dir} holds {mask_count} label maps; a {label} {self.split} clip has "
                               f"{expected}")
        labels = [self._label_map(labels_dir / f"{i}.png") for i in range(mask_count)]
        labels += [np.zeros((MASK_SIZE, MASK_SIZE), np.int64)] * (AVSS_FRAMES - mask_count)
        waveform, rate = read_wav(base / "audio.wav")
        try:
            examples = waveform_to_examples(waveform, rate)[:AVSS_FRAMES]
        except ValueError as exc:
            raise DatasetError(f"audio {base / 'audio.wav'}: {exc}") from None
        log_mel = np.zeros((AVSS_FRAMES, 1, 96, 64), np.float32)
        log_mel[:len(examples)] = examples
        valid = np.arange(AVSS_FRAMES) < count
        supervised = np.arange(AVSS_FRAMES) < {"v1s": 1, "v1m": 5, "v2": 10}[label]
        return Clip(name, label, frames, log_mel, np.stack(labels), valid, supervised, paths)

    def _label_map(self, path: Path) -> np.ndarray:
        if not path.is_file():
            raise DatasetError(f"missing label map {path}")
        color = _read_image(path)
        rows = pil_nearest_index(color.shape[0], MASK_SIZE)
        cols = pil_nearest_index(color.shape[1], MASK_SIZE)
        rgb = color[rows][:, cols, ::-1].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        keys = (self.palette[:, 0] << 16) | (self.palette[:, 1] << 8) | self.palette[:, 2]
        label = np.zeros(code.shape, np.int64)
        for index in range(len(keys) - 1, -1, -1):  # the first matching class wins, as the official argmax
            label[code == keys[index]] = index
        return label
