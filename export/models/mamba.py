"""Mamba-1 block with mamba_ssm 1.1.3's parameter names, full-sequence forward through ``avs::selective_scan``.

Mirrors ``mamba_ssm.modules.mamba_simple.Mamba`` (Tri Dao, Albert Gu; https://github.com/state-spaces/mamba,
tag v1.1.3.post1, Apache-2.0) on its non-fused path: same parameters, same initialisation, same math. Written
from the specification in ``shared/specs/selm.md`` §7, not copied. Checkpoints saved from ``mamba_ssm.Mamba``
load unchanged: ``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from export.ops.selective_scan import selective_scan

__all__ = ["Mamba"]


class Mamba(nn.Module):
    """Selective state-space block (S6): in_proj -> causal depthwise conv -> SiLU -> scan gated by SiLU(z) -> out_proj.

    Args:
        d_model: token width (256 in SelM).
        d_state: SSM state size N.
        d_conv: causal depthwise conv kernel.
        expand: inner width factor (d_inner = expand * d_model).
        dt_rank: rank of the delta projection; ``None`` = ceil(d_model / 16) as mamba_ssm's "auto".
        dt_min, dt_max, dt_init_floor: range of the initial step size (softplus of ``dt_proj.bias``).
    """

    def __init__(self, d_model: int = 256, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | None = None, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else dt_rank

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(self.d_inner, 1))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self._init_dt(dt_min, dt_max, dt_init_floor)

    @torch.no_grad()
    def _init_dt(self, dt_min: float, dt_max: float, floor: float) -> None:
        """mamba_ssm's "random" dt init: W_dt ~ U(+-rank^-0.5), softplus(b_dt) log-uniform in [dt_min, dt_max]."""
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -bound, bound)
        log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden`` (batch, L, d_model) -> (batch, L, d_model); causal over L."""
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)                       # (batch, 2E, L)
        x, z = xz.chunk(2, dim=1)
        x = F.silu(self.conv1d(x)[..., :length])                        # left zero padding d_conv - 1
        x_dbl = self.x_proj(x.transpose(1, 2))                          # (batch, L, R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)           # bias goes in as delta_bias
        y = selective_scan(x.contiguous(), dt.contiguous(), -torch.exp(self.A_log.float()),
                           b.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous(), self.D.float(),
                           z=z.contiguous(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        return self.out_proj(y.transpose(1, 2))
