"""Where COMBO's per-frame Maskige comes from: published files, a segment-everything ONNX model, or a built-in fallback.

Every source answers ``maskige(frame_rgb, timestamp)`` with a uint8 RGB ``[size, size, 3]`` Maskige at the model's
input size (224 for COMBO), painted by :func:`runtime.maskige.paint_maskige` as the official code paints it,
``clip_maskiges(frames_rgb, timestamps)`` with those of a whole recorded clip (deterministically), and
``describe()`` with one line saying what it is. :func:`open_mask_source` turns the command-line value into one
(:func:`parse_mask_source` checks the value without opening anything):

* ``precomputed:DIR``: :class:`PrecomputedMaskige`, the published Maskiges of one video (what COMBO was evaluated
  with on AVSBench); ``maskige_path`` maps an AVSBench frame file to its Maskige file.
* ``onnx:PATH[@HZ]``: :class:`OnnxMaskSource`, any class-agnostic segment-everything model exported to ONNX (its
  contract is in the class docstring), run by a worker thread at most HZ times a second (default 1), the last
  Maskige reused in between.
* ``overseg``: :class:`OversegmentMaskSource`, Felzenszwalb's graph-based over-segmentation (scikit-image): no
  weights, available everywhere, but NOT what COMBO was trained with; its ``describe()`` says so.
"""
from __future__ import annotations

import math
import os
import re
import threading
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

from runtime.maskige import MASKIGE_SIZE, colorize_ids, paint_label_ids, paint_maskige, read_maskige

__all__ = ["MaskSource", "MaskSourceError", "PrecomputedMaskige", "OnnxMaskSource", "OversegmentMaskSource",
           "open_mask_source", "parse_mask_source", "maskige_path", "MASK_SOURCE_FORMS"]

_MASKIGE_SUFFIX = "_mask_color.png"
MASK_SOURCE_FORMS = ("precomputed:DIR (one video's published Maskiges), onnx:PATH[@HZ] (a segment-everything ONNX "
                     "model, refreshed at most HZ times a second, default 1) or overseg (built-in over-segmentation, "
                     "no weights)")


class MaskSourceError(ValueError):
    """A mask source that cannot be opened, or a model it does not fit; the message says why and what to use."""


def _check_frame(frame_rgb: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame_rgb)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 1:
        raise ValueError(f"frame_rgb must be uint8 [H, W, 3] RGB; got {frame.dtype} {list(frame.shape)}")
    return frame


class MaskSource:
    """A Maskige per frame; subclasses implement ``maskige`` and ``describe``, and ``close`` when they hold anything.

    Args:
        size: side of the Maskiges returned (the model's input size).
    """

    def __init__(self, size: int = MASKIGE_SIZE):
        if int(size) < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = int(size)

    def maskige(self, frame_rgb: np.ndarray, timestamp: float) -> np.ndarray:
        """The Maskige for this frame: uint8 RGB ``[size, size, 3]``."""
        raise NotImplementedError

    def clip_maskiges(self, frames_rgb: Sequence[np.ndarray], timestamps: Sequence[float]) -> list[np.ndarray]:
        """The Maskiges of a recorded clip, one per frame, the same whatever the machine's speed; the default asks
        :meth:`maskige` frame by frame."""
        return [self.maskige(frame, float(t)) for frame, t in zip(frames_rgb, timestamps)]

    def describe(self) -> str:
        """One line for logs and the status line: which source, with what settings."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the source holds; the default holds nothing."""

    def __enter__(self) -> "MaskSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- (a) the published Maskiges -------------------------------------------------------------------------------------

def maskige_path(frame_path: Union[str, os.PathLike]) -> Path:
    """The Maskige file COMBO's data registration pairs with an AVSBench frame file.

    * S4 ``.../s4_data/visual_frames/<split>/<cat>/<vid>/<vid>_<i>.png`` ->
      ``.../s4_data/pre_SAM_mask/<split>/<cat>/<vid>/<vid>_<i>_mask_color.png``;
    * MS3 ``.../ms3_data/visual_frames/<vid>/<vid>.mp4_<i>.png`` -> ``.../ms3_data/pre_SAM_mask/<vid>/...``;
    * AVSS ``<root>/<label>/<uid>/frames/<i>.jpg`` (or ``processed_frames/``) ->
      ``<root>/pre_SAM_mask/AVSBench_semantic/<label>/<uid>/processed_frames/<i>_mask_color.png``.

    Raises:
        ValueError: the path is in none of these layouts.
    """
    path = Path(frame_path)
    parts = path.parts
    if "visual_frames" in parts:
        at = len(parts) - 1 - parts[::-1].index("visual_frames")
        return Path(*parts[:at], "pre_SAM_mask", *parts[at + 1:-1], path.stem + _MASKIGE_SUFFIX)
    if path.parent.name in ("frames", "processed_frames") and len(parts) >= 5:
        uid_dir = path.parent.parent
        return (uid_dir.parent.parent / "pre_SAM_mask" / "AVSBench_semantic" / uid_dir.parent.name / uid_dir.name
                / "processed_frames" / (path.stem + _MASKIGE_SUFFIX))
    raise ValueError(f"{path} is not an AVSBench frame path: expected .../visual_frames/.../<frame>.png (S4, MS3) "
                     "or <root>/<label>/<uid>/frames/<i>.jpg (AVSS)")


class PrecomputedMaskige(MaskSource):
    """The published Maskiges of one video (COMBO's Hugging Face release, or files written the same way).

    ``folder`` holds ``<prefix><n>_mask_color.png`` per frame, as the official scripts name them: S4
    ``<vid>_<n>``, MS3 ``<vid>.mp4_<n>`` (n from 1), AVSS ``<n>`` (n from 0). Frame ``i`` of the video (the one
    at ``timestamp = i / fps``; AVSBench frames are 1 s apart) is file ``n = i + 1`` (``n = i`` without a
    prefix). Frame ``i`` is shown from ``i / fps`` until ``(i + 1) / fps``, so any timestamp in that span gets it
    (``Segmenter.segment_clip``'s training timestamps, 0.975 s + 0.96 s per frame, fall in their frame's second
    for up to 25 frames). Files are read with :func:`runtime.maskige.read_maskige` (Pillow), so ids past the
    palette read as COMBO's loader read them.

    Args:
        folder: one video's Maskige folder, e.g. ``s4_data/pre_SAM_mask/test/<category>/<vid>/``.
        fps: frame rate of the timestamps passed to :meth:`maskige`.
        size: side of the Maskiges returned (files of another size are resized with Pillow's nearest rule).
    """

    def __init__(self, folder: Union[str, os.PathLike], *, fps: float = 1.0, size: int = MASKIGE_SIZE):
        super().__init__(size)
        self.folder = Path(folder)
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"Maskige folder {self.folder} does not exist (precomputed:DIR wants one "
                                    "video's folder of *_mask_color.png files, e.g. s4_data/pre_SAM_mask/test/"
                                    "<category>/<video>/)")
        names = [re.fullmatch(r"(.*?)(\d+)" + re.escape(_MASKIGE_SUFFIX), p.name) for p in self.folder.iterdir()]
        prefixes = sorted({m.group(1) for m in names if m})
        if len(prefixes) != 1:
            found = f"Maskiges of {len(prefixes)} videos ({', '.join(prefixes)[:200]})" if prefixes else "none"
            raise ValueError(f"{self.folder} must hold the *_mask_color.png files of one video; found {found}")
        self.prefix = prefixes[0]
        self.first = 1 if self.prefix else 0
        self.frames = sum(1 for m in names if m)

    def path(self, index: int) -> Path:
        """The file of frame ``index`` (0-based)."""
        return self.folder / f"{self.prefix}{index + self.first}{_MASKIGE_SUFFIX}"

    def maskige(self, frame_rgb: np.ndarray, timestamp: float) -> np.ndarray:
        _check_frame(frame_rgb)
        index = math.floor(float(timestamp) * self.fps + 1e-6)  # the frame shown at that time
        path = self.path(index)
        if index < 0 or not path.is_file():
            raise FileNotFoundError(f"no precomputed Maskige for frame {index} (t = {timestamp:.3f} s at "
                                    f"{self.fps:g} fps): missing {path}")
        return read_maskige(path, self.size)

    def describe(self) -> str:
        return f"precomputed Maskiges: {self.frames} files in {self.folder} ({self.fps:g} fps)"


# -- (b) a segment-everything model in ONNX --------------------------------------------------------------------------

_IMAGE_TYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}
_MASK_TYPES = ("tensor(bool)", "tensor(uint8)", "tensor(float)", "tensor(float16)")
_SCORE_TYPES = ("tensor(float)", "tensor(float16)")


def _static(dim) -> Optional[int]:
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxMaskSource(MaskSource):
    """A class-agnostic segment-everything model exported to ONNX, on ONNX Runtime's CPU provider.

    The model's contract (checked when the file is opened):

    * **one input**: the frame, ``[1, 3, H, W]`` RGB (NCHW), values 0..255, not normalised (normalise inside the
      graph), element type uint8, float32 or float16. Static ``H``/``W`` make the source resize the frame to them
      (bilinear); dynamic ones get the frame at its own size.
    * **output 0, masks**: ``[K, H', W']`` or ``[1, K, H', W']``, any K (0 too) and any H', W'; bool or uint8
      (nonzero = inside), or float probabilities (inside where > ``mask_threshold``). Pass logits through a
      sigmoid in the graph.
    * **output 1, scores** (optional): ``[K]`` or ``[1, K]`` float in [0, 1]; masks scoring below
      ``score_threshold`` are dropped before painting.

    The first :meth:`maskige` runs the model in the caller's thread. After that a worker thread refreshes the
    Maskige from the newest frame whenever ``1 / rate_hz`` seconds of frame timestamps have passed since the last
    refresh began and no refresh is running; :meth:`maskige` never waits and returns the last painted Maskige (a
    refresh it starts shows from a later call on). A failed refresh is raised by the next :meth:`maskige`.
    :meth:`clip_maskiges` follows the same rate but paints in the caller's thread, so a recorded clip gets the same
    Maskiges on any machine; it leaves the live state alone.

    Args:
        path: the ``.onnx`` file.
        rate_hz: refreshes per second of frame time, at most.
        size: side of the Maskiges returned.
        mask_threshold: probability above which a float mask pixel is inside.
        score_threshold: the lowest score kept, when the model has a scores output.
    """

    def __init__(self, path: Union[str, os.PathLike], rate_hz: float = 1.0, *, size: int = MASKIGE_SIZE,
                 mask_threshold: float = 0.5, score_threshold: float = 0.5):
        super().__init__(size)
        import onnxruntime as ort

        self.path = Path(path)
        if not rate_hz > 0 or math.isinf(rate_hz):
            raise ValueError(f"rate_hz must be a positive number of refreshes per second, got {rate_hz}")
        self.rate_hz, self.mask_threshold, self.score_threshold = float(rate_hz), mask_threshold, score_threshold
        if not self.path.is_file():
            raise FileNotFoundError(f"segment-everything model {self.path} does not exist (onnx:PATH wants an .onnx "
                                    "file; see runtime.mask_sources.OnnxMaskSource for its inputs and outputs)")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types)
            raise ValueError(f"ONNX Runtime cannot load {self.path}: {str(exc).strip().splitlines()[0]}") from None
        self._check_model()
        self.refreshes = 0
        self.refresh_seconds = 0.0  # model + painting time of the latest refresh
        self._cond = threading.Condition()
        self._last: Optional[np.ndarray] = None
        self._last_start = 0.0
        self._pending: Optional[np.ndarray] = None
        self._busy = self._closed = False
        self._error: Optional[BaseException] = None
        self._worker = threading.Thread(target=self._work, name=f"maskige-{self.path.name}", daemon=True)
        self._worker.start()

    def _check_model(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        contract = "see runtime.mask_sources.OnnxMaskSource for the expected inputs and outputs"
        if len(inputs) != 1:
            raise ValueError(f"{self.path.name} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                             f"a segment-everything model takes one image [1, 3, H, W]: {contract}")
        image = inputs[0]
        shape = image.shape
        nhwc = len(shape) == 4 and _static(shape[3]) == 3 and _static(shape[1]) != 3
        if len(shape) != 4 or nhwc or _static(shape[1]) not in (None, 3) or _static(shape[0]) not in (None, 1):
            raise ValueError(f"{self.path.name}: input {image.name} is {image.shape}; expected [1, 3, H, W] RGB "
                             f"(NCHW): {contract}")
        if image.type not in _IMAGE_TYPES:
            raise ValueError(f"{self.path.name}: input {image.name} is {image.type}; expected uint8, float or "
                             f"float16 RGB values 0..255: {contract}")
        if not 1 <= len(outputs) <= 2:
            raise ValueError(f"{self.path.name} has {len(outputs)} outputs; expected masks and optional scores: "
                             f"{contract}")
        masks = outputs[0]
        if len(masks.shape) not in (3, 4) or masks.type not in _MASK_TYPES:
            raise ValueError(f"{self.path.name}: output 0 ({masks.name}) is {masks.type} {masks.shape}; expected "
                             f"masks [K, H, W] or [1, K, H, W], bool, uint8 or float: {contract}")
        if len(outputs) == 2 and (len(outputs[1].shape) not in (1, 2) or outputs[1].type not in _SCORE_TYPES):
            raise ValueError(f"{self.path.name}: output 1 ({outputs[1].name}) is {outputs[1].type} "
                             f"{outputs[1].shape}; expected scores [K] or [1, K], float: {contract}")
        self._input, self._dtype = image.name, _IMAGE_TYPES[image.type]
        self._hw = (_static(image.shape[2]), _static(image.shape[3]))
        self._outputs = [o.name for o in outputs]

    def masks(self, frame_rgb: np.ndarray) -> np.ndarray:
        """The model's kept masks for one frame: bool ``[K, H', W']`` (synchronous; no painting)."""
        frame = _check_frame(frame_rgb)
        height, width = self._hw
        if (height or frame.shape[0], width or frame.shape[1]) != frame.shape[:2]:
            frame = cv2.resize(frame, (width or frame.shape[1], height or frame.shape[0]),
                               interpolation=cv2.INTER_LINEAR)
        feed = np.ascontiguousarray(frame.transpose(2, 0, 1)[None]).astype(self._dtype)
        values = self.session.run(self._outputs, {self._input: feed})
        masks = values[0][0] if values[0].ndim == 4 else values[0]
        if masks.ndim != 3:
            raise ValueError(f"{self.path.name} returned masks of shape {list(values[0].shape)}; expected [K, H, W] "
                             "or [1, K, H, W]")
        masks = masks > self.mask_threshold if masks.dtype.kind == "f" else masks != 0
        if len(values) == 2:
            scores = values[1].reshape(-1)
            if scores.shape[0] != masks.shape[0]:
                raise ValueError(f"{self.path.name} returned {scores.shape[0]} scores for {masks.shape[0]} masks")
            masks = masks[scores >= self.score_threshold]
        return masks

    def _refresh(self, frame: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        maskige = paint_maskige(self.masks(frame), self.size)
        self.refresh_seconds = time.perf_counter() - start
        return maskige

    def maskige(self, frame_rgb: np.ndarray, timestamp: float) -> np.ndarray:
        frame = _check_frame(frame_rgb)
        timestamp = float(timestamp)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"maskige() on a closed OnnxMaskSource ({self.path.name}); open a new one")
            if self._error is not None:
                error, self._error = self._error, None
                raise RuntimeError(f"refreshing the Maskige with {self.path.name} failed: {error}") from error
            if self._last is None:
                self._last, self._last_start = self._refresh(frame), timestamp
                self.refreshes += 1
                return self._last
            # A timestamp before the last refresh means a new stream: refresh at once.
            due = not (0 <= timestamp - self._last_start < 1.0 / self.rate_hz)
            if due and not self._busy and self._pending is None:
                self._pending, self._last_start = frame.copy(), timestamp
                self._cond.notify_all()
            return self._last

    def clip_maskiges(self, frames_rgb: Sequence[np.ndarray], timestamps: Sequence[float]) -> list[np.ndarray]:
        frames = [_check_frame(frame) for frame in frames_rgb]
        out: list[np.ndarray] = []
        start = 0.0
        for frame, timestamp in zip(frames, map(float, timestamps)):
            if not out or not 0 <= timestamp - start < 1.0 / self.rate_hz:
                out.append(self._refresh(frame))
                start = timestamp
            else:
                out.append(out[-1])
        return out

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until no refresh is pending or running; False if ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or (self._pending is None and not self._busy), timeout)

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._pending is not None)
                if self._closed:
                    return
                frame, self._pending, self._busy = self._pending, None, True
            try:
                maskige = self._refresh(frame)
            except Exception as exc:  # noqa: BLE001  (raised to the caller by the next maskige())
                with self._cond:
                    self._error, self._busy = exc, False
                    self._cond.notify_all()
                continue
            with self._cond:
                self._last, self._busy = maskige, False
                self.refreshes += 1
                self._cond.notify_all()

    def describe(self) -> str:
        height, width = self._hw
        shape = f"{height or 'H'}x{width or 'W'}"
        return (f"onnx segment-everything model {self.path} (input {shape} {np.dtype(self._dtype).name}, CPU), "
                f"refreshed at most {self.rate_hz:g} Hz, last Maskige reused in between")

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._worker.join(timeout=60)


# -- (c) the built-in fallback ---------------------------------------------------------------------------------------

class OversegmentMaskSource(MaskSource):
    """Felzenszwalb-Huttenlocher graph-based over-segmentation (scikit-image) of each frame, painted as a Maskige.

    Needs no weights, so it runs anywhere, but its segments are colour regions, not the object and part masks of
    the segment-everything model COMBO was trained with: expect lower accuracy unless COMBO is fine-tuned on it.
    The frame is resized to ``size`` (area filter) and segmented there, every frame.

    Args:
        size: side of the Maskiges returned (and of the segmented frame).
        scale: Felzenszwalb's scale (larger -> fewer, larger segments; the defaults give tens of segments on
            avs-synth frames).
        sigma: Gaussian pre-smoothing, pixels. Off by default: the area-filter resize already smooths, and a blurred
            sharp edge becomes one-pixel stripe segments of its own.
        min_size: smallest segment, pixels (at ``size``).
    """

    def __init__(self, size: int = MASKIGE_SIZE, *, scale: float = 1000.0, sigma: float = 0.0, min_size: int = 200):
        super().__init__(size)
        try:
            from skimage.segmentation import felzenszwalb
        except ImportError:
            raise ImportError("the overseg Maskige source needs scikit-image: pip install scikit-image") from None
        self._felzenszwalb = felzenszwalb
        self.scale, self.sigma, self.min_size = float(scale), float(sigma), int(min_size)

    def labels(self, frame_rgb: np.ndarray) -> np.ndarray:
        """The segment label map of one frame at ``size``: int ``[size, size]``, labels 0..K-1."""
        frame = _check_frame(frame_rgb)
        if frame.shape[:2] != (self.size, self.size):
            frame = cv2.resize(frame, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return self._felzenszwalb(frame, scale=self.scale, sigma=self.sigma, min_size=self.min_size)

    def maskige(self, frame_rgb: np.ndarray, timestamp: float) -> np.ndarray:
        return colorize_ids(paint_label_ids(self.labels(frame_rgb), self.size))

    def describe(self) -> str:
        return (f"overseg FALLBACK: Felzenszwalb over-segmentation (scikit-image; scale {self.scale:g}, sigma "
                f"{self.sigma:g}, min_size {self.min_size}), no segment-everything model")


def parse_mask_source(spec: str) -> tuple[str, Optional[Path], Optional[float]]:
    """Check a command-line value without opening anything: ``(kind, path, rate_hz)``, kind ``precomputed``,
    ``onnx`` or ``overseg``.

    Raises:
        ValueError: the value is in none of the forms (the message lists them).
        FileNotFoundError: the folder or model it names does not exist.
    """
    kind, _, value = str(spec).partition(":")
    if kind == "precomputed" and value:
        if not Path(value).is_dir():
            raise FileNotFoundError(f"mask source {spec!r}: Maskige folder {value} does not exist (precomputed:DIR "
                                    "wants one video's folder of *_mask_color.png files)")
        return kind, Path(value), None
    if kind == "onnx" and value:
        path, at, rate = value.rpartition("@")
        if not at or Path(value).is_file():
            path, rate_hz = value, 1.0
        else:
            try:
                rate_hz = float(rate)
            except ValueError:
                raise ValueError(f"mask source {spec!r}: {rate!r} after '@' is not a rate; write onnx:PATH@HZ, e.g. "
                                 f"onnx:{path}@2") from None
            if not rate_hz > 0 or math.isinf(rate_hz):
                raise ValueError(f"mask source {spec!r}: the rate must be a positive number of refreshes per "
                                 f"second, got {rate}")
        if not Path(path).is_file():
            raise FileNotFoundError(f"mask source {spec!r}: segment-everything model {path} does not exist "
                                    "(onnx:PATH wants an .onnx file)")
        return kind, Path(path), rate_hz
    if spec == "overseg":
        return "overseg", None, None
    raise ValueError(f"unknown mask source {spec!r}: use {MASK_SOURCE_FORMS}")


def open_mask_source(spec: str, size: int = MASKIGE_SIZE) -> MaskSource:
    """A mask source from its command-line value: ``precomputed:DIR``, ``onnx:PATH[@HZ]`` or ``overseg``."""
    kind, path, rate_hz = parse_mask_source(spec)
    if kind == "precomputed":
        return PrecomputedMaskige(path, size=size)
    if kind == "onnx":
        return OnnxMaskSource(path, rate_hz, size=size)
    return OversegmentMaskSource(size)
