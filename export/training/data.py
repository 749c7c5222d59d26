"""AVSBench clips (real or avs-synth) as training tensors, through the runtime's readers (``runtime.datasets``)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from runtime.datasets.avsbench import AVSBench, Clip, normalize_frames

__all__ = ["ClipDataset", "collate"]


class ClipDataset(Dataset):
    """One split as dicts of tensors: ``frames`` [T,3,R,R] normalised, ``log_mel`` [T,1,96,64], ``masks``
    [T,224,224] (float in [0, 1], or int64 classes for AVSS; zeros where a frame has no mask), ``supervised`` and
    ``valid`` [T] bool.

    Args:
        data: the reader of the split.
        mean, std: the model's frame normalisation.
        limit: only the first ``limit`` clips.
        cache: keep decoded clips in memory (for small sets read many times).
    """

    def __init__(self, data: AVSBench, mean, std, limit: Optional[int] = None, cache: bool = False) -> None:
        self.data, self.mean, self.std = data, mean, std
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
        return {"frames": torch.from_numpy(frames), "log_mel": torch.from_numpy(np.ascontiguousarray(clip.log_mel)),
                "masks": torch.from_numpy(masks), "supervised": torch.from_numpy(clip.supervised.copy()),
                "valid": torch.from_numpy(clip.valid.copy())}


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack clips: every tensor gains a leading clip axis."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
