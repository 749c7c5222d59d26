"""Strict checkpoint loading for every registered model family.

A checkpoint is read with ``torch.load(path, map_location="cpu", weights_only=True)`` and may be a plain
state_dict, a dict holding it under ``'model'`` or ``'state_dict'``, with or without a ``'module.'`` prefix
(DataParallel / DDP). It must then match the model exactly: the same keys (buffers included) with the same
shapes. Anything else raises ``CheckpointMismatchError`` naming the first few missing, unexpected and wrongly
shaped keys with their counts and, when the keys fit another registered variant, that variant.
"""
from __future__ import annotations

import functools
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from ._registry import list_models, model_builder

__all__ = ["CheckpointMismatchError", "read_checkpoint", "unwrap_state_dict", "check_state_dict", "load_checkpoint",
           "key_shapes"]

_SHOW = 5          # keys named per category in an error
_PREFIX = "module."
_FOREIGN_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes differ from the model's."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Load a checkpoint file into a flat ``{key: tensor}`` dict on the CPU (containers and prefix removed).

    Only ``weights_only`` loading is used; errors name the file and never suggest unsafe loading.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path} (check the path; each variant's official file and "
                                f"download page are in export.models.pretrained_cfg(name).file / .url)")
    if not path.is_file():
        raise ValueError(f"checkpoint {path} is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # torch's pickle-protocol notes say nothing useful here
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError/EOFError/KeyError for foreign or damaged files
        found = _FOREIGN_GLOBAL.search(str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:
            raise ValueError(f"checkpoint {path} holds a pickled {found.group(1)} object besides tensors, which "
                             f"safe (weights_only) loading refuses; re-save the weights alone with "
                             f"torch.save(model.state_dict(), path)") from None
        raise ValueError(f"checkpoint {path} is not a PyTorch checkpoint, or it is corrupt or truncated "
                         f"({type(e).__name__}); download it again") from None
    return unwrap_state_dict(obj, f"checkpoint {path}")


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, Tensor]:
    """The flat state_dict inside a loaded checkpoint: unwrap 'model'/'state_dict', strip a 'module.' prefix."""
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
    for container in ("model", "state_dict"):
        if isinstance(obj.get(container), Mapping):
            obj = obj[container]
            break
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ValueError(f"{source} is not a state_dict: {len(bad)} entries are not str -> tensor, e.g. "
                         f"{', '.join(repr(k) for k in bad[:_SHOW])}")
    if obj and all(k.startswith(_PREFIX) for k in obj):
        obj = {k[len(_PREFIX):]: v for k, v in obj.items()}
    return dict(obj)


def key_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of a model's state_dict (works on the ``meta`` device)."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def _variant_shapes(name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    with torch.device("meta"):
        model = model_builder(name)()
    return tuple(sorted(key_shapes(model).items()))


def _matching_variant(state_dict: Mapping[str, Tensor], exclude: str | None) -> str | None:
    """The registered variant whose key -> shape map equals the checkpoint's, if any."""
    target = tuple(sorted((k, tuple(v.shape)) for k, v in state_dict.items()))
    for name in list_models():
        if name == exclude:
            continue
        try:
            if _variant_shapes(name) == target:
                return name
        except Exception:  # a family that cannot be built on meta is simply not a candidate
            continue
    return None


def _label(model: nn.Module, name: str | None) -> str:
    return name or type(model).__name__


def _first(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], name: str | None = None) -> None:
    """Raise ``CheckpointMismatchError`` unless ``state_dict`` has exactly the model's keys and shapes."""
    expected = key_shapes(model)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    parts = [f"checkpoint does not fit {_label(model, name)}:"]
    if missing:
        parts.append(f"{len(missing)} missing keys ({_first(missing)});")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)});")
    if wrong:
        shown = [f"{k}: checkpoint {list(state_dict[k].shape)} vs model {list(expected[k])}" for k in wrong]
        parts.append(f"{len(wrong)} keys with the wrong shape ({_first(shown)});")
    other = _matching_variant(state_dict, exclude=name)
    if other is not None:
        parts.append(f"this looks like a {other} checkpoint; use --model {other}")
    else:
        parts.append("it matches no registered model")
    raise CheckpointMismatchError(" ".join(parts))


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Tensor],
                    name: str | None = None) -> nn.Module:
    """Strictly load a checkpoint file or state_dict into ``model`` (which may live on ``meta``); returns it.

    Floating-point tensors are converted to the model's dtype; on a ``meta`` model the loaded tensors are
    assigned (no second copy in memory).
    """
    state_dict = unwrap_state_dict(checkpoint) if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
    check_state_dict(model, state_dict, name)
    own = model.state_dict()
    state_dict = {k: v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v
                  for k, v in state_dict.items()}
    on_meta = any(t.is_meta for t in own.values())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{_label(model, name)}: {len(left)} tensors were not in the checkpoint and are "
                           f"still on the meta device ({_first(left)}); build the model on the CPU instead")
    return model
