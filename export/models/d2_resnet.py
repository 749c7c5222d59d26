"""ResNet-50 in detectron2's layout (``build_resnet_backbone``), the R50 backbone of Mask2Former-based models (COMBO).

Provenance: detectron2 v0.6 ``modeling/backbone/resnet.py`` and ``layers/batch_norm.py`` (Apache-2.0), as COMBO's
configs build it (``RESNETS.DEPTH 50``, ``STRIDE_IN_1X1 False``, ``NORM "FrozenBN"``, stem 64, res2..res5 out).
Written from a reading of that code, not copied. Parameter names are detectron2's, so the backbone part of a
detectron2 checkpoint loads unchanged: ``stem.conv1.{weight,norm.*}``, ``res{2..5}.{i}.{conv1,conv2,conv3,
shortcut}.{weight,norm.*}``. Every conv has no bias; its normalisation is a :class:`FrozenBatchNorm2d` whose four
tensors (``weight``, ``bias``, ``running_mean``, ``running_var``) are buffers, so they are in the state_dict but
never trained (COMBO trains with ``FREEZE_AT 0``, which unfreezes the convs only).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FrozenBatchNorm2d", "ConvNorm", "BottleneckBlock", "D2ResNet", "d2_resnet50", "R50_WIDTHS"]

R50_WIDTHS = (256, 512, 1024, 2048)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (all buffers): ``x * scale + shift`` with
    ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        # NOTE: detectron2 initialises running_var to 1 - eps, so a fresh layer is exactly the identity.
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class ConvNorm(nn.Conv2d):
    """A bias-free ``nn.Conv2d`` followed by its ``norm`` (detectron2's ``Conv2d(..., norm=...)``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels)
        # c2_msra_fill: He-normal over fan-out
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (out_channels * kernel_size * kernel_size)))

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class BottleneckBlock(nn.Module):
    """1x1 -> 3x3 (the stride, ``STRIDE_IN_1X1 False``) -> 1x1, ReLU after each but the last, projected shortcut
    when the width changes, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck: int, stride: int) -> None:
        super().__init__()
        self.shortcut = ConvNorm(in_channels, out_channels, 1, stride=stride) if in_channels != out_channels else None
        self.conv1 = ConvNorm(in_channels, bottleneck, 1)
        self.conv2 = ConvNorm(bottleneck, bottleneck, 3, stride=stride, padding=1)
        self.conv3 = ConvNorm(bottleneck, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class BasicStem(nn.Module):
    """7x7 stride-2 conv (+ FrozenBN, ReLU), then a 3x3 stride-2 max-pool: stride 4 overall."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, 7, stride=2, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class D2ResNet(nn.Module):
    """detectron2's bottleneck ResNet without a classifier; outputs res2..res5 (strides 4, 8, 16, 32).

    Args:
        depths: blocks per stage (res2..res5).
        stem_width: stem channels (``STEM_OUT_CHANNELS``).
        bottleneck: res2's bottleneck width (``WIDTH_PER_GROUP``); doubles per stage, outputs are 4x it.
    """

    def __init__(self, depths: Sequence[int] = (3, 4, 6, 3), stem_width: int = 64, bottleneck: int = 64) -> None:
        super().__init__()
        self.stem = BasicStem(stem_width)
        channels, widths = stem_width, []
        for i, depth in enumerate(depths):
            width = bottleneck * 2 ** i
            out = 4 * width
            blocks = [BottleneckBlock(channels if j == 0 else out, out, width, 2 if (i > 0 and j == 0) else 1)
                      for j in range(depth)]
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))
            channels = out
            widths.append(out)
        self.stage_channels = tuple(widths)

    def forward_stage(self, index: int, x: Tensor) -> Tensor:
        """Stage ``index`` (0..3 = res2..res5; the stem runs before res2); NCHW in, NCHW out."""
        if index == 0:
            x = self.stem(x)
        return getattr(self, f"res{index + 2}")(x)


def d2_resnet50() -> D2ResNet:
    """ResNet-50: blocks 3/4/6/3, stem 64, outputs 256/512/1024/2048."""
    return D2ResNet()
