"""VGGish audio embedding network, as used frozen by AVSBench-derived models (SelM, COMBO, AVS-Mamba).

Architecture of the AudioSet VGGish model (Hershey et al., "CNN Architectures for Large-Scale Audio
Classification", ICASSP 2017) in the layout of torchvggish (github.com/harritaylor/torchvggish), so that its
``vggish-10086976.pth`` state_dict loads unchanged: keys ``features.{0,3,6,8,11,13}`` and
``embeddings.{0,2,4}`` (shared/reference/state_dicts/vggish.tsv). Written from shared/specs/upstream-code.md
section 1.1; the PCA/quantisation post-processor is not part of the model (it is off in every AVS pipeline).

Input: log-mel examples ``[N, 1, 96, 64]`` from ``runtime.audio.waveform_to_examples``.
Output: embeddings ``[N, 128]``, non-negative (the last Linear keeps its ReLU).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ._pretrained import PretrainedCfg
from ._registry import register_model, register_pretrained_cfgs

__all__ = ["VGGish", "vggish", "vggish_test", "vggish_demo", "default_cfgs"]

# Conv widths; "M" is a 2x2 max-pool. Indices in ``features`` follow from this list (conv, ReLU, [pool]).
_FEATURE_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGish(nn.Module):
    """VGGish: 6 conv3x3+ReLU layers with 4 max-pools, then 3 Linear+ReLU layers to a 128-d embedding.

    Args:
        layout: conv widths and "M" (2x2 max-pool), in order; four pools map [96, 64] to [6, 4].
        hidden: width of the two hidden Linear layers.
        embedding_dim: width of the embedding.
    """

    INPUT_SHAPE = (1, 96, 64)  # (channels, time frames, mel bands) of one 0.96-s example

    def __init__(self, layout: Sequence[int | str] = _FEATURE_LAYOUT, hidden: int = 4096,
                 embedding_dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in layout:
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
                channels = width
        self.features = nn.Sequential(*layers)
        self.embedding_dim = embedding_dim
        # After 4 pools the [96, 64] map is [6, 4].
        self.embeddings = nn.Sequential(
            nn.Linear(6 * 4 * channels, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, embedding_dim),
            nn.ReLU(),
        )

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """``logmel [N, 1, 96, 64]`` -> embeddings ``[N, embedding_dim]``."""
        if logmel.dim() != 4 or tuple(logmel.shape[1:]) != self.INPUT_SHAPE:
            raise ValueError(f"VGGish expects log-mel examples [N, {', '.join(map(str, self.INPUT_SHAPE))}] "
                             f"(runtime.audio.waveform_to_examples); got shape {list(logmel.shape)}")
        dtype = self.embeddings[0].weight.dtype
        if logmel.dtype != dtype:
            raise ValueError(f"VGGish expects {dtype} input like its weights; got {logmel.dtype} "
                             f"(convert with .to({dtype}))")
        x = self.features(logmel)
        # Flatten in (H, W, C) order, as the TensorFlow original did, so the FC weights line up.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)


default_cfgs = register_pretrained_cfgs([
    PretrainedCfg(name="vggish", family="vggish", task="audio-encoder", audio_encoder=None, output_kind="embedding",
                  num_classes=128, class_names=(), palette=(), threshold=None, file="vggish-10086976.pth",
                  url="https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
                  license="Apache-2.0", origin_url="https://github.com/harritaylor/torchvggish",
                  paper="doi:10.1109/ICASSP.2017.7952132"),
    # A small trainable audio encoder for selm-s4-demo (VGGish is too heavy to train on a CPU), trained from
    # scratch by python -m export.train_demo; the weights ship in export/weights/.
    PretrainedCfg(name="vggish-demo", family="vggish", task="audio-encoder", audio_encoder=None,
                  output_kind="embedding", num_classes=128, class_names=(), palette=(), threshold=None,
                  bundled="vggish-demo.pth", license="Apache-2.0"),
    # Tiny random-weight variant for golden tests and selm-test's fast exports.
    PretrainedCfg(name="vggish-test", family="vggish", task="audio-encoder", audio_encoder=None,
                  output_kind="embedding", num_classes=128, class_names=(), palette=(), threshold=None),
])


def _create_vggish(name: str, **kwargs) -> VGGish:
    unknown = sorted(set(kwargs) - {"layout", "hidden", "embedding_dim"})
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; VGGish takes layout, hidden, "
                        f"embedding_dim")
    return VGGish(**kwargs)


@register_model("vggish")
def vggish(**kwargs) -> VGGish:
    """The VGGish network of torchvggish's ``vggish-10086976.pth``."""
    return _create_vggish("vggish", **kwargs)


@register_model("vggish-test")
def vggish_test(**kwargs) -> VGGish:
    model_args = dict(layout=(4, "M", 8, "M", 8, "M", 8, "M"), hidden=16, embedding_dim=128)
    return _create_vggish("vggish-test", **dict(model_args, **kwargs))


@register_model("vggish-demo")
def vggish_demo(**kwargs) -> VGGish:
    """VGGish's layout with four 16/32/64/64-wide convs (instead of six, 64-512) and 128-wide hidden layers
    (instead of 4096): 0.29 M parameters."""
    model_args = dict(layout=(16, "M", 32, "M", 64, "M", 64, "M"), hidden=128, embedding_dim=128)
    return _create_vggish("vggish-demo", **dict(model_args, **kwargs))
