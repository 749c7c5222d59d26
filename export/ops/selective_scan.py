"""``avs::selective_scan``: Mamba's selective scan (S6) as one PyTorch custom op.

The contract is ``plugins/selective_scan/README.md``: mamba_ssm's ``selective_scan_fn`` forward.
Shapes use mamba_ssm's letters (``Bt`` is the batch, ``D`` the channels)::

    u        r(Bt D L)              delta   r(Bt D L)           A  r(D N), fp32
    B, C     r(Bt N L) or r(Bt G N L) (G divides D)
    D        r(D), fp32, optional   z       r(Bt D L), optional  delta_bias  r(D), fp32, optional
    ->  y    r(Bt D L), dtype of u; all math and the state in fp32

The CPU implementation walks L in chunks with an fp32 state of (Bt, D, N): it never holds more than
``chunk * Bt * D * N`` floats, whatever L is. The op is differentiable (``register_autograd``): it saves only its
inputs, and the backward recomputes the states chunk by chunk (``scan_backward``). fp64 inputs (u, delta, B, C, z
and A, D, delta_bias alike) run in fp64, so ``torch.autograd.gradcheck`` can check that backward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from plugins.scan_contract import DOMAIN

OP_NAME = f"{DOMAIN}::selective_scan"
_CHUNK = 32


def check_scan_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                      z: Optional[Tensor], delta_bias: Optional[Tensor]) -> None:
    """Raise ``ValueError`` naming the first input that breaks the contract."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, D, L), got shape {tuple(u.shape)}")
    bt, d, length = u.shape
    if length == 0:
        raise ValueError("selective_scan: L = 0 (empty sequence); the scan needs at least one step")
    if u.dtype not in (torch.float32, torch.float16, torch.float64):
        raise ValueError(f"selective_scan: u must be float32 or float16 (float64 in the PyTorch op only, for "
                         f"gradient checks), got {u.dtype}")
    param = torch.float64 if u.dtype == torch.float64 else torch.float32
    for name, t in (("delta", delta), ("z", z)):
        if t is not None and (tuple(t.shape) != (bt, d, length) or t.dtype != u.dtype):
            raise ValueError(f"selective_scan: {name} must be {(bt, d, length)} {u.dtype} like u, "
                             f"got {tuple(t.shape)} {t.dtype}")
    if A.dim() != 2 or A.shape[0] != d or A.dtype != param:
        raise ValueError(f"selective_scan: A must be (D={d}, N) {param}, got {tuple(A.shape)} {A.dtype}")
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
        if t is not None and (tuple(t.shape) != (d,) or t.dtype != param):
            raise ValueError(f"selective_scan: {name} must be (D={d},) {param}, got {tuple(t.shape)} {t.dtype}")


def _compute_dtype(u: Tensor) -> torch.dtype:
    """fp32 math for fp32/fp16 inputs; fp64 (PyTorch op only) so that ``gradcheck`` can check the backward."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _steps(delta: Tensor, delta_bias: Optional[Tensor], delta_softplus: bool, dtype: torch.dtype) -> Tensor:
    """The step size dt = softplus?(delta + delta_bias), in the compute dtype."""
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    return F.softplus(dt) if delta_softplus else dt


class _TimeMajor:
    """The scan's operands time-major, channels split into (group, channel-in-group) so a group's B/C broadcast:
    dt, dt*u (L, Bt, G, c, 1); B (L, Bt, G, 1, N); C (L, Bt, G, N, 1); A (G, c, N)."""

    def __init__(self, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
        bt, d, length = u.shape
        n = A.shape[1]
        g = B.shape[1] if B.dim() == 4 else 1
        dtype = dt.dtype
        self.shape = (bt, g, d // g, n, length)
        self.u = u.to(dtype).reshape(bt, g, d // g, length).permute(3, 0, 1, 2).unsqueeze(-1)
        self.dt = dt.reshape(bt, g, d // g, length).permute(3, 0, 1, 2).unsqueeze(-1)
        self.dtu = self.dt * self.u
        self.b = B.to(dtype).reshape(bt, g, n, length).permute(3, 0, 1, 2).unsqueeze(3)
        self.c = C.to(dtype).reshape(bt, g, n, length).permute(3, 0, 1, 2).unsqueeze(-1)
        self.a = A.to(dtype).reshape(g, d // g, n)

    def states(self, s: int, e: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """Steps s..e-1 from state ``h`` (after step s-1): (exp(dt*A) of each step, the states after each step)."""
        d_a = torch.exp(self.dt[s:e] * self.a)                                          # (K, Bt, G, c, N)
        d_bu = self.dtu[s:e] * self.b[s:e]
        hs = torch.empty_like(d_a)
        for k in range(e - s):
            h = torch.addcmul(d_bu[k], d_a[k], h, out=hs[k])
        return d_a, hs


def scan_reference(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False, chunk: int = _CHUNK) -> Tensor:
    """The op's CPU implementation: a chunked sequential scan, fp32 state, O(chunk * Bt * D * N) memory."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    y = _scan_y(_TimeMajor(u, _steps(delta, delta_bias, delta_softplus, _compute_dtype(u)), A, B, C), chunk)[0]
    if D is not None:
        y = y + u.to(y.dtype) * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(u.dtype)


def _scan_y(tm: _TimeMajor, chunk: int, keep_states: bool = False) -> tuple[Tensor, list[Tensor]]:
    """sum_N(h_t * C_t) as (Bt, D, L); with ``keep_states`` also the state before each chunk (for the backward)."""
    bt, g, c, n, length = tm.shape
    y = torch.empty(length, bt, g, c, 1, dtype=tm.dt.dtype, device=tm.dt.device)
    h = torch.zeros(bt, g, c, n, dtype=tm.dt.dtype, device=tm.dt.device)
    starts = []
    for s in range(0, length, chunk):
        e = min(s + chunk, length)
        if keep_states:
            starts.append(h)
        _, hs = tm.states(s, e, h)
        torch.matmul(hs, tm.c[s:e], out=y[s:e])                                        # sum over N
        h = hs[-1].clone() if keep_states else hs[-1]
    return y.reshape(length, bt, g * c).permute(1, 2, 0), starts


def scan_backward(grad: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                  z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool,
                  chunk: int = _CHUNK) -> tuple[Optional[Tensor], ...]:
    """Gradients of the scan w.r.t. (u, delta, A, B, C, D, z, delta_bias) given d(loss)/dy = ``grad``.

    Chunked recomputation: a forward pass keeps only the state before each chunk; the reverse pass recomputes one
    chunk's states at a time (``chunk * Bt * D * N`` values) and runs the adjoint recursion
    g_t = C_t * dy_t + exp(dt_{t+1} A) g_{t+1} through it.
    """
    dtype = _compute_dtype(u)
    raw = delta.to(dtype) + (delta_bias.to(dtype)[:, None] if delta_bias is not None else 0)
    tm = _TimeMajor(u, F.softplus(raw) if delta_softplus else raw, A, B, C)
    bt, g, c, n, length = tm.shape
    ys, starts = _scan_y(tm, chunk, keep_states=True)
    dout = grad.to(dtype)
    dz = None
    if z is not None:
        zf = z.to(dtype)
        y_full = ys + (u.to(dtype) * D.to(dtype)[:, None] if D is not None else 0)
        sig = torch.sigmoid(zf)
        dz = (dout * y_full * sig * (1 + zf * (1 - sig))).to(z.dtype)
        dout = dout * zf * sig
    dy = dout.reshape(bt, g, c, length).permute(3, 0, 1, 2).unsqueeze(-1)              # (L, Bt, G, c, 1)
    du, ddt = torch.empty_like(tm.u), torch.empty_like(tm.dt)
    db, dc = torch.empty_like(tm.b), torch.empty_like(tm.c)
    da = torch.zeros_like(tm.a)
    carry = torch.zeros(bt, g, c, n, dtype=dtype, device=u.device)     # exp(dt_{t+1} A) * g_{t+1}
    for s in reversed(range(0, length, chunk)):
        e = min(s + chunk, length)
        d_a, hs = tm.states(s, e, starts[s // chunk])
        gs = torch.empty_like(hs)
        cy = dy[s:e] * tm.c[s:e].transpose(-1, -2)                                    # (K, Bt, G, c, N)
        for k in reversed(range(e - s)):
            torch.add(cy[k], carry, out=gs[k])
            carry = d_a[k] * gs[k]
        h_prev = torch.cat((starts[s // chunk].unsqueeze(0), hs[:-1]))
        g_ah = gs * h_prev * d_a                                                       # d loss / d(dt*A)
        gb = (gs * tm.b[s:e]).sum(-1, keepdim=True)                                    # (K, Bt, G, c, 1)
        ddt[s:e] = (g_ah * tm.a).sum(-1, keepdim=True) + gb * tm.u[s:e]
        du[s:e] = gb * tm.dt[s:e]
        da += (g_ah * tm.dt[s:e]).sum((0, 1))
        db[s:e] = (gs * tm.dtu[s:e]).sum(-2, keepdim=True)
        dc[s:e] = (hs * dy[s:e]).sum(-2).unsqueeze(-1)
    to_bdl = lambda t: t.reshape(length, bt, g * c).permute(1, 2, 0)                  # noqa: E731
    to_bnl = lambda t: t.reshape(length, bt, g, n).permute(1, 2, 3, 0).reshape(B.shape)  # noqa: E731
    du, ddt = to_bdl(du), to_bdl(ddt)
    dD = None
    if D is not None:
        du = du + dout * D.to(dtype)[:, None]
        dD = (dout * u.to(dtype)).sum((0, 2)).to(D.dtype)
    if delta_softplus:
        ddt = ddt * torch.sigmoid(raw)
    dbias = ddt.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
    return (du.to(u.dtype), ddt.to(delta.dtype), da.reshape(A.shape).to(A.dtype), to_bnl(db).to(B.dtype),
            to_bnl(dc).to(C.dtype), dD, dz, dbias)


@torch.library.custom_op(OP_NAME, mutates_args=())
def _selective_scan_op(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
                       z: Optional[Tensor], delta_bias: Optional[Tensor], delta_softplus: bool) -> Tensor:
    return scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    return torch.empty_like(u)


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, delta_softplus = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)   # the inputs only: the backward recomputes
    ctx.delta_softplus = delta_softplus


def _backward(ctx, grad: Tensor):
    u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
    return (*scan_backward(grad, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus), None)


torch.library.register_autograd(OP_NAME, _backward, setup_context=_setup_context)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None,
                   z: Optional[Tensor] = None, delta_bias: Optional[Tensor] = None,
                   delta_softplus: bool = False) -> Tensor:
    """mamba_ssm's ``selective_scan_fn`` forward, as the ``avs::selective_scan`` op (see module docstring)."""
    return _selective_scan_op(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus))
