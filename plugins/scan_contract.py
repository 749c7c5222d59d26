"""The identity of the ``avs::SelectiveScan`` op, for every Python side (export and runtime; never imports torch).

The same facts live in C++ in ``plugins/selective_scan/selectiveScanContract.h`` and, for people, in the README beside
it; ``tests/test_scan_contract.py`` fails when one of them changes without the others. Inputs are read by position:
an omitted optional input is an empty name in its slot, or absent when trailing.
"""
from __future__ import annotations

__all__ = ["DOMAIN", "OP_TYPE", "OPSET_VERSION", "PLUGIN_VERSION", "PLUGIN_NAMESPACE", "INPUT_NAMES", "OUTPUT_NAMES",
           "REQUIRED_INPUTS", "FLOAT32_INPUTS", "ATTRIBUTE_DEFAULTS", "node_attributes"]

DOMAIN = "avs"
OP_TYPE = "SelectiveScan"
OPSET_VERSION = 1
#: What TensorRT's ONNX parser reads from the node's ``plugin_version`` / ``plugin_namespace`` attributes.
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "avs"

INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
OUTPUT_NAMES = ("y",)
REQUIRED_INPUTS = 5
#: Always float32, whatever the data type of u, delta, B, C, z and y.
FLOAT32_INPUTS = ("A", "D", "delta_bias")

#: Attribute name -> default; None: no default, the exporter always writes it.
ATTRIBUTE_DEFAULTS = {"delta_softplus": 0, "plugin_version": None, "plugin_namespace": None}


def node_attributes(delta_softplus: bool | int = False) -> dict:
    """The attributes of an ``avs::SelectiveScan`` node, as ``onnx.helper.make_node`` takes them."""
    return {"delta_softplus": int(delta_softplus), "plugin_version": PLUGIN_VERSION,
            "plugin_namespace": PLUGIN_NAMESPACE}
