"""AVSBench clips (real or avs-synth) as training tensors, through the runtime's readers (``runtime.datasets``), and
COMBO's per-frame Maskiges (:class:`ClipMaskiges`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.datasets.avsbench import AVSBench, Clip, DatasetError, normalize_frames

__all__ = ["ClipDataset", "ClipMaskiges", "collate"]


class ClipMaskiges:
    """COMBO's Maskige of each real frame of a split's clips, uint8 RGB at the reader's resolution.

    A frame's published Maskige (``runtime.mask_sources.maskige_path`` of its frame file, read with
    ``runtime.maskige.read_maskige``) is used when it exists. avs-synth data (``synth_clips.jsonl`` beside the
    metadata) has none: its frames are painted by ``runtime.mask_sources.OversegmentMaskSource`` (weight-free,
    deterministic) and kept in memory. Real AVSBench frames without a published Maskige are an error.

    Args:
        data: the reader of the split.
    """

    def __init__(self, data: AVSBench) -> None:
        self.data = data
        self.synthetic = (data.root / "synth_clips.jsonl").is_file()
        self._painted: dict[tuple[str, int], np.ndarray] = {}
        self._overseg = None

    def frame_files(self, clip: Clip) -> list[Path]:
        """The clip's real frame files, in the reader's layout."""
        root, name, split = self.data.root, clip.name, self.data.split
        if self.data.task == "s4":
            folder = root / "s4_data" / "visual_frames" / split / clip.category / name
            return [folder / f"{name}_{i}.png" for i in range(1, clip.num_frames + 1)]
        if self.data.task == "ms3":
            folder = root / "ms3_data" / "visual_frames" / name
            return [folder / f"{name}.mp4_{i}.png" for i in range(1, clip.num_frames + 1)]
        return [root / clip.category / name / "frames" / f"{i}.jpg" for i in range(clip.num_frames)]

    def _paint(self, clip: Clip, index: int) -> np.ndarray:
        key = (clip.name, index)
        if key not in self._painted:
            if self._overseg is None:
                from runtime.mask_sources import OversegmentMaskSource

                self._overseg = OversegmentMaskSource(self.data.resolution)
            self._painted[key] = self._overseg.maskige(np.ascontiguousarray(clip.frames[index][:, :, ::-1]), index)
        return self._painted[key]

    def __call__(self, clip: Clip) -> np.ndarray:
        """The clip's Maskiges: uint8 RGB ``[frames, R, R, 3]``.

        Raises:
            DatasetError: a real AVSBench frame has no published Maskige (the message names the file).
        """
        from runtime.mask_sources import maskige_path
        from runtime.maskige import read_maskige

        out = []
        for index, frame_file in enumerate(self.frame_files(clip)):
            path = maskige_path(frame_file)
            if path.is_file():
                out.append(read_maskige(path, self.data.resolution))
            elif self.synthetic:
                out.append(self._paint(clip, index))
            else:
                raise DatasetError(f"missing Maskige {path} of frame {frame_file}: COMBO needs one per frame; put the "
                                   "published Maskiges (huggingface.co/YannQi/COMBO-AVS-checkpoints, pre_SAM_mask/) "
                                   "into the data set")
        return np.stack(out)


class ClipDataset(Dataset):
    """One split as dicts of tensors: ``frames`` [T,3,R,R] normalised, ``log_mel`` [T,1,96,64], ``masks``
    [T,224,224] (float in [0, 1], or int64 classes for AVSS; zeros where a frame has no mask), ``supervised`` and
    ``valid`` [T] bool; with ``maskiges`` also ``maskige`` [T,3,R,R], normalised like the frames (COMBO).

    Args:
        data: the reader of the split.
        mean, std: the model's frame normalisation.
        limit: only the first ``limit`` clips.
        cache: keep decoded clips in memory (for small sets read many times).
        maskiges: the Maskige source of the clips (COMBO; None: no ``maskige``).
    """

    def __init__(self, data: AVSBench, mean, std, limit: Optional[int] = None, cache: bool = False,
                 maskiges: Optional[ClipMaskiges] = None) -> None:
        self.data, self.mean, self.std, self.maskiges = data, mean, std, maskiges
        self.count = len(data) if limit is None else min(limit, len(data))
        self.cache: Optional[dict[int, Clip]] = {} if cache else None

    def __len__(self) -> int:
        return self.count

    def _clip(self, index: int) -> Clip:
        if self.cache is None:
            return self.data[index]
        if index not in self.cache:
            self.cache[index] = self.data[index]
        return self.cache[index]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        clip = self._clip(index)
        t = len(clip.valid)
        frames = np.zeros((t, 3, self.data.resolution, self.data.resolution), np.float32)
        frames[:clip.num_frames] = normalize_frames(clip.frames, self.mean, self.std)
        masks = np.zeros((t,) + clip.masks.shape[1:], clip.masks.dtype)
        masks[:len(clip.masks)] = clip.masks
        item = {"frames": torch.from_numpy(frames), "log_mel": torch.from_numpy(np.ascontiguousarray(clip.log_mel)),
                "masks": torch.from_numpy(masks), "supervised": torch.from_numpy(clip.supervised.copy()),
                "valid": torch.from_numpy(clip.valid.copy())}
        if self.maskiges is not None:
            maskige = np.zeros_like(frames)
            maskige[:clip.num_frames] = normalize_frames(list(self.maskiges(clip)[:, :, :, ::-1]), self.mean, self.std)
            item["maskige"] = torch.from_numpy(maskige)
        return item


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack clips: every tensor gains a leading clip axis."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
