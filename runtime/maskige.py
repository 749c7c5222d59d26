"""COMBO's Maskige: class-agnostic segment-everything masks painted into an RGB image, as the official code paints it.

COMBO (CVPR 2024, github.com/yannqi/COMBO-AVS @ cb8af1c, Apache-2.0) feeds a second backbone an image painted from
the class-agnostic masks of a segment-everything model (Semantic-SAM in the paper). The official painting,
``avs_tools/pre_mask2rgb/mask_precess_{s4,ms3,ss}.py`` (read, not copied), does per frame:

1. sort the K masks by area (pixel count at the masks' own resolution), smallest first;
2. paint an id map: the k-th mask in that order gives id k + 1 to the pixels no smaller mask has taken, so smaller
   masks win; pixels no mask covers keep id 0. An empty mask still takes its id (it just paints nothing);
3. cast the ids to uint8. The script runs under numpy 1.22 (its requirements.txt), which widens the ids to
   uint16 while painting, so the 256th and later masks **wrap modulo 256** (id 256 reads as 0, 257 as 1, ...);
   its "ids > 255" check comes after the cast and never fires;
4. resize the id map to 224 x 224 with Pillow's nearest rule (S4/MS3; the AVSS script keeps the frame's size);
5. save it as a palette PNG with the 150 colours of ADE20K (id 0 = [120, 120, 120]); COMBO reads it back as RGB
   with Pillow 9.2.0 (also pinned), whose palette past the file's 150 entries is a grey ramp: **ids 150-255 read as
   (id, id, id)**. (Pillow >= 10.1, libpng and OpenCV read those pixels as black; ``read_maskige`` decodes the
   palette indices itself, so a published file reads as the official loader read it.)

:func:`paint_maskige` does all five in numpy. Ties of equal area keep the masks' input order (a stable sort; the
official ``argsort`` is numpy 1.22's unstable introsort, which agrees for up to 16 masks). Nearest resizing picks
one source pixel per output pixel, so sampling the masks first and painting at the output size gives the same
image as painting first, at a fraction of the cost; only the areas are taken at full resolution.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from runtime.datasets.avsbench import pil_nearest_index

__all__ = ["MASKIGE_SIZE", "ADE20K_PALETTE", "MASKIGE_COLORS", "paint_ids", "paint_label_ids", "paint_maskige",
           "colorize_ids", "read_maskige"]

MASKIGE_SIZE = 224

# ADE20K's 150 colours, in order, exactly as ``ade_palette()`` in COMBO-AVS avs_tools/pre_mask2rgb/mask_precess_s4.py
# @ cb8af1c (the same list in mask_precess_ms3.py and mask_precess_ss.py; it is mmsegmentation's ADE20K palette).
# Entry 0 colours the pixels no mask covers. Entries 6 and 48 are both (140, 140, 140), as upstream.
ADE20K_PALETTE = np.array([
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80),
    (140, 140, 140), (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7),
    (150, 5, 61), (120, 120, 70), (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4),
    (255, 51, 7), (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92), (112, 9, 255),
    (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10), (7, 255, 255),
    (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255),
    (140, 140, 140), (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255), (31, 0, 255),
    (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255), (0, 255, 112), (0, 255, 133),
    (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255), (51, 255, 0),
    (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153),
    (255, 92, 0), (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194),
    (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255), (0, 194, 255), (0, 122, 255),
    (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0), (82, 0, 255),
    (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163),
    (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255),
    (255, 0, 122), (255, 245, 0), (10, 190, 212), (214, 255, 0), (0, 204, 255), (20, 0, 255),
    (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0),
    (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
], dtype=np.uint8)

# Pillow 9.2.0 starts every palette as this ramp and writes a file's entries over its start.
_GREY_RAMP = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
# The colour of each uint8 id as COMBO's loader saw it: the ADE20K entries, then Pillow 9.2.0's grey ramp.
MASKIGE_COLORS = _GREY_RAMP.copy()
MASKIGE_COLORS[:len(ADE20K_PALETTE)] = ADE20K_PALETTE
MASKIGE_COLORS.setflags(write=False)
ADE20K_PALETTE.setflags(write=False)


def _check_masks(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, H, W] (one boolean mask per segment); got shape {list(masks.shape)}")
    if masks.dtype != np.bool_:
        if not np.issubdtype(masks.dtype, np.integer):
            raise ValueError(f"masks must be bool or 0/1 integers, got {masks.dtype}: threshold probabilities "
                             "first (e.g. masks > 0.5)")
        masks = masks != 0
    if masks.shape[1] == 0 or masks.shape[2] == 0:
        raise ValueError(f"masks have an empty side: shape {list(masks.shape)}")
    return masks


def paint_ids(masks: np.ndarray, size: int = MASKIGE_SIZE) -> np.ndarray:
    """The official id map of a mask set, resized to ``size`` x ``size`` (see the module docstring).

    Args:
        masks: ``[K, H, W]`` bool (or 0/1 integers), K >= 0, any order.
        size: side of the output (the model's input size).

    Returns:
        uint8 ``[size, size]``: 0 where no mask is, else (rank by area + 1) mod 256 of the smallest mask there.
    """
    masks = _check_masks(masks)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if masks.shape[0] == 0:
        return np.zeros((size, size), np.uint8)
    count, height, width = masks.shape
    flat = masks.reshape(count, -1)
    rank = np.empty(count, np.int64)
    rank[np.argsort(np.count_nonzero(flat, axis=1), kind="stable")] = np.arange(count)
    if (height, width) != (size, size):
        pixels = pil_nearest_index(height, size)[:, None] * width + pil_nearest_index(width, size)[None, :]
        flat = np.take(flat, pixels.ravel(), axis=1)
    # Weight the mask of rank k by count - k: the maximum over masks marks the smallest one covering a pixel.
    weights = (count - rank).astype(np.uint16 if count < 2 ** 16 else np.uint32)
    top = (flat * weights[:, None]).max(axis=0).astype(np.int64).reshape(size, size)
    ids = np.where(top > 0, count - top + 1, 0)
    return (ids % 256).astype(np.uint8)


def paint_label_ids(labels: np.ndarray, size: int = MASKIGE_SIZE) -> np.ndarray:
    """:func:`paint_ids` of a partition, from its label map (segments cover every pixel once, so none overlap).

    Args:
        labels: ``[H, W]`` non-negative integer segment labels; mask k is ``labels == k`` for k = 0..max, so an
            unused label is an empty mask and takes an id, as in :func:`paint_ids`.
        size: side of the output.

    Returns:
        uint8 ``[size, size]``, equal to ``paint_ids(labels == k for k = 0..max, size)`` without building the masks.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer) or labels.size == 0 or labels.min() < 0:
        raise ValueError(f"labels must be a non-empty [H, W] map of non-negative integers; got {labels.dtype} "
                         f"{list(labels.shape)}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    order = np.argsort(np.bincount(labels.ravel()), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    sampled = labels[pil_nearest_index(labels.shape[0], size)][:, pil_nearest_index(labels.shape[1], size)]
    return ((rank[sampled] + 1) % 256).astype(np.uint8)


def colorize_ids(ids: np.ndarray) -> np.ndarray:
    """uint8 id map ``[H, W]`` -> RGB uint8 ``[H, W, 3]`` with :data:`MASKIGE_COLORS`."""
    ids = np.asarray(ids)
    if ids.dtype != np.uint8:
        raise ValueError(f"ids must be uint8 (Maskige ids are 0-255), got {ids.dtype}")
    return MASKIGE_COLORS[ids]


def paint_maskige(masks: np.ndarray, size: int = MASKIGE_SIZE) -> np.ndarray:
    """COMBO's Maskige of a mask set: uint8 RGB ``[size, size, 3]`` (``colorize_ids(paint_ids(masks, size))``)."""
    return colorize_ids(paint_ids(masks, size))


def read_maskige(path: Union[str, os.PathLike], size: int = MASKIGE_SIZE) -> np.ndarray:
    """A Maskige image file as COMBO's loader reads it, resized to ``size`` (Pillow's nearest rule) if it is not.

    A palette PNG (the published Maskiges) is decoded through its palette indices, entries past the file's
    palette read as Pillow 9.2.0 read them (grey ramp); any other image is read as RGB. Needs Pillow.

    Returns:
        uint8 RGB ``[size, size, 3]``.

    Raises:
        FileNotFoundError: the file is missing (the message names it).
        ValueError: the file is not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing Maskige {path}")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading Maskige files needs Pillow: pip install pillow") from None
    try:
        with Image.open(path) as image:
            if image.mode == "P":
                palette = np.asarray(image.getpalette("RGB") or [], np.uint8).reshape(-1, 3)[:256]
                table = _GREY_RAMP.copy()
                table[:len(palette)] = palette
                rgb = table[np.asarray(image)]
            else:
                rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot decode Maskige {path}: {exc}") from None
    if rgb.shape[:2] != (size, size):
        rgb = rgb[pil_nearest_index(rgb.shape[0], size)][:, pil_nearest_index(rgb.shape[1], size)]
    return np.ascontiguousarray(rgb)
