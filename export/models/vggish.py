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

import torch
import torch.nn as nn

from export.models._registry import register_model

__all__ = ["VGGish", "vggish"]

# Conv widths; "M" is a 2x2 max-pool. Indices in ``features`` follow from this list (conv, ReLU, [pool]).
_FEATURE_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")


class VGGish(nn.Module):
    """VGGish: 6 conv3x3+ReLU layers with 4 max-pools, then 3 Linear+ReLU layers to a 128-d embedding."""

    INPUT_SHAPE = (1, 96, 64)  # (channels, time frames, mel bands) of one 0.96-s example
    EMBEDDING_DIM = 128

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width in _FEATURE_LAYOUT:
            if width == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU()]
                channels = width
        self.features = nn.Sequential(*layers)
        # After 4 pools the [96, 64] map is [6, 4] with 512 channels.
        self.embeddings = nn.Sequential(
            nn.Linear(6 * 4 * 512, 4096),
            nn.ReLU(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Linear(4096, self.EMBEDDING_DIM),
            nn.ReLU(),
        )

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        """``logmel [N, 1, 96, 64]`` -> embeddings ``[N, 128]``."""
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


@register_model("vggish")
def vggish(**options) -> VGGish:
    """The VGGish network (untrained weights; load ``vggish-10086976.pth`` with ``load_state_dict``).

    ``gumbel`` is accepted for a uniform ``create_model`` call and ignored (VGGish has no sampling).
    """
    options.pop("gumbel", None)
    if options:
        raise TypeError(f"vggish takes no options besides 'gumbel'; got {sorted(options)}")
    return VGGish()
