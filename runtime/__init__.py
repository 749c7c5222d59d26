"""Torch-free inference side of avs-edge: audio/video front-ends and ONNX Runtime / TensorRT sessions.

Nothing under ``runtime/`` may import torch: it must install and run on an edge device with only numpy,
onnxruntime, opencv and sounddevice. ``Segmenter`` and ``SegmentResult`` load on first use, so the light modules
(``runtime.gpu``, ``runtime.engine_cache``, ``runtime.integrity``) import without OpenCV or ONNX Runtime.
"""
__all__ = ["Segmenter", "SegmentResult", "Outputs"]
_HOMES = {"Segmenter": "segmenter", "SegmentResult": "segmenter", "Outputs": "outputs"}


def __getattr__(name: str):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"runtime.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
