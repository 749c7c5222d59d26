"""One-scan ONNX graphs for the benchmark: u, delta, B, C, z as inputs; A, D, delta_bias as weights."""
from __future__ import annotations

import torch

from export.ops.selective_scan import selective_scan
from export.ops.selective_scan_onnx import onnx_translation_table


class _Scan(torch.nn.Module):
    def __init__(self, data: dict):
        super().__init__()
        for name in ("A", "D", "delta_bias"):
            setattr(self, name, torch.nn.Parameter(torch.from_numpy(data[name])))

    def forward(self, u, delta, B, C, z):
        return selective_scan(u, delta, self.A, B, C, self.D, z, self.delta_bias, True)


def scan_model(data: dict, lowered: bool):
    """The exported program (``.save(path)``) of one scan over ``data``'s shapes."""
    args = tuple(torch.from_numpy(data[k]) for k in ("u", "delta", "B", "C", "z"))
    return torch.onnx.export(_Scan(data).eval(), args, dynamo=True, opset_version=18, verbose=False,
                             input_names=["u", "delta", "B", "C", "z"],
                             custom_translation_table=onnx_translation_table("lowered" if lowered else "plugin"))
