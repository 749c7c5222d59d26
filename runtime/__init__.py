"""Torch-free inference side of avs-edge: audio/video front-ends and ONNX Runtime / TensorRT sessions.

Nothing under ``runtime/`` may import torch: it must install and run on an edge device with only numpy, soxr,
onnxruntime, opencv and sounddevice.
"""
from runtime.segmenter import SegmentResult, Segmenter

__all__ = ["Segmenter", "SegmentResult"]
