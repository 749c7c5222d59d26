"""avs-synth: a synthetic audio-visual segmentation data set in the AVSBench-object layout (S4 and MS3).

Every clip is 5 frames (224 x 224, 1 fps) and 5 s of audio. 2-4 objects of distinct classes move over a textured
background; each class has its own shape, colour family and sound (``CLASSES``). In each second none, one (S4) or
up to two (MS3) of the visible classes sound, over background noise and non-object sounds (clicks, wind); the
ground truth of a frame is the visible pixels of the objects sounding in that second. Silent distractors share
the shape or the colour of a sounding class, and the classes that do not sound stay on screen, so only the audio
says which object to segment.

Second ``k``'s sound occupies ``SLOT_START + 0.96 k`` to ``SLOT_END + 0.96 k`` s: inside VGGish example ``k``
(which reads 0.96 k .. 0.96 k + 0.975 s) and no other, so the log-mel example of frame ``k`` hears exactly its
second's sources. Everything is drawn from ``numpy.random.default_rng([seed, task, split, index])``: the same
arguments give the same bytes. ``write_dataset`` writes what AVSBench ships (see ``clip_paths``); the CLI is
``runtime.synth_cli``.
"""
from __future__ import annotations

import csv
import io
import json
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import cv2
import numpy as np

from runtime.audio import waveform_to_examples
from runtime.datasets.torch_pickle import dump_log_mel

__all__ = [
    "SoundClass", "CLASSES", "TASKS", "SPLITS", "FRAMES", "SIZE", "DEFAULT_SNR_DB", "SynthObject", "ClipPlan",
    "plan_clip", "render_frame", "ground_truth", "render_audio", "clip_paths", "write_clip", "split_counts",
    "write_dataset", "demo_plan", "render_demo_clip",
]

FRAMES = 5
SECONDS = 5.0
SIZE = 224
TASKS = ("s4", "ms3")
SPLITS = ("train", "val", "test")
DEFAULT_SNR_DB = (5.0, 20.0)
SLOT_START, SLOT_END = 0.02, 0.95  # seconds after 0.96 k: the part of VGGish example k no other example reads
RATES = ((16000, 1, 0.7), (44100, 2, 0.15), (48000, 2, 0.15))  # sample rate, channels, probability
CSV_COLUMNS = {"s4": ("name", "start_time", "category", "split"), "ms3": ("name", "split")}
_TASK_DIRS = {"s4": ("Single-source", "s4"), "ms3": ("Multi-sources", "ms3")}
_RAMP_S = 0.015


@dataclass(frozen=True)
class SoundClass:
    """One object class: how it looks and how it sounds."""
    name: str
    shape: str
    hue: float  # degrees on the colour wheel
    sound: str


CLASSES = (
    SoundClass("bell", "circle", 0.0, "struck bell, ~3.5 strikes/s, inharmonic partials 1.1 / 2.6 / 4.0 kHz"),
    SoundClass("drum", "square", 220.0, "low drum, ~4 hits/s, pitch gliding 180 -> 110 Hz, noisy attack"),
    SoundClass("engine", "star", 55.0, "engine, continuous 130 Hz sawtooth (harmonics to 4 kHz), 11 Hz flutter"),
    SoundClass("siren", "cross", 185.0, "siren, continuous odd-harmonic tone sweeping 520-880 Hz at 1.2 Hz"),
    SoundClass("chirp", "triangle", 300.0, "bird, ~7 chirps/s, 50 ms upward sweeps 2.2 -> 3.8 kHz"),
    SoundClass("steam", "ring", 125.0, "steam, continuous hiss 5.0-7.4 kHz, slowly swelling"),
)
_SHAPES = tuple(c.shape for c in CLASSES)


@dataclass(frozen=True)
class SynthObject:
    """An object on screen; positions and radius in pixels of the 224 x 224 frame."""
    shape: str
    rgb: tuple[int, int, int]
    label: Optional[int]  # index into CLASSES, None for a distractor (never sounds)
    radius: float
    start: tuple[float, float]
    velocity: tuple[float, float]  # pixels per second, bouncing off the borders
    angle: float  # degrees at t = 0
    spin: float  # degrees per second

    def centre(self, t: float) -> tuple[float, float]:
        """Centre at time ``t`` (s), reflected at the borders."""
        lo, hi = self.radius, SIZE - self.radius
        return tuple(float(_fold(p + v * t, lo, hi)) for p, v in zip(self.start, self.velocity))


@dataclass(frozen=True)
class ClipPlan:
    """Everything that defines one clip; rendering it is deterministic."""
    name: str
    task: str
    split: str
    category: str  # S4: the sounding class; MS3: ""
    sample_rate: int
    channels: int
    snr_db: float
    objects: tuple[SynthObject, ...]  # in drawing order (later ones cover earlier ones)
    sounding: tuple[tuple[int, ...], ...]  # per second: the class indices that sound
    seed: int

    def sounding_objects(self, second: int) -> list[int]:
        """Indices into ``objects`` of the objects sounding in ``second``."""
        return [i for i, o in enumerate(self.objects) if o.label is not None and o.label in self.sounding[second]]


def _fold(x, lo, hi):
    """``x`` reflected into ``[lo, hi]`` (scalars or arrays)."""
    span = hi - lo
    y = (x - lo) % (2 * span)
    return lo + np.where(y <= span, y, 2 * span - y)


def _colour(rng: np.random.Generator, hue: float) -> tuple[int, int, int]:
    """A saturated colour of the family ``hue`` (jittered), RGB."""
    h = (hue + rng.uniform(-8, 8)) % 360
    s, v = rng.uniform(0.75, 1.0), rng.uniform(0.7, 1.0)
    hsv = np.array([[[h / 2, s * 255, v * 255]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _place(rng: np.random.Generator, specs: list[tuple[str, float, Optional[int]]]) -> tuple[SynthObject, ...]:
    """Moving objects for ``(shape, hue, label)`` specs, placed one by one apart from the others in every frame
    (the candidate with the widest gap when none of 200 is apart)."""
    times = np.arange(FRAMES)[None, :, None]
    placed: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []  # radius, start, velocity, centres
    for _ in specs:
        radius = rng.uniform(26, 38)
        starts = rng.uniform(radius, SIZE - radius, (200, 2))
        speed, heading = rng.uniform(4, 14, 200), rng.uniform(0, 2 * np.pi, 200)
        velocity = np.stack([speed * np.cos(heading), speed * np.sin(heading)], axis=1)
        centres = _fold(starts[:, None] + velocity[:, None] * times, radius, SIZE - radius)  # [200, frames, 2]
        gap = np.full(200, np.inf)
        for r, _, _, other in placed:
            gap = np.minimum(gap, (np.linalg.norm(centres - other, axis=-1) - radius - r).min(axis=1))
        best = int(np.argmax(gap > 3)) if np.any(gap > 3) else int(np.argmax(gap))
        placed.append((radius, starts[best], velocity[best], centres[best]))
    return tuple(
        SynthObject(shape, _colour(rng, hue), label, float(r), (float(s[0]), float(s[1])), (float(v[0]), float(v[1])),
                    float(rng.uniform(0, 360)), float(rng.uniform(-6, 6)))
        for (shape, hue, label), (r, s, v, _) in zip(specs, placed))


def plan_clip(rng: np.random.Generator, task: str, split: str, name: str,
              snr_db: tuple[float, float] = DEFAULT_SNR_DB) -> ClipPlan:
    """Draw one clip: visible classes, who sounds when, distractors, motion, sample rate, SNR."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    visible = [int(c) for c in rng.choice(len(CLASSES), size=int(rng.integers(2, 5)), replace=False)]
    if task == "s4":
        category = int(rng.choice(visible))
        silent = rng.random(FRAMES) < 0.25
        if silent.all():
            silent[rng.integers(FRAMES)] = False
        sounding = tuple(() if s else (category,) for s in silent)
    else:
        category = None
        counts = rng.choice(3, size=FRAMES, p=[0.15, 0.45, 0.40])
        sounding = tuple(tuple(sorted(int(c) for c in rng.choice(visible, min(n, len(visible)), replace=False)))
                         for n in counts)
    heard = sorted({c for second in sounding for c in second}) or visible
    specs = [(CLASSES[c].shape, CLASSES[c].hue, c) for c in visible]
    for d in range(int(rng.integers(1, 3))):
        # The first distractor shares the shape or the colour of a sounding class; any other mixes two classes.
        own = int(rng.choice(heard)) if d == 0 else int(rng.integers(len(CLASSES)))
        other = int(rng.choice([c for c in range(len(CLASSES)) if c != own]))
        shape_of, hue_of = (own, other) if rng.random() < 0.5 else (other, own)
        specs.append((CLASSES[shape_of].shape, CLASSES[hue_of].hue, None))
    order = rng.permutation(len(specs))
    objects = _place(rng, [specs[i] for i in order])
    rate, channels, _ = RATES[int(rng.choice(len(RATES), p=[p for _, _, p in RATES]))]
    return ClipPlan(name, task, split, CLASSES[category].name if category is not None else "", rate, channels,
                    float(rng.uniform(*snr_db)), objects, sounding, int(rng.integers(2 ** 63)))


# ---- pictures ----

def _shape_mask(obj: SynthObject, t: float, size: int) -> np.ndarray:
    """Boolean mask of ``obj`` at time ``t`` in a ``size`` x ``size`` frame."""
    scale = size / SIZE
    cx, cy = (c * scale for c in obj.centre(t))
    r = obj.radius * scale
    canvas = np.zeros((size, size), np.uint8)
    centre = (int(round(cx)), int(round(cy)))
    if obj.shape in ("circle", "ring"):
        cv2.circle(canvas, centre, int(round(r)), 1, -1)
        if obj.shape == "ring":
            cv2.circle(canvas, centre, int(round(0.55 * r)), 0, -1)
        return canvas.astype(bool)
    if obj.shape == "square":
        radial = np.full(4, 1.1 * r)
    elif obj.shape == "triangle":
        radial = np.full(3, 1.3 * r)
    elif obj.shape == "star":
        radial = np.tile([1.25 * r, 0.55 * r], 5)
    else:  # cross: 12 corners of a plus sign with arms 0.4 r wide each side
        w, l = 0.4 * r, 1.1 * r
        corners = np.array([(w, l), (w, w), (l, w), (l, -w), (w, -w), (w, -l),
                            (-w, -l), (-w, -w), (-l, -w), (-l, w), (-w, w), (-w, l)])
        radial, base = np.hypot(corners[:, 0], corners[:, 1]), np.arctan2(corners[:, 1], corners[:, 0])
    if obj.shape != "cross":
        base = np.arange(radial.size) * 2 * np.pi / radial.size - np.pi / 2
    theta = base + np.deg2rad(obj.angle + obj.spin * t)
    points = np.stack([cx + radial * np.cos(theta), cy + radial * np.sin(theta)], axis=1)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)


def _background(seed: int, size: int) -> np.ndarray:
    """A muted, textured RGB canvas of ``size + size // 4`` pixels square (panned across over time)."""
    rng = np.random.default_rng([seed, 1])
    big = size + size // 4
    tint = cv2.resize(rng.uniform(60, 200, (6, 6, 3)).astype(np.float32), (big, big), interpolation=cv2.INTER_CUBIC)
    grey = tint.mean(axis=2, keepdims=True)
    canvas = grey + rng.uniform(0.15, 0.35) * (tint - grey)  # low saturation: objects keep their colour family
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) * (SIZE / size)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        a, period = rng.uniform(0, np.pi), rng.uniform(10, 28)
        pattern = np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)
    elif kind == 1:  # checkerboard
        cell = rng.uniform(12, 30)
        pattern = (((xx // cell) + (yy // cell)) % 2) * 2.0 - 1.0
    else:  # blotches
        pattern = cv2.resize(rng.uniform(-1, 1, (24, 24)).astype(np.float32), (big, big),
                             interpolation=cv2.INTER_NEAREST)
    canvas = canvas + rng.uniform(12, 30) * pattern[..., None]
    return np.clip(canvas, 0, 255).astype(np.float32)


def render_frame(plan: ClipPlan, t: float, size: int = SIZE,
                 background: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """The RGB frame (uint8 ``[size, size, 3]``) at time ``t`` and its label map (int8: object index, -1 = none)."""
    if background is None:
        background = _background(plan.seed, size)
    pan = np.random.default_rng([plan.seed, 2]).uniform(-1, 1, 2) * (size / SIZE) * 4.0
    margin = background.shape[0] - size
    ox, oy = (int(round(_fold(margin / 2 + p * t, 0, margin))) for p in pan)
    image = background[oy:oy + size, ox:ox + size].copy()
    labels = np.full((size, size), -1, np.int8)
    scale = size / SIZE
    for index, obj in enumerate(plan.objects):
        mask = _shape_mask(obj, t, size)
        ys, xs = np.nonzero(mask)
        cx, cy = (c * scale for c in obj.centre(t))
        shade = 1.0 + 0.18 * ((xs - cx) - (ys - cy)) / (obj.radius * scale * 1.4)
        image[ys, xs] = np.asarray(obj.rgb, np.float32) * shade[:, None]
        labels[mask] = index
    noise = np.random.default_rng([plan.seed, 3, int(round(t * 1000))]).standard_normal(image.shape, np.float32)
    return np.clip(image + 2.0 * noise, 0, 255).astype(np.uint8), labels


def ground_truth(plan: ClipPlan, labels: np.ndarray, second: int) -> np.ndarray:
    """The binary mask (uint8 0/255) of the pixels of the objects sounding in ``second``."""
    return np.isin(labels, plan.sounding_objects(second)).astype(np.uint8) * 255


# ---- sounds ----

def _band_noise(rng: np.random.Generator, n: int, rate: int, lo: float, hi: float, tilt: float = 0.0) -> np.ndarray:
    """Gaussian noise limited to ``lo``-``hi`` Hz, spectrum ~ f**-tilt/2 inside the band, unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / rate)
    spectrum *= ((f >= lo) & (f <= hi)) / np.maximum(f, 1.0) ** (tilt / 2)
    x = np.fft.irfft(spectrum, n)
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _events(rng: np.random.Generator, n: int, rate: int, per_second: float, template) -> np.ndarray:
    """A train of ``template(t)`` events about ``per_second`` apart (jittered), over ``n`` samples."""
    out = np.zeros(n)
    start = rng.uniform(0, 1 / per_second)
    while start < n / rate:
        i = int(start * rate)
        piece = template(np.arange(min(n - i, int(0.3 * rate))) / rate)
        out[i:i + piece.size] += piece
        start += rng.uniform(0.85, 1.15) / per_second
    return out


def _class_sound(label: int, rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Class ``label``'s sound over ``n`` samples (pitch and tempo jittered per clip), unit RMS."""
    t = np.arange(n) / rate
    pitch, tempo = rng.uniform(0.94, 1.06), rng.uniform(0.9, 1.1)
    nyquist = 0.45 * rate
    name = CLASSES[label].name
    if name == "bell":
        partials = [(1.0, 1.0, 0.18), (2.32, 0.6, 0.10), (3.6, 0.35, 0.06)]
        x = _events(rng, n, rate, 3.5 * tempo, lambda u: sum(
            a * np.exp(-u / d) * np.sin(2 * np.pi * 1100 * pitch * m * u) for m, a, d in partials))
    elif name == "drum":
        def hit(u):
            glide = 2 * np.pi * pitch * (110 * u + 70 * 0.04 * (1 - np.exp(-u / 0.04)))
            thump = np.exp(-u / 0.09) * (np.sin(glide) + 0.4 * np.sin(1.6 * glide))
            return thump + 0.5 * np.exp(-u / 0.012) * rng.standard_normal(u.size)
        x = _events(rng, n, rate, 4.0 * tempo, hit)
    elif name == "engine":
        f0 = 130 * pitch
        cycle = np.arange(1024) / 1024  # one period of a band-limited sawtooth, read at the engine's pitch
        period = sum(np.sin(2 * np.pi * k * cycle + k) / k for k in range(1, int(min(4000, nyquist) // f0) + 1))
        x = np.interp((f0 * t) % 1.0, cycle, period, period=1.0)
        x *= 1 + 0.35 * np.sin(2 * np.pi * 11 * tempo * t)
    elif name == "siren":
        f = 700 * pitch * (1 + 0.25 * np.sin(2 * np.pi * 1.2 * tempo * t + rng.uniform(0, 2 * np.pi)))
        phase = 2 * np.pi * np.cumsum(f) / rate
        x = np.sin(phase) + np.sin(3 * phase) / 3 + np.sin(5 * phase) / 5
    elif name == "chirp":
        def chirp(u):
            u = u[: int(0.05 * rate)]
            f = 2200 * pitch * (3800 / 2200) ** (u / 0.05)
            return np.sin(2 * np.pi * np.cumsum(f) / rate) * np.sin(np.pi * u / 0.05) ** 2
        x = _events(rng, n, rate, 7.0 * tempo, chirp)
    else:  # steam
        x = _band_noise(rng, n, rate, 5000 * pitch, min(7400, nyquist))
        x *= 1 + 0.4 * np.sin(2 * np.pi * 0.7 * tempo * t + rng.uniform(0, 2 * np.pi))
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _gate(n: int, rate: int, seconds: Iterable[int]) -> np.ndarray:
    """1 inside the slots of ``seconds`` (with short raised-cosine ramps), 0 elsewhere."""
    gate = np.zeros(n)
    ramp = int(_RAMP_S * rate)
    rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
    for k in seconds:
        a, b = int((0.96 * k + SLOT_START) * rate), int((0.96 * k + SLOT_END) * rate)
        gate[a:b] = 1.0
        gate[a:a + ramp] = rise
        gate[b - ramp:b] = rise[::-1]
    return gate


def _background_sound(rng: np.random.Generator, n: int, rate: int) -> np.ndarray:
    """Pink noise, wind gusts under 400 Hz and broadband clicks: sounds no object makes. Unit RMS."""
    t = np.arange(n) / rate
    pink = _band_noise(rng, n, rate, 60, 0.45 * rate, tilt=1.0)
    wind = _band_noise(rng, n, rate, 60, 400)
    swell = np.interp(t, np.linspace(0, SECONDS, 8), rng.uniform(0, 1, 8)) ** 2
    clicks = _events(rng, n, rate, rng.uniform(0.5, 2.5),
                     lambda u: rng.uniform(3, 8) * np.exp(-u[: int(0.02 * rate)] / 0.003)
                     * rng.standard_normal(min(u.size, int(0.02 * rate))))
    x = pink + rng.uniform(0.5, 1.5) * wind * swell + clicks
    return x / np.sqrt(np.mean(x ** 2))


def render_audio(plan: ClipPlan) -> np.ndarray:
    """The soundtrack, float32 ``(samples, channels)`` in [-1, 1], at ``plan.sample_rate``."""
    rng = np.random.default_rng([plan.seed, 4])
    rate, n = plan.sample_rate, int(SECONDS * plan.sample_rate)
    level = 0.03 * 10 ** (rng.uniform(-6, 6) / 20)
    mix = level * _background_sound(rng, n, rate)
    for label in sorted({c for second in plan.sounding for c in second}):
        gate = _gate(n, rate, [k for k, second in enumerate(plan.sounding) if label in second])
        source = _class_sound(label, rng, n, rate) * gate
        active = np.sqrt(np.mean(source[gate == 1] ** 2))
        mix += source * level * 10 ** (plan.snr_db / 20) / active
    mix /= max(1.0, np.abs(mix).max() / 0.9)
    stereo = np.stack([mix, mix * rng.uniform(0.8, 1.0)], axis=1)
    return stereo[:, :plan.channels].astype(np.float32)


# ---- files ----

def clip_paths(root: Path, task: str, split: str, category: str, name: str) -> dict:
    """Where AVSBench keeps one clip's files under ``root`` (the ``avsbench_data`` folder of the official configs).

    S4: ``Single-source/s4_data/{visual_frames,gt_masks}/<split>/<category>/<name>/<name>_<k>.png``,
    ``audio_wav/<split>/<category>/<name>.wav``, ``audio_log_mel/<split>/<category>/<name>.pkl``.
    MS3: ``Multi-sources/ms3_data/visual_frames/<name>/<name>.mp4_<k>.png`` (no split folder),
    ``gt_masks/<split>/<name>/<name>_<k>.png``, ``audio_wav/<split>/<name>.wav``, ``audio_log_mel/<split>/<name>.pkl``.
    """
    folder, prefix = _TASK_DIRS[task]
    data = Path(root) / folder / f"{prefix}_data"
    sub = Path(split, category) if task == "s4" else Path(split)
    frames_dir = data / "visual_frames" / (sub / name if task == "s4" else Path(name))
    frame_stem = name if task == "s4" else f"{name}.mp4"
    return {
        "frames": [frames_dir / f"{frame_stem}_{k}.png" for k in range(1, FRAMES + 1)],
        "masks": [data / "gt_masks" / sub / name / f"{name}_{k}.png" for k in range(1, FRAMES + 1)],
        "wav": data / "audio_wav" / sub / f"{name}.wav",
        "log_mel": data / "audio_log_mel" / sub / f"{name}.pkl",
    }


def _csv_path(root: Path, task: str) -> Path:
    folder, prefix = _TASK_DIRS[task]
    return Path(root) / folder / f"{prefix}_meta_data.csv"


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> np.ndarray:
    """Write 16-bit PCM; return the int16 samples written."""
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(pcm.shape[1])
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return pcm


def write_clip(root: Path, plan: ClipPlan) -> None:
    """Write one clip's frames, masks (S4 train: the first only, as AVSBench ships), wav and log-mel pickle."""
    paths = clip_paths(root, plan.task, plan.split, plan.category, plan.name)
    mask_count = 1 if plan.task == "s4" and plan.split == "train" else FRAMES
    background = _background(plan.seed, SIZE)
    for k in range(FRAMES):
        image, labels = render_frame(plan, float(k), background=background)
        paths["frames"][k].parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(paths["frames"][k]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if k < mask_count:
            paths["masks"][k].parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(paths["masks"][k]), ground_truth(plan, labels, k))
    for key in ("wav", "log_mel"):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
    pcm = _write_wav(paths["wav"], render_audio(plan), plan.sample_rate)
    examples = waveform_to_examples(pcm, plan.sample_rate)
    if 0 < examples.shape[0] < FRAMES:  # AVSBench pads a short clip by repeating its last example
        examples = np.concatenate([examples] + [examples[-1:]] * (FRAMES - examples.shape[0]))
    with open(paths["log_mel"], "wb") as out:
        dump_log_mel(examples[:FRAMES], out)


def _row(plan: ClipPlan) -> dict:
    return {"name": plan.name, "start_time": 0, "category": plan.category, "split": plan.split}


def _describe(plan: ClipPlan) -> dict:
    """One line of ``synth_clips.jsonl``: what the clip contains, for checks and analysis."""
    info = asdict(plan)
    info["objects"] = [{"class": CLASSES[o.label].name if o.label is not None else None, "shape": o.shape,
                        "rgb": list(o.rgb), "distractor": o.label is None} for o in plan.objects]
    info["sounding"] = [[CLASSES[c].name for c in second] for second in plan.sounding]
    return info


def _merge(path: Path, header: Sequence[str], rows: list[dict], splits: set[str], key: str) -> None:
    """Rewrite ``path`` (csv or jsonl) keeping its rows of other splits and replacing those of ``splits``."""
    kept = []
    if path.exists():
        if path.suffix == ".csv":
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != tuple(header):
                    raise ValueError(f"{path} has columns {reader.fieldnames}, not {list(header)}: it is not an "
                                     f"avs-synth data set of this task; choose another --out")
                kept = list(reader)
        else:
            kept = [json.loads(line) for line in path.read_text().splitlines() if line]
        kept = [r for r in kept if r[key] not in splits]
    if path.suffix == ".csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(header), lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept + rows)
        path.write_text(text.getvalue())
    else:
        path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept + rows))


def split_counts(clips: int, split: str) -> dict[str, int]:
    """How many clips go to each split: all of them to ``split``, or 80/10/10 for ``"all"``."""
    if split != "all":
        return {split: clips}
    held = clips // 10
    return {"train": clips - 2 * held, "val": held, "test": held}


def write_dataset(out: Path, task: str, clips: int, seed: int, split: str = "all",
                  snr_db: tuple[float, float] = DEFAULT_SNR_DB, progress: bool = True) -> list[ClipPlan]:
    """Generate ``clips`` clips into ``out`` (AVSBench layout); returns their plans.

    The metadata csv (and ``synth_clips.jsonl`` beside it) keep the rows of splits not written now, so
    ``--split train`` then ``--split test`` into one folder builds one data set.
    """
    from tqdm import tqdm

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if split != "all" and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or 'all'; got {split!r}")
    if clips < 1:
        raise ValueError(f"clips must be >= 1; got {clips}")
    if not snr_db[0] <= snr_db[1]:
        raise ValueError(f"the SNR range must be LOW <= HIGH (dB); got {snr_db}")
    out = Path(out)
    plans = []
    for split_name, count in split_counts(clips, split).items():
        code = SPLITS.index(split_name)
        for index in range(count):
            rng = np.random.default_rng([seed, TASKS.index(task), code, index])
            plans.append(plan_clip(rng, task, split_name, f"synth{task}_{seed}_{split_name}_{index:05d}", snr_db))
    for plan in tqdm(plans, desc=f"avs-synth {task}", unit="clip", disable=not progress):
        write_clip(out, plan)
    csv_path = _csv_path(out, task)
    written = {p.split for p in plans}
    _merge(csv_path, CSV_COLUMNS[task], [{c: _row(p)[c] for c in CSV_COLUMNS[task]} for p in plans], written, "split")
    _merge(csv_path.with_name("synth_clips.jsonl"), (), [_describe(p) for p in plans], written, "split")
    return plans


# ---- demo ----

def demo_plan(seed: int = 0) -> ClipPlan:
    """A 16 kHz S4 clip with one sounding object (seconds 0, 1 and 3) and a silent distractor of its shape."""
    rng = np.random.default_rng([seed, 99])
    label = int(rng.integers(len(CLASSES)))
    other = int(rng.choice([c for c in range(len(CLASSES)) if c != label]))
    objects = _place(rng, [(CLASSES[label].shape, CLASSES[label].hue, label),
                           (CLASSES[label].shape, CLASSES[other].hue, None)])
    sounding = ((label,), (label,), (), (label,), ())
    return ClipPlan(f"demo_{seed}", "s4", "test", CLASSES[label].name, 16000, 1, 15.0, objects, sounding,
                    int(rng.integers(2 ** 63)))


def render_demo_clip(path: Path, seed: int = 0, fps: float = 8.0, size: int = 448) -> ClipPlan:
    """Write ``demo_plan(seed)`` as an mp4 (H.264 + AAC, ``size`` pixels square) and return the plan."""
    from runtime.render import Mp4Writer

    plan = demo_plan(seed)
    background = _background(plan.seed, size)
    audio = render_audio(plan)
    with Mp4Writer(Path(path), audio_rate=plan.sample_rate, audio_channels=plan.channels, fps=fps) as writer:
        for i in range(int(SECONDS * fps)):
            image, _ = render_frame(plan, i / fps, size, background)
            writer.add_frame(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), i / fps)
            if i == 0:
                writer.add_audio(audio, plan.sample_rate, 0.0)
    return plan
