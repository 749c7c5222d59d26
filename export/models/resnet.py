"""ResNet-50 with two stage-3/4 branches (``B2_ResNet``), the visual backbone of SelM-R50 and AVSBench-R50.

Provenance: the torchvision ResNet-50 layout (BSD-3-Clause) as re-used by AVSBench and SelM
(https://github.com/Cyyzpoi/SelM, ``model/resnet.py``, Apache-2.0). Written from ``shared/specs/selm.md`` §2.2,
not copied. The second branch (``layer3_2``, ``layer4_2``) is never run; it exists so that the official
checkpoints' keys match exactly.
"""
from __future__ import annotations

import math

import torch.nn as nn
from torch import Tensor

__all__ = ["Bottleneck", "B2ResNet"]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride here, torchvision v1.5) -> 1x1 with x4 expansion, BN after each conv, residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class B2ResNet(nn.Module):
    """ResNet-50 stem + layer1, layer2, then two branches; SelM uses ``layer3_1``/``layer4_1`` only.

    ``forward_stage(i, x)`` runs visual stage ``i`` (0..3) so that a fusion block can sit between stages:
    stage 0 = stem + layer1 (256 ch, /4), 1 = layer2 (512, /8), 2 = layer3_1 (1024, /16), 3 = layer4_1 (2048, /32).
    """

    stage_channels = (256, 512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__()
        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3_1 = self._make_layer(256, 6, stride=2)
        self.layer4_1 = self._make_layer(512, 3, stride=2)
        self._inplanes = 512
        self.layer3_2 = self._make_layer(256, 6, stride=2)
        self.layer4_2 = self._make_layer(512, 3, stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(nn.Conv2d(self._inplanes, out, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out))
        layers = [Bottleneck(self._inplanes, planes, stride, downsample)]
        layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
        self._inplanes = out
        return nn.Sequential(*layers)

    def forward_stage(self, index: int, x: Tensor) -> Tensor:
        """Run visual stage ``index`` (0..3) on an NCHW map."""
        if index == 0:
            return self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return (self.layer2, self.layer3_1, self.layer4_1)[index - 1](x)
