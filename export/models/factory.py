"""``create_model``: a registered variant by name, in eval mode on the CPU, with strictly loaded weights."""
from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from ._registry import model_builder
from .checkpoint import load_checkpoint, read_checkpoint, unwrap_state_dict
from .selm import GUMBEL_MODES

__all__ = ["create_model"]


def create_model(name: str, checkpoint: str | os.PathLike | Mapping[str, Tensor] | None = None, *,
                 gumbel: str = "none") -> nn.Module:
    """Build variant ``name`` in eval mode on the CPU.

    Args:
        name: a registered name (``list_models()``); an unknown one raises ``KeyError`` naming close matches.
        checkpoint: a checkpoint file (or a state_dict) loaded strictly; ``None`` = random weights, with a warning.
        gumbel: "none" | "sample" | "input": the decoder's token assignment (SelM; other families: "none").
    """
    builder = model_builder(name)
    if gumbel not in GUMBEL_MODES:
        raise ValueError(f"gumbel must be one of {', '.join(GUMBEL_MODES)}; got {gumbel!r}")
    kwargs = {}
    if "gumbel" in inspect.signature(builder).parameters:
        kwargs["gumbel"] = gumbel
    elif gumbel != "none":
        raise ValueError(f"{name} has no Gumbel token assignment; use gumbel='none'")
    if checkpoint is None:
        warnings.warn(f"{name}: random weights: outputs are meaningless; pass checkpoint=<path to the official "
                      f"weights> for real predictions", UserWarning, stacklevel=2)
        model = builder(**kwargs)
    else:
        state_dict = (unwrap_state_dict(checkpoint) if isinstance(checkpoint, Mapping)
                      else read_checkpoint(checkpoint))
        with torch.device("meta"):
            model = builder(**kwargs)
        if _has_unsaved_tensors(model):
            model = builder(**kwargs)
        load_checkpoint(model, state_dict, name)
    return model.eval()


def _has_unsaved_tensors(model: nn.Module) -> bool:
    """True if some parameter/buffer is not in the state_dict (it could not be filled from a checkpoint)."""
    saved = set(model.state_dict())
    return any(n not in saved for n, _ in [*model.named_parameters(), *model.named_buffers()])
