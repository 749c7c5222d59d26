"""``manifest.json``: the one file that tells the runtime everything about an exported artifact directory.

``python -m export.build_engine`` writes it (through :func:`write_manifest`); the runtime reads it with
:func:`load_manifest` and needs nothing else: graph files and their tensors, preprocessing constants, output
semantics, streaming layout, validation results and engines. The schema is versioned (``schema_version``); a
manifest of another version, or a missing one, raises :class:`ManifestError` naming the command that rebuilds it.

An artifact is something users copy between machines, so nothing in it is trusted: every path the manifest names
must be relative and resolve (symlinks included) inside the artifact directory, and every file it names must
match the sha256 recorded in ``files`` (filled by :func:`write_manifest`) before anything reads it.
This module must never import torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"
GRAPH_ROLES = ("full", "encoder", "temporal", "decoder")
PRECISIONS = ("fp32", "fp16", "int8")
REDUCED_PRECISIONS = PRECISIONS[1:]
WINDOW_FILLS = ("leading", "repeat-oldest")  # StreamingSpec.fill
REBUILD_COMMAND = "python -m export.build_engine --model {model} --out {out}"


class ManifestError(ValueError):
    """A manifest that is missing, unreadable, of another schema version, or inconsistent with its directory."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: ``shape`` holds ints (static) or strings (named dynamic dims)."""
    name: str
    shape: list[Union[int, str]]
    dtype: str


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the artifact (``file`` relative to the artifact directory; ``sha256`` covers the file and
    its external data)."""
    role: str
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    external_data: Optional[str] = None

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``."""
        return _by_name(self.inputs, name, f"graph {self.role!r} input")

    def output(self, name: str) -> TensorSpec:
        """The output called ``name``."""
        return _by_name(self.outputs, name, f"graph {self.role!r} output")


@dataclass(frozen=True)
class FileDigest:
    """A file used to make the artifact, and its sha256."""
    path: str
    sha256: str


@dataclass(frozen=True)
class ModelInfo:
    """Which model: registry ``name`` (variant), family, setting, backbone, and where its weights came from.

    Without a checkpoint the weights are random, drawn after ``torch.manual_seed(weights_seed)``.
    """
    name: str
    family: str
    setting: str
    backbone: str
    checkpoint: Optional[FileDigest]
    vggish_checkpoint: Optional[FileDigest]
    random_weights: bool
    weights_seed: int
    gumbel: str


@dataclass(frozen=True)
class VideoSpec:
    """Frame preprocessing: resize to ``resolution`` squared, RGB in [0, 1], then ``(x - mean) / std``.

    The model was trained on ``frames_per_clip`` frames sampled at ``frame_rate_hz`` (1 frame per second).
    """
    resolution: int
    channel_order: str
    resize: str
    value_scale: float
    mean: list[float]
    std: list[float]
    layout: str
    frames_per_clip: int
    frame_rate_hz: float


@dataclass(frozen=True)
class AudioSpec:
    """VGGish log-mel front end: waveform -> ``[n, 1, example_frames, mel_bins]`` examples, one per video frame."""
    sample_rate: int
    mono: str
    int16_scale: float
    window_length: int
    hop_length: int
    fft_length: int
    window: str
    spectrum: str
    centered: bool
    mel_bins: int
    mel_min_hz: float
    mel_max_hz: float
    mel_scale: str
    log_offset: float
    example_frames: int
    example_hop_frames: int
    example_seconds: float
    layout: str


@dataclass(frozen=True)
class OutputSpec:
    """What the logits mean: ``binary`` (sigmoid > threshold) or ``semantic`` (argmax over classes)."""
    kind: str
    num_classes: int
    activation: str
    threshold: Optional[float]
    size: list[int]
    class_names: list[str]
    palette: list[list[int]]


@dataclass(frozen=True)
class StreamingSpec:
    """How the split graphs compose: encoder per new frame, temporal on the window, decoder on the newest frame.

    ``carry`` lists the encoder outputs kept per frame in a ring buffer of ``window`` entries; the temporal
    graph's outputs are sliced at ``decode_index`` (the newest frame) before the decoder. ``fill`` says how a
    window holding k < ``window`` frames fills the T slots: ``leading`` (causal models: the k frames first, zeros
    after, row k-1 decoded: exact) or ``repeat-oldest`` (non-causal models: the oldest frame repeated in front,
    the newest in the last slot: exact once the window is full). Manifests without it mean ``leading``.
    """
    window: int
    encoder_frames: int
    decoder_frames: int
    decode_index: int
    carry: list[str]
    frame_rate_hz: float
    fill: str = "leading"


@dataclass(frozen=True)
class MaskigeSpec:
    """A model's second image input (COMBO): per frame, a "Maskige" painted from class-agnostic masks
    (``runtime.maskige``) by a mask source (``runtime.mask_sources``), normalised like the frames (``video``).

    Args:
        input: its name on the full and encoder graphs.
        trained_with: the masks the weights were trained on, in words (the official ones: Semantic-SAM's).
        default_source: the ``--mask-source`` value the runtime uses when none is given (announced).
    """
    input: str
    trained_with: str
    default_source: str


@dataclass(frozen=True)
class ValidationRecord:
    """One comparison run at export time (``candidate`` vs ``reference``) and its verdict."""
    graph: str
    candidate: str
    reference: str
    max_abs_diff: float
    mean_abs_diff: float
    mask_agreement: Optional[float]
    atol: float
    rtol: float
    passed: bool
    seed: int


@dataclass(frozen=True)
class Fp16Report:
    """The ONNX-Runtime-side fp16 sensitivity check: module groups that must stay fp32, and the resulting error.

    Errors are ``mean |logits_fp16 - logits_fp32| / mean |logits_fp32|``; ``group_errors`` has each group alone
    in fp16. ``keep_fp32_nodes`` lists, per graph role, the ONNX nodes its engine keeps fp32.
    """
    graph: str
    method: str
    budget: float
    group_errors: dict[str, float]
    keep_fp32_groups: list[str]
    keep_fp32_nodes: dict[str, list[str]]
    all_fp16_error: float
    mixed_error: float
    mixed_mask_agreement: float


@dataclass(frozen=True)
class AccuracyRecord:
    """A precision measured against fp32 on held-out clips, through the streaming graphs as the runtime runs them.

    ``fp32`` and ``reduced`` hold ``M_J`` and ``M_F`` against the ground truth (empty without one);
    ``mask_agreement`` is the fraction of mask pixels equal to fp32's; ``foreground_iou`` the mean per-frame IoU of
    the two masks' foreground; ``logits_error`` is ``mean |logits - logits_fp32| / mean |logits_fp32|``.
    """
    data: str
    clips: int
    frames: int
    fp32: dict[str, float]
    reduced: dict[str, float]
    mask_agreement: float
    foreground_iou: float
    logits_error: float


@dataclass(frozen=True)
class CalibrationRecord:
    """Where the INT8 ranges came from: the data, how many clips and frames, and the range method."""
    data: str
    clips: int
    frames: int
    method: str


@dataclass(frozen=True)
class PrecisionRecord:
    """A reduced precision the artifact was checked for (see ``python -m calibration``).

    ``graphs`` are the Q/DQ graphs of ``int8`` by role (same tensors as the fp32 ones); ``fp16`` has none (its
    engines are built from the fp32 graphs). ``backends`` run it; ``keep_fp32`` lists, per role, the nodes left
    in fp32 (the scan always; for INT8, the module groups the sensitivity sweep found harmful, named in
    ``keep_fp32_groups``; ``group_errors`` has each group's mask disagreement when alone in the reduced
    precision). ``passed`` says whether ``accuracy`` is within ``bounds`` (``M_J`` drop, ``mask_agreement``).
    """
    precision: str
    method: str
    backends: list[str]
    graphs: dict[str, GraphSpec]
    keep_fp32_groups: list[str]
    keep_fp32: dict[str, list[str]]
    group_errors: dict[str, float]
    calibration: Optional[CalibrationRecord]
    accuracy: AccuracyRecord
    bounds: dict[str, float]
    passed: bool


@dataclass(frozen=True)
class EngineRecord:
    """A TensorRT engine (raw plan) built from one graph, with the cache key it was built under."""
    graph: str
    file: str
    precision: str
    key: dict[str, str]


@dataclass(frozen=True)
class EngineStatus:
    """Whether engines were built: ``built`` is False with a ``reason`` when the step was skipped."""
    built: bool
    reason: str
    tensorrt: Optional[str] = None
    timing_cache: Optional[str] = None
    plugin_library: Optional[str] = None
    engines: list[EngineRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to run an artifact directory; see the module docstring."""
    schema_version: int
    model: ModelInfo
    opset: int
    scan: str
    precision: str
    tools: dict[str, str]
    graphs: dict[str, GraphSpec]
    video: VideoSpec
    audio: AudioSpec
    output: OutputSpec
    streaming: StreamingSpec
    validation: list[ValidationRecord]
    fp16: Optional[Fp16Report]
    engine: EngineStatus
    created_utc: str
    files: dict[str, str] = field(default_factory=dict)
    precisions: dict[str, PrecisionRecord] = field(default_factory=dict)
    maskige: Optional[MaskigeSpec] = None

    def graph(self, role: str, precision: str = "fp32") -> GraphSpec:
        """The graph with ``role`` ('full', 'encoder', 'temporal' or 'decoder'); for ``int8``, its Q/DQ graph where
        it has one (a graph left wholly in fp32 has none)."""
        record = self.precisions.get(precision)
        if record is not None and role in record.graphs:
            return record.graphs[role]
        if role not in self.graphs:
            raise ManifestError(f"manifest has no {role!r} graph (it has {', '.join(self.graphs)})")
        return self.graphs[role]

    @property
    def validated(self) -> bool:
        """True when export-time validation ran and every comparison passed."""
        return bool(self.validation) and all(v.passed for v in self.validation)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return dataclasses.asdict(self)


def _by_name(specs: list[TensorSpec], name: str, what: str) -> TensorSpec:
    for spec in specs:
        if spec.name == name:
            return spec
    raise ManifestError(f"no {what} named {name!r} (known: {', '.join(s.name for s in specs)})")


def _parse(tp: Any, value: Any, where: str) -> Any:
    """Build ``tp`` (dataclass, Optional, list, dict or scalar type) from JSON ``value``; errors name ``where``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _parse(option, value, where)
            except ManifestError as exc:
                errors.append(str(exc))
        raise ManifestError(errors[0] if len(errors) == 1 else f"{where}: unexpected value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_parse(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {str(k): _parse(item, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            path = f"{where}.{f.name}" if where else f.name
            if f.name in value:
                kwargs[f.name] = _parse(hints[f.name], value[f.name], path)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ManifestError(f"{path}: required field missing")
        return tp(**kwargs)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is Any or (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        return value
    raise ManifestError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def manifest_from_dict(data: dict[str, Any]) -> Manifest:
    """Validate and build a :class:`Manifest` from parsed JSON (the schema version must match)."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise ManifestError(f"manifest schema_version is {version!r}; this avs-edge reads {SCHEMA_VERSION}")
    manifest = _parse(Manifest, data, "")
    if manifest.streaming.fill not in WINDOW_FILLS:
        raise ManifestError(f"streaming.fill: unknown window fill {manifest.streaming.fill!r} (expected one of "
                            f"{', '.join(WINDOW_FILLS)}); this avs-edge is older than the artifact")
    for role, graph in manifest.graphs.items():
        if role not in GRAPH_ROLES or graph.role != role:
            raise ManifestError(f"graphs.{role}: unknown graph role (expected one of {', '.join(GRAPH_ROLES)})")
    for precision, record in manifest.precisions.items():
        if precision not in REDUCED_PRECISIONS or record.precision != precision:
            raise ManifestError(f"precisions.{precision}: unknown precision (expected one of "
                                f"{', '.join(REDUCED_PRECISIONS)})")
        for role, graph in record.graphs.items():
            if role not in manifest.graphs or graph.role != role:
                raise ManifestError(f"precisions.{precision}.graphs.{role}: no fp32 graph of that role")
    return manifest


def _rebuild_hint(model: str, directory: Path) -> str:
    return "rebuild it with: " + REBUILD_COMMAND.format(model=model, out=directory)


def named_files(manifest: Manifest) -> dict[str, str]:
    """Every file the manifest names, relative path -> the field naming it (``graphs.decoder.file``, ...)."""
    named = {}
    for role, graph in manifest.graphs.items():
        named[graph.file] = f"graphs.{role}.file"
        if graph.external_data:
            named[graph.external_data] = f"graphs.{role}.external_data"
    for precision, record in manifest.precisions.items():
        for role, graph in record.graphs.items():
            named[graph.file] = f"precisions.{precision}.graphs.{role}.file"
            if graph.external_data:
                named[graph.external_data] = f"precisions.{precision}.graphs.{role}.external_data"
    engine = manifest.engine
    for index, record in enumerate(engine.engines):
        named[record.file] = f"engine.engines[{index}].file"
    if engine.timing_cache:
        named[engine.timing_cache] = "engine.timing_cache"
    if engine.plugin_library:
        named[engine.plugin_library] = "engine.plugin_library"
    return named


def confined_path(directory: Union[str, os.PathLike], name: str, where: str) -> Path:
    """``directory / name`` if ``name`` is a plain relative path that resolves inside ``directory``.

    Absolute paths, ``..`` components, backslashes, non-normalised forms and symlinks leading out of the
    directory are refused with a :class:`ManifestError` naming the manifest field ``where``.
    """
    problem = None
    if not isinstance(name, str) or not name or name in (".", ".."):
        problem = "is empty"
    elif "\\" in name or "\x00" in name:
        problem = "contains a backslash or NUL"
    elif posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):
        problem = "is absolute"
    elif ".." in name.split("/"):
        problem = "climbs out with '..'"
    elif posixpath.normpath(name) != name:
        problem = "is not in normal form"
    root = Path(directory).resolve()
    path = root / name if problem is None else None
    if path is not None and not path.resolve().is_relative_to(root):
        problem = "resolves (through a symlink) outside the artifact directory"
    if problem:
        raise ManifestError(f"{where}: path {name!r} {problem}; every file of an artifact must lie inside its "
                            f"directory {root}")
    return path


def _check_paths(manifest: Manifest, path: Path) -> dict[str, str]:
    """Confine every named path and every ``files`` entry; returns :func:`named_files`."""
    named = named_files(manifest)
    for name, where in named.items():
        confined_path(path, name, where)
    for name in manifest.files:
        confined_path(path, name, f"files[{name!r}]")
    return named


def _verify_files(manifest: Manifest, path: Path, named: dict[str, str], hint: str) -> None:
    """Every named file must be recorded in ``files`` and match its sha256 (cached by size, times and inode)."""
    from runtime.integrity import digests

    unrecorded = [n for n in named if n not in manifest.files]
    if unrecorded:
        raise ManifestError(f"{path / MANIFEST_NAME} records no sha256 for {', '.join(unrecorded)} "
                            f"({', '.join(named[n] for n in unrecorded)}), so its integrity cannot be checked; {hint}")
    actual = digests([path / n for n in named])
    for name, where in named.items():
        if actual[path / name] != manifest.files[name]:
            raise ManifestError(f"{path / name} ({where}) does not match the sha256 recorded in {MANIFEST_NAME}: "
                                f"it was changed or corrupted after export; do not run it. {hint}")


def load_manifest(directory: Union[str, os.PathLike], allow_unvalidated: bool = False) -> Manifest:
    """Read ``<directory>/manifest.json`` (or the manifest file itself), checking version, paths and file digests.

    Every path must stay inside the directory and every named file must match its recorded sha256. An artifact
    whose export-time validation failed is refused unless ``allow_unvalidated`` (for inspection).
    """
    path = Path(directory)
    if path.name == MANIFEST_NAME and not path.is_dir():
        path = path.parent
    file = path / MANIFEST_NAME
    if not file.is_file():
        where = f"no {MANIFEST_NAME} in {path}" if path.is_dir() else f"artifact directory {path} does not exist"
        raise ManifestError(f"{where}; build it with: " + REBUILD_COMMAND.format(model="selm", out=path))
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {file}: {exc}; {_rebuild_hint('selm', path)}") from None
    model = "selm"
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        model = str(data["model"].get("name", model))
    hint = _rebuild_hint(model, path)
    try:
        manifest = manifest_from_dict(data)
        named = _check_paths(manifest, path)
    except ManifestError as exc:
        raise ManifestError(f"{file}: {exc}; {hint}") from None
    for name, where in named.items():
        if not (path / name).is_file():
            role = where.split(".")[1] if where.startswith("graphs.") else None
            what = f"{role} graph" if role else where
            raise ManifestError(f"{file} lists {name} ({what}) but {path / name} is missing; {hint}")
    if not (manifest.validated or allow_unvalidated):
        failed = ", ".join(v.graph for v in manifest.validation if not v.passed) or "none recorded"
        raise ManifestError(f"{file}: this export failed validation against PyTorch ({failed}); do not run it. "
                            f"Re-export and read the validation lines: {REBUILD_COMMAND.format(model=model, out=path)}")
    _verify_files(manifest, path, named, hint)
    return manifest


def write_manifest(manifest: Manifest, directory: Union[str, os.PathLike]) -> Path:
    """Write ``manifest.json`` into ``directory`` (atomically), recording the sha256 of every file it names.

    Returns the path written. A named file that is missing, or a path that leaves the directory, raises.
    """
    from runtime.integrity import digests

    directory = Path(directory)
    manifest_from_dict(manifest.to_dict())
    named = named_files(manifest)
    for name, where in named.items():
        if not confined_path(directory, name, where).is_file():
            raise ManifestError(f"{where}: {directory / name} does not exist")
    actual = digests([directory / n for n in named])
    manifest = dataclasses.replace(manifest, files={n: actual[directory / n] for n in sorted(named)})
    path = directory / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
