"""``create_model``: a registered variant by name, in eval mode on the CPU, with strictly loaded weights."""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import torch
import torch.nn as nn
from torch import Tensor

from ._registry import checkpoint_filter, model_builder, pretrained_cfg
from .checkpoint import load_checkpoint, read_checkpoint, unwrap_state_dict

__all__ = ["create_model"]


def create_model(name: str, checkpoint: str | os.PathLike | Mapping[str, Tensor] | None = None,
                 **kwargs) -> nn.Module:
    """Build variant ``name`` in eval mode on the CPU; ``model.pretrained_cfg`` is its :class:`PretrainedCfg`.

    Args:
        name: a registered name (``list_models()``); an unknown one raises ``KeyError`` naming close matches.
        checkpoint: a checkpoint file (or a state_dict) loaded strictly, after the variant's registered
            ``checkpoint_filter_fn`` (official layouts); ``None`` = random weights, with a warning.
        **kwargs: options of the variant's family builder (SelM: ``gumbel="none" | "sample" | "input"``); one the
            family does not take raises ``TypeError`` naming the variant.
    """
    builder = model_builder(name)
    cfg = pretrained_cfg(name)
    if checkpoint is None:
        warnings.warn(f"{name}: random weights: outputs are meaningless; pass checkpoint=<path to the official "
                      f"weights{f' {cfg.file}' if cfg.file else ''}> for real predictions", UserWarning,
                      stacklevel=2)
        model = builder(**kwargs)
    else:
        state_dict = (unwrap_state_dict(checkpoint) if isinstance(checkpoint, Mapping)
                      else read_checkpoint(checkpoint))
        with torch.device("meta"):
            model = builder(**kwargs)
        if _has_unsaved_tensors(model):
            model = builder(**kwargs)
        filter_fn = checkpoint_filter(name)
        if filter_fn is not None:
            state_dict = filter_fn(state_dict, model)
        load_checkpoint(model, state_dict, name)
    model.pretrained_cfg = cfg
    return model.eval()


def _has_unsaved_tensors(model: nn.Module) -> bool:
    """True if some parameter/buffer is not in the state_dict (it could not be filled from a checkpoint)."""
    saved = set(model.state_dict())
    return any(n not in saved for n, _ in [*model.named_parameters(), *model.named_buffers()])
