"""``avs::selective_scan``: Mamba's selective scan (S6) as one PyTorch custom op.

The contract is ``plugins/selective_scan/README.md``: mamba_ssm's ``selective_scan_fn`` forward.
Shapes use mamba_ssm's letters (``Bt`` is the batch, ``D`` the channels)::

    u        r(Bt D L)              delta   r(Bt D L)           A  r(D N), fp32
    B, C     r(Bt N L) or r(Bt G N L) (G divides D)
    D        r(D), fp32, optional   z       r(Bt D L), optional  delta_bias  r(D), fp32, optional
    ->  y    r(Bt D L), dtype of u; all math and the state in fp32

The CPU implementation walks L in chunks with an fp32 state of (Bt, D, N): it never holds more than
``chunk * Bt * D * N`` floats, whatever L is.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

OP_NAME = "avs::selective_scan"
_CHUNK = 32


def check_scan_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      z: Optional[Tensor], delta_bias: Optional[Tensor]) -> None:
    """Raise ``ValueError`` naming the first input that breaks the contract."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, D, L), got shape {tuple(u.shape)}")
    bt, d, length = u.shape
    if length == 0:
        raise ValueError("selective_scan: L = 0 (empty sequence); the scan needs at least one step")
    if u.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"selective_scan: u must be float32 or float16, got {u.dtype}")
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and (tuple(t.shape) != (bt, d, length) or t.dtype != u.dtype):
            raise ValueError(f"selective_scan: {name} must be {(bt, d, length)} {u.dtype} like u, "
                             f"got {tuple(t.shape)} {t.dtype}")
    if A.dim() != 2 or A.shape[0] != d or A.dtype != torch.float32:
        raise ValueError(f"selective_scan: A must be (D={d}, N) float32, got {tuple(A.shape)} {A.dtype}")
    n = A.shape[1]
    groups = None
    for name, t in (("B", B), ("C", C)):
        if t.dtype != u.dtype:
            raise ValueError(f"selective_scan: {name} must have u's dtype {u.dtype}, got {t.dtype}")
        if t.dim() == 3 and tuple(t.shape) == (bt, n, length):
            g = 1
        elif t.dim() == 4 and t.shape[0] == bt and tuple(t.shape[2:]) == (n, length):
            g = t.shape[1]
            if g == 0 or d % g:
                raise ValueError(f"selective_scan: {name} has G={g} groups, which does not divide D={d}")
        else:
            raise ValueError(f"selective_scan: {name} must be (batch={bt}, N={n}, L={length}) or "
                             f"(batch, G, N, L), got {tuple(t.shape)}")
        if groups is not None and g != groups:
            raise ValueError(f"selective_scan: B has {groups} groups but C has {g}")
        groups = g
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and (tuple(t.shape) != (d,) or t.dtype != torch.float32):
            raise ValueError(f"selective_scan: {name} must be (D={d},) float32, got {tuple(t.shape)} {t.dtype}")


def scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False, chunk: int = _CHUNK) -> Tensor:
    """The op's CPU implementation: a chunked sequential scan, fp32 state, O(chunk * Bt * D * N) memory."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    bt, d, length = u.shape
    n = A.shape[1]
    g = B.shape[1] if B.dim() == 4 else 1
    c = d // g
    u32, dt = u.float(), delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    # time-major, channels split into (group, channel-in-group): a group's B/C broadcast over its channels
    dt_t = dt.reshape(bt, g, c, length).permute(3, 0, 1, 2).unsqueeze(-1)            # (L, Bt, G, c, 1)
    dtu_t = (dt * u32).reshape(bt, g, c, length).permute(3, 0, 1, 2).unsqueeze(-1)   # (L, Bt, G, c, 1)
    b_t = B.float().reshape(bt, g, n, length).permute(3, 0, 1, 2).unsqueeze(3)        # (L, Bt, G, 1, N)
    c_t = C.float().reshape(bt, g, n, length).permute(3, 0, 1, 2).unsqueeze(-1)       # (L, Bt, G, N, 1)
    a_g = A.reshape(g, c, n)
    y = torch.empty(length, bt, g, c, 1, dtype=torch.float32)
    h = torch.zeros(bt, g, c, n, dtype=torch.float32)
    for s in range(0, length, chunk):
        e = min(s + chunk, length)
        d_a = torch.exp(dt_t[s:e] * a_g)                                                # (K, Bt, G, c, N)
        d_bu = dtu_t[s:e] * b_t[s:e]
        hs = torch.empty_like(d_a)
        for k in range(e - s):
            h = torch.addcmul(d_bu[k], d_a[k], h, out=hs[k])
        torch.matmul(hs, c_t[s:e], out=y[s:e])                                          # sum over N
    y = y.reshape(length, bt, d).permute(1, 2, 0)
    if D is not None:
        y = y + u32 * D[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


@torch.library.custom_op(OP_NAME, mutates_args=())
def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> Tensor:
    return scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return torch.empty_like(u)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False) -> Tensor:
    """mamba_ssm's ``selective_scan_fn`` forward, as the ``avs::selective_scan`` op (see module docstring)."""
    return _selective_scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
