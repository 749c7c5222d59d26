"""Per-variant pretrained configuration as data (timm's ``pretrained_cfg`` idea).

A :class:`PretrainedCfg` says everything about a variant that is not its architecture: the input it expects
(frame size, normalisation, clip length, frame rate, audio front-end and audio encoder), what its output means
(kind, classes, palette), and where its official weights come from (file name, URL, license). Family files build
their entries with ``dataclasses.replace`` of a family default and register them with
``register_pretrained_cfgs``; ``export.build_engine`` writes the manifest from it, so nothing model-specific lives
in the exporter.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from runtime import audio as _audio
from runtime.manifest import AudioSpec

__all__ = ["PretrainedCfg", "AUDIO_FRONT_ENDS", "IMAGENET_MEAN", "IMAGENET_STD", "BINARY_CLASSES", "BINARY_PALETTE",
           "AVSBENCH_CLASSES", "voc_palette"]

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BINARY_CLASSES = ("background", "sounding object")
BINARY_PALETTE = ((0, 0, 0), (255, 255, 255))
OUTPUT_KINDS = {"binary": "sigmoid", "semantic": "argmax", "embedding": "none"}

AUDIO_FRONT_ENDS: dict[str, AudioSpec] = {
    # torchvggish / AVSBench: one 0.96-s log-mel example per video frame (runtime.audio implements it).
    "vggish-log-mel": AudioSpec(
        sample_rate=_audio.SAMPLE_RATE, mono="mean of channels", int16_scale=1 / 32768,
        window_length=_audio.WINDOW_SAMPLES, hop_length=_audio.HOP_SAMPLES, fft_length=_audio.FFT_LENGTH,
        window="periodic_hann", spectrum="magnitude", centered=False, mel_bins=_audio.NUM_MEL_BANDS,
        mel_min_hz=_audio.MEL_MIN_HZ, mel_max_hz=_audio.MEL_MAX_HZ, mel_scale="htk", log_offset=_audio.LOG_OFFSET,
        example_frames=_audio.EXAMPLE_FRAMES, example_hop_frames=_audio.EXAMPLE_FRAMES,
        example_seconds=_audio.EXAMPLE_SECONDS,
        layout=f"[examples, 1, {_audio.EXAMPLE_FRAMES} frames, {_audio.NUM_MEL_BANDS} mel bins]"),
}

AVSBENCH_CLASSES = tuple((
    "background accordion airplane axe baby bassoon bell bird boat boy bus car cat cello clarinet clipper clock dog "
    "donkey drum duck elephant emergency-car erhu flute frying-food girl goose guitar gun guzheng hair-dryer handpan "
    "harmonica harp helicopter hen horse keyboard leopard lion man marimba missile-rocket motorcycle mower parrot "
    "piano pig pipa saw saxophone sheep sitar sorna squirrel tabla tank tiger tractor train trombone truck trumpet "
    "tuba ukulele utv vacuum-cleaner violin wolf woman").split())


def voc_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL-VOC colour map AVSBench uses for class indices: index bits spread over R, G, B from the top."""
    palette = []
    for index in range(n):
        rgb, value = [0, 0, 0], index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette.append(tuple(rgb))
    return tuple(palette)


@dataclass(frozen=True)
class PretrainedCfg:
    """What a variant expects and produces, and where its weights come from.

    Args:
        name: registry name (``selm-s4-r50``).
        family: model family (``selm``, ``vggish``, ...): the exporter picks the family's graph layout by it.
        task: ``segmentation`` (exportable on its own) or ``audio-encoder`` (used inside another model's graphs).
        setting: training data subset (``s4``, ``ms3``, ``avss``; ``test`` for the tiny golden-test variants).
        backbone: visual backbone tag (``r50``, ``pvt``, ``pvt-test``).
        audio_encoder: registry name of the audio encoder whose embeddings the model takes, or None.
        audio_front_end: key of :data:`AUDIO_FRONT_ENDS`: the waveform -> model-input transform.
        input_size: frames are resized to ``input_size`` squared (the graph's fixed resolution).
        interpolation: resize filter for the frames.
        mean, std: per-channel normalisation of RGB in [0, 1].
        frames_per_clip: T, the clip length the model was trained on; ``frame_rate_hz``: its sampling rate.
        output_kind: ``binary`` (sigmoid > ``threshold``), ``semantic`` (argmax) or ``embedding``.
        num_classes, class_names, palette: output channels, their names and display colours (RGB).
        output_size: side of the output map.
        file, url, license, origin_url, paper: the official checkpoint's file name and download page, the
            license of the weights, the upstream repository and the paper (empty when there are none).
        bundled: weights shipped in this repository (``export/weights/<bundled>``, made by a committed command
            recorded beside them), used when no checkpoint is given; empty when there are none.
    """

    name: str
    family: str
    task: str = "segmentation"
    setting: str = ""
    backbone: str = ""
    audio_encoder: Optional[str] = "vggish"
    audio_front_end: str = "vggish-log-mel"
    input_size: int = 224
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    frames_per_clip: int = 5
    frame_rate_hz: float = 1.0
    output_kind: str = "binary"
    num_classes: int = 1
    class_names: tuple[str, ...] = BINARY_CLASSES
    palette: tuple[tuple[int, int, int], ...] = BINARY_PALETTE
    threshold: Optional[float] = 0.5
    output_size: int = 224
    file: str = ""
    url: str = ""
    license: str = ""
    origin_url: str = ""
    paper: str = ""
    bundled: str = ""

    def __post_init__(self) -> None:
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"{self.name}: output_kind must be one of {', '.join(OUTPUT_KINDS)}, "
                             f"got {self.output_kind!r}")
        if self.audio_front_end not in AUDIO_FRONT_ENDS:
            raise ValueError(f"{self.name}: unknown audio_front_end {self.audio_front_end!r} "
                             f"(known: {', '.join(AUDIO_FRONT_ENDS)})")
        if self.output_kind != "embedding" and not (len(self.class_names) == len(self.palette) ==
                                                    max(2, self.num_classes)):
            raise ValueError(f"{self.name}: {len(self.class_names)} class names and {len(self.palette)} colours "
                             f"for {self.num_classes} output channels")

    @property
    def activation(self) -> str:
        """How logits become a decision: ``sigmoid``, ``argmax`` or ``none``."""
        return OUTPUT_KINDS[self.output_kind]

    @property
    def bundled_path(self) -> Optional[Path]:
        """The shipped weights file, or None when this variant ships none."""
        return WEIGHTS_DIR / self.bundled if self.bundled else None

    @property
    def audio(self) -> AudioSpec:
        """The audio front-end's parameters."""
        return AUDIO_FRONT_ENDS[self.audio_front_end]
