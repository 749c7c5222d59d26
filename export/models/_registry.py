"""Registry of named model variants (``selm-s4-r50``, ``vggish``, ...) and their pretrained configs.

A family file first registers one :class:`PretrainedCfg` per variant (``register_pretrained_cfgs``), then one
small builder per variant with ``@register_model("name")``; the builder takes keyword options (``gumbel=...`` for
SelM) and returns an uninitialised-but-valid ``nn.Module``. A variant without a config cannot be registered. A family
whose official checkpoints use another layout registers its ``checkpoint_filter_fn`` with each variant;
``create_model`` applies it before the strict load.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from collections.abc import Iterable
from typing import Callable

import torch.nn as nn

from ._pretrained import PretrainedCfg

__all__ = ["register_model", "register_pretrained_cfgs", "list_models", "model_builder", "pretrained_cfg",
           "checkpoint_filter", "variant_config"]

StateDictFilter = Callable[[dict, nn.Module], dict]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_CFGS: dict[str, PretrainedCfg] = {}
_FILTERS: dict[str, StateDictFilter] = {}


def register_pretrained_cfgs(cfgs: Iterable[PretrainedCfg]) -> dict[str, PretrainedCfg]:
    """Register configs (keyed by their ``name``); returns them as a dict, the family's ``default_cfgs``."""
    cfgs = list(cfgs)
    for cfg in cfgs:
        if cfg.name in _CFGS:
            raise ValueError(f"pretrained config {cfg.name!r} is registered twice")
        _CFGS[cfg.name] = cfg
    return {cfg.name: cfg for cfg in cfgs}


def register_model(name: str, checkpoint_filter_fn: StateDictFilter | None = None
                   ) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``fn(**options) -> nn.Module`` under ``name`` (its config must be registered first);
    ``checkpoint_filter_fn(state_dict, model) -> state_dict`` maps the official checkpoint layout onto the model's."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        if name not in _CFGS:
            raise ValueError(f"model {name!r} has no pretrained config: add a PretrainedCfg entry to its family's "
                             f"default_cfgs before registering it")
        _MODELS[name] = fn
        if checkpoint_filter_fn is not None:
            _FILTERS[name] = checkpoint_filter_fn
        return fn

    return wrap


def list_models(pattern: str = "*", *, task: str | None = None) -> list[str]:
    """Sorted names of the registered variants matching a shell-style ``pattern`` (and ``task``, if given)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern) and task in (None, _CFGS[n].task))


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return KeyError(f"unknown model {name!r}.{hint} Known models: {', '.join(list_models())}")


def model_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under ``name``; an unknown name raises ``KeyError`` naming close matches."""
    if name not in _MODELS:
        raise _unknown(name)
    return _MODELS[name]


def pretrained_cfg(name: str) -> PretrainedCfg:
    """The :class:`PretrainedCfg` of variant ``name``; an unknown name raises ``KeyError`` naming close matches."""
    if name not in _MODELS:
        raise _unknown(name)
    return _CFGS[name]


def checkpoint_filter(name: str) -> StateDictFilter | None:
    """The checkpoint filter registered with variant ``name``, or None (its checkpoints load as they are)."""
    model_builder(name)
    return _FILTERS.get(name)


def variant_config(config_cls: type, name: str, family: str, options: dict, **defaults):
    """A family's architecture config (a dataclass with ``name``, ``backbone`` and ``setting``) for variant ``name``:
    its registered backbone and setting, ``defaults`` (taken from its :class:`PretrainedCfg`), then the caller's
    ``options``; an option the config lacks raises ``TypeError`` naming the ones ``family`` takes."""
    known = [f.name for f in dataclasses.fields(config_cls) if f.name not in ("name", "backbone", "setting")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; {family} takes {', '.join(known)}")
    cfg = pretrained_cfg(name)
    return config_cls(name=name, backbone=cfg.backbone, setting=cfg.setting, **{**defaults, **options})
