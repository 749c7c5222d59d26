"""Model families (SelM, VGGish) by name: ``create_model("selm-s4-r50", "S4_R50.pth")``, ``list_models("selm-*")``.

Importing this package imports every family file, which registers its variants and their pretrained configs.
"""
from ._pretrained import PretrainedCfg
from ._registry import (checkpoint_filter, list_models, model_builder, pretrained_cfg, register_model,
                        register_pretrained_cfgs)
from . import avs_mamba, combo, sdavs, selm, vggish  # noqa: F401  (registration side effects)
from .checkpoint import CheckpointMismatchError, load_checkpoint, read_checkpoint
from .factory import create_model
from .selm import SelM, SelMConfig

__all__ = ["create_model", "list_models", "register_model", "register_pretrained_cfgs", "model_builder",
           "pretrained_cfg", "checkpoint_filter", "PretrainedCfg", "load_checkpoint", "read_checkpoint", "CheckpointMismatchError",
           "SelM", "SelMConfig"]
