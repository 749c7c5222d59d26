"""INT8 Q/DQ graphs with ONNX Runtime's static quantizer, in the form TensorRT's explicit quantization takes.

Per-channel symmetric int8 weights, symmetric int8 activations (zero point 0), no Q/DQ on biases (TensorRT's
parser rejects int32 bias Q/DQ), on the layers that carry the arithmetic (:data:`OP_TYPES`: convolutions and
matrix products, attention's included); normalisations, resizes and element-wise ops stay fp32 (quantizing them
too cost the demo model 1.4 M_J points for little speed on ONNX Runtime's CPU). Activation ranges come from the recorded
feeds of the graph (:mod:`calibration.streaming`) by one of :data:`METHODS`, computed once per graph and method
and kept in a JSON cache, so the sensitivity sweep re-quantizes with other nodes excluded in seconds.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx

from plugins.scan_contract import DOMAIN as CUSTOM_DOMAIN

__all__ = ["METHODS", "CalibrationError", "quantize_graph", "QDQ_SETTINGS"]

METHODS = ("minmax", "entropy", "percentile")
OP_TYPES = ("Conv", "ConvTranspose", "MatMul", "Gemm")
QDQ_SETTINGS = (f"QDQ on {', '.join(OP_TYPES)}: per-channel symmetric int8 weights, symmetric int8 activations, "
                "bias not quantized (ONNX Runtime quantize_static)")


class CalibrationError(RuntimeError):
    """Calibration cannot proceed; the message says why and what to do."""


class _Feeds:
    """ONNX Runtime's CalibrationDataReader over recorded feeds (subclassed lazily: the module imports it)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._items = iter(feeds)

    def get_next(self):
        return next(self._items, None)


def _reader(feeds: list[dict[str, np.ndarray]]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(_Feeds, CalibrationDataReader):
        pass

    return Reader(feeds)


def quantize_graph(source: Path, target: Path, feeds: list[dict[str, np.ndarray]], *, method: str,
                   exclude: Iterable[str], cache: Path) -> None:
    """Write the Q/DQ graph of ``source`` to ``target`` with the nodes named in ``exclude`` left in fp32.

    ``cache`` holds the activation ranges of ``source`` for ``method`` (computed from ``feeds`` on first use).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    model = onnx.load(str(source), load_external_data=False)
    if any(node.domain == CUSTOM_DOMAIN for node in model.graph.node):
        raise CalibrationError(f"{source.name} holds the avs::SelectiveScan plugin node, which ONNX Runtime's "
                               "calibrator cannot load; export with --scan lowered to calibrate it")
    if not feeds and not cache.is_file():
        raise CalibrationError(f"no calibration feeds recorded for {source.name}")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)     # quantize_static's advice to pre-process, once per graph
    try:
        quantize_static(str(source), str(target), _reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=sorted(set(exclude)), calibrate_method=calibrate,
                        op_types_to_quantize=list(OP_TYPES),
                        calibration_cache_path=str(cache),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    finally:
        logging.getLogger().setLevel(quiet)
