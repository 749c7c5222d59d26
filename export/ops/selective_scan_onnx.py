"""ONNX export of ``avs::selective_scan``: one ``avs::SelectiveScan`` node, or an exact stock-op lowering.

``onnx_translation_table(scan)`` is handed to ``torch.onnx.export(..., dynamo=True, custom_translation_table=...)``:

* ``scan="plugin"``: one custom node per scan (op_type ``SelectiveScan``, domain ``avs``, attributes
  ``delta_softplus``, ``plugin_version="1"``, ``plugin_namespace="avs"``), served by our ONNX Runtime custom-op
  library and our TensorRT plugin. Missing optional inputs are only ever trailing (see ``_plugin_node``).
* ``scan="lowered"``: the recurrence unrolled over the (static) sequence length with stock opset-18 ops, fp32 inside:
  any ONNX runtime, and TensorRT without the plugin, can run it. Meant for short scans (SelM: L = 5 or 10);
  it refuses L above ``MAX_LOWERED_LENGTH``.
"""
from __future__ import annotations

import onnx
from onnx import defs
from onnxscript import opset18 as op
from onnxscript import values

import torch

from export.ops import selective_scan as _op  # noqa: F401  (registers torch.ops.avs.selective_scan)
from plugins.scan_contract import (DOMAIN, FLOAT32_INPUTS, INPUT_NAMES, OP_TYPE, OPSET_VERSION, OUTPUT_NAMES,
                                   PLUGIN_VERSION, REQUIRED_INPUTS, node_attributes)

__all__ = ["DOMAIN", "OP_TYPE", "PLUGIN_VERSION", "INPUT_NAMES", "MAX_LOWERED_LENGTH", "register_onnx_schema",
           "onnx_translation_table"]

MAX_LOWERED_LENGTH = 64
_SHAPES = {"u": "(batch, D, L)", "delta": "(batch, D, L)", "A": "(D, N)", "B": "(batch, N, L) or (batch, G, N, L)",
           "C": "(batch, N, L) or (batch, G, N, L)", "D": "(D,)", "z": "(batch, D, L)", "delta_bias": "(D,)",
           "y": "(batch, D, L)"}
_ATTRIBUTES = (("delta_softplus", "INT", "apply softplus to delta (+ delta_bias)"),
               ("plugin_version", "STRING", "TensorRT plugin version"),
               ("plugin_namespace", "STRING", "TensorRT plugin namespace"))

_avs = values.Opset(DOMAIN, OPSET_VERSION)


def _infer_output(ctx) -> None:
    """Output y: u's element type and shape."""
    ctx.set_output_type(0, ctx.get_input_type(0))


def register_onnx_schema() -> None:
    """Register ``avs::SelectiveScan`` with onnx so ``onnx.checker`` and shape inference accept the node (idempotent)."""
    if defs.has(OP_TYPE, DOMAIN):
        return
    param = defs.OpSchema.FormalParameter
    single, optional = defs.OpSchema.FormalParameterOption.Single, defs.OpSchema.FormalParameterOption.Optional
    inputs = [param(name, "tensor(float)" if name in FLOAT32_INPUTS else "T", _SHAPES[name],
                    param_option=single if i < REQUIRED_INPUTS else optional) for i, name in enumerate(INPUT_NAMES)]
    schema = defs.OpSchema(
        OP_TYPE, DOMAIN, OPSET_VERSION,
        doc="Mamba selective scan (mamba_ssm selective_scan_fn forward); contract: plugins/selective_scan/README.md",
        inputs=inputs,
        outputs=[param(name, "T", _SHAPES[name], param_option=single) for name in OUTPUT_NAMES],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "data tensors")],
        attributes=[defs.OpSchema.Attribute(name, getattr(defs.OpSchema.AttrType, kind), doc, required=False)
                    for name, kind, doc in _ATTRIBUTES],
    )
    schema.set_type_and_shape_inference_function(_infer_output)
    defs.register_schema(schema)


def _plugin_node(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False):
    """One ``avs::SelectiveScan`` node whose inputs never have a gap.

    TensorRT's ONNX parser hands an empty input name to a plugin as a null tensor, so a missing optional input may
    only be trailing: a missing ``D`` before a present one becomes zeros (``+ u * 0``), and ``delta_bias`` without
    ``z`` is added to ``delta`` here (exact in fp32) instead of leaving an empty ``z`` between them.
    """
    if z is None and delta_bias is not None:
        delta = op.Add(delta, op.CastLike(op.Unsqueeze(delta_bias, op.Constant(value_ints=[1])), delta))
        delta_bias = None
    if D is None and (z is not None or delta_bias is not None):
        D = op.ConstantOfShape(op.Slice(op.Shape(A), op.Constant(value_ints=[0]), op.Constant(value_ints=[1])))
    inputs = [u, delta, A, B, C, D, z, delta_bias]
    while inputs[-1] is None:
        inputs.pop()
    return getattr(_avs, OP_TYPE)(*inputs, **node_attributes(delta_softplus))


def _static_dims(value, name: str) -> list[int]:
    dims = list(value.shape) if value.shape is not None else []
    if not dims or not all(isinstance(d, int) for d in dims):
        raise ValueError(f"lowered selective scan needs static shapes; {name} has shape {value.shape}. "
                         "Export with static input shapes, or use scan='plugin'.")
    return dims


def _lowered(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus: bool = False):
    """The recurrence unrolled over static L with stock ops; state (batch, G, D/G, N) in fp32."""
    bt, d, length = _static_dims(u, "u")
    if length > MAX_LOWERED_LENGTH:
        raise ValueError(f"lowered selective scan is for short sequences (L <= {MAX_LOWERED_LENGTH}); this scan has "
                         f"L = {length}. Use scan='plugin' (avs::SelectiveScan, served by our plugin/custom op).")
    b_dims = _static_dims(B, "B")
    groups = b_dims[1] if len(b_dims) == 4 else 1
    n = b_dims[-2]
    f32 = onnx.TensorProto.FLOAT
    to_grouped = op.Constant(value_ints=[bt, groups, d // groups, length])          # (b, G, D/G, L)
    u32 = op.Cast(u, to=f32)
    dt = op.Cast(delta, to=f32)
    if delta_bias is not None:
        dt = op.Add(dt, op.Unsqueeze(delta_bias, op.Constant(value_ints=[1])))
    if delta_softplus:
        dt = op.Softplus(dt)
    # dA[b,g,c,l,n] = exp(dt[b,g,c,l] * A[g,c,n]);  dBu[b,g,c,l,n] = dt*u[b,g,c,l] * B[b,g,n,l]
    dt_g = op.Unsqueeze(op.Reshape(dt, to_grouped), op.Constant(value_ints=[4]))    # (b,G,c,L,1)
    a_g = op.Unsqueeze(op.Reshape(A, op.Constant(value_ints=[groups, d // groups, n])), op.Constant(value_ints=[2]))
    d_a = op.Exp(op.Mul(dt_g, a_g))                                                # (b,G,c,L,N)
    dtu = op.Unsqueeze(op.Reshape(op.Mul(dt, u32), to_grouped), op.Constant(value_ints=[4]))
    bc_shape = op.Constant(value_ints=[bt, groups, 1, n, length])
    perm = [0, 1, 2, 4, 3]                                                           # -> (b,G,1,L,N)
    b_t = op.Transpose(op.Reshape(op.Cast(B, to=f32), bc_shape), perm=perm)
    c_t = op.Transpose(op.Reshape(op.Cast(C, to=f32), bc_shape), perm=perm)
    d_bu = op.Mul(dtu, b_t)                                                          # (b,G,c,L,N)
    axis_l = op.Constant(value_ints=[3])
    reduce_n = op.Constant(value_ints=[4])
    outputs = []
    h = None
    for step in range(length):
        start, stop = op.Constant(value_ints=[step]), op.Constant(value_ints=[step + 1])
        d_bu_l = op.Slice(d_bu, start, stop, axis_l)
        h = d_bu_l if h is None else op.Add(op.Mul(op.Slice(d_a, start, stop, axis_l), h), d_bu_l)
        outputs.append(op.ReduceSum(op.Mul(h, op.Slice(c_t, start, stop, axis_l)), reduce_n, keepdims=0))
    y = op.Reshape(op.Concat(*outputs, axis=3), op.Constant(value_ints=[bt, d, length]))
    if D is not None:
        y = op.Add(y, op.Mul(u32, op.Unsqueeze(D, op.Constant(value_ints=[1]))))
    if z is not None:
        z32 = op.Cast(z, to=f32)
        y = op.Mul(y, op.Mul(z32, op.Sigmoid(z32)))
    return op.CastLike(y, u)


def onnx_translation_table(scan: str = "plugin") -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``: ``scan`` is 'plugin' or 'lowered'."""
    if scan not in ("plugin", "lowered"):
        raise ValueError(f"scan must be 'plugin' or 'lowered', got {scan!r}")
    register_onnx_schema()
    return {torch.ops.avs.selective_scan.default: _plugin_node if scan == "plugin" else _lowered}
