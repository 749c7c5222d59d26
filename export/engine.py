"""TensorRT engines for an artifact directory: build with a progress bar, a timing cache and a keyed engine cache.

An engine is a raw TensorRT plan (``<graph>.<precision>.engine``, loadable by ``trtexec --loadEngine``) with a
sidecar ``<file>.json`` holding the :class:`EngineKey` it was built under: graph sha256, TensorRT version, GPU
name and compute capability, precision and plugin-library sha256. A matching engine is reused; any mismatch
(another TensorRT, another GPU, a changed graph or plugin, a truncated plan) is rebuilt with a message saying why.

TensorRT is imported lazily: ``tensorrt`` (JetPack / desktop TensorRT) first, then ``tensorrt_rtx``. Everything
but :func:`build_serialized_engine` and the monitor/logger adapters is plain host logic, testable without either.
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional, Sequence

from tqdm import tqdm

PRECISIONS = ("fp32", "fp16")
TENSORRT_MODULES = ("tensorrt", "tensorrt_rtx")
_CU_ATTR_CC_MAJOR, _CU_ATTR_CC_MINOR = 75, 76
_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a graph; the message says which graph and why."""


def file_sha256(path: os.PathLike | str) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_sha256(onnx_path: os.PathLike | str) -> str:
    """sha256 over an ONNX file and its external-data file (``<file>.data``) when there is one."""
    digest = hashlib.sha256()
    for part in (Path(onnx_path), Path(f"{onnx_path}.data")):
        if part.is_file():
            digest.update(file_sha256(part).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for."""
    name: str
    compute_capability: str


def probe_gpu(device: int = 0) -> tuple[Optional[GpuInfo], str]:
    """Ask the CUDA driver (``libcuda``, no toolkit needed) for GPU ``device``: ``(info, "")`` or ``(None, why)``."""
    lib = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return None, "no NVIDIA GPU driver on this machine (libcuda.so.1 not found)"
    rc = lib.cuInit(0)
    if rc != 0:
        return None, f"the CUDA driver found no usable GPU (cuInit returned {rc})"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value <= device:
        return None, f"no CUDA device {device} (the driver reports {count.value})"
    handle = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(handle), device)
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(buf, len(buf), handle)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_ATTR_CC_MAJOR, handle)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_ATTR_CC_MINOR, handle)
    return GpuInfo(buf.value.decode(errors="replace"), f"{major.value}.{minor.value}"), ""


def import_tensorrt(preferred: Sequence[str] = TENSORRT_MODULES) -> tuple[Optional[ModuleType], str]:
    """The first importable TensorRT Python module: ``(module, "")`` or ``(None, why)``."""
    reasons = []
    for name in preferred:
        try:
            return importlib.import_module(name), ""
        except ImportError as exc:
            reasons.append(f"{name}: {exc}")
    return None, "TensorRT's Python package is not installed (" + "; ".join(reasons) + ")"


def tensorrt_version(trt: ModuleType) -> str:
    """'tensorrt 10.3.0' or 'tensorrt_rtx 1.7.1.116': product and version, as the cache key records it."""
    return f"{trt.__name__} {trt.__version__}"


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on; an engine is reused only when every field matches."""
    graph_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    plugin_sha256: str

    def mismatches(self, other: "EngineKey") -> list[str]:
        """Human-readable differences, ``other`` being the key the existing engine was built under."""
        labels = {"graph_sha256": "the ONNX graph changed", "plugin_sha256": "the plugin library changed"}
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                out.append(labels.get(f.name, f"{f.name.replace('_', ' ')} was {theirs!r}, now {mine!r}"))
        return out


class EngineCache:
    """Raw plans plus ``.json`` key sidecars in one directory."""

    def __init__(self, directory: os.PathLike | str):
        self.directory = Path(directory)

    def engine_path(self, graph: str, precision: str) -> Path:
        """Where the engine for ``graph`` at ``precision`` lives."""
        return self.directory / f"{graph}.{precision}.engine"

    @staticmethod
    def key_path(engine: Path) -> Path:
        return engine.with_name(engine.name + ".json")

    def check(self, engine: Path, key: EngineKey) -> tuple[bool, str]:
        """``(True, "")`` when ``engine`` exists, is intact and was built under ``key``; else ``(False, why)``."""
        sidecar = self.key_path(engine)
        if not engine.is_file():
            return False, "no cached engine"
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
            stored = EngineKey(**record["key"])
            plan_sha = record["plan_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return False, f"its key file {sidecar.name} is missing or unreadable ({exc.__class__.__name__})"
        diffs = key.mismatches(stored)
        if diffs:
            return False, "; ".join(diffs)
        if file_sha256(engine) != plan_sha:
            return False, "the plan file is damaged (sha256 differs from the one recorded at build time)"
        return True, ""

    def store(self, engine: Path, plan: bytes, key: EngineKey) -> None:
        """Write the plan and then its sidecar, each atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(engine, plan)
        record = {"key": asdict(key), "plan_sha256": hashlib.sha256(plan).hexdigest()}
        _write_atomic(self.key_path(engine), (json.dumps(record, indent=2) + "\n").encode())

    def get_or_build(self, graph: str, key: EngineKey, build: Callable[[], bytes],
                     say: Callable[[str], None] = print) -> tuple[Path, bool]:
        """The engine for ``graph``: reused if its key matches, else made by ``build()``; ``(path, built)``."""
        engine = self.engine_path(graph, key.precision)
        ok, why = self.check(engine, key)
        if ok:
            say(f"engine {engine.name}: cached, key matches; reusing it")
            return engine, False
        verb = "building" if why == "no cached engine" else "rebuilding"
        say(f"engine {engine.name}: {verb} ({why})")
        self.store(engine, build(), key)
        return engine, True


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class BuildProgress:
    """Host side of TensorRT's ``IProgressMonitor``: one tqdm bar per open build phase, nested by depth.

    ``enabled=None`` shows bars on a terminal only; elsewhere top-level phases print one line each.
    """

    def __init__(self, label: str, stream=None, enabled: Optional[bool] = None):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled if enabled is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.bars: dict[str, tqdm] = {}
        self.depth: dict[str, int] = {}
        self.phases_seen: list[str] = []
        self.cancelled = False

    def phase_start(self, name: str, parent: Optional[str], steps: int) -> None:
        depth = self.depth.get(parent, -1) + 1 if parent else 0
        self.depth[name] = depth
        self.phases_seen.append(name)
        if self.enabled:
            self.bars[name] = tqdm(total=steps, desc=f"{self.label}: {name}", position=depth,
                                   leave=depth == 0, file=self.stream, dynamic_ncols=True)
        elif depth == 0:
            print(f"{self.label}: {name} ({steps} steps)", file=self.stream, flush=True)

    def step_complete(self, name: str, step: int) -> bool:
        bar = self.bars.get(name)
        if bar is not None:
            bar.n = step + 1
            bar.refresh()
        return not self.cancelled

    def phase_finish(self, name: str) -> None:
        bar = self.bars.pop(name, None)
        if bar is not None:
            bar.n = bar.total if bar.total else bar.n
            bar.close()
        self.depth.pop(name, None)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def make_progress_monitor(trt: ModuleType, progress: BuildProgress):
    """A ``trt.IProgressMonitor`` forwarding to ``progress``."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            progress.phase_finish(phase_name)

    return _Monitor()


def make_logger(trt: ModuleType, verbose: bool = False):
    """A ``trt.ILogger`` that keeps errors (they end up in :class:`EngineBuildError`); prints all with ``verbose``."""

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            if verbose:
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return _Logger()


@dataclass(frozen=True)
class BuildOptions:
    """How to build one engine."""
    precision: str = "fp32"
    workspace_gb: float = 2.0
    timing_cache: Optional[Path] = None
    plugin_library: Optional[Path] = None
    fp32_layers: tuple[str, ...] = ()
    verbose: bool = False


def _parser_errors(parser) -> str:
    """The parser's errors, one line per distinct message (first node named, the others counted)."""
    first: dict[str, str] = {}
    count: dict[str, int] = {}
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = err.desc()
        if desc not in first:
            first[desc] = f"node {err.node_name() or err.node()} ({err.node_operator()}): " if err.node() >= 0 else ""
        count[desc] = count.get(desc, 0) + 1
    lines = [f"{first[d]}{d}" + (f" (and {count[d] - 1} more nodes)" if count[d] > 1 else "") for d in first]
    if any("Plugin not found" in d for d in first):
        lines.append("the graph needs our TensorRT plugin: pass --plugin-lib PATH (built by `python -m plugins.build` "
                     "where TensorRT is installed), or export with --scan lowered")
    return "; ".join(lines) or "no parser message"


def onnx_nodes_of_layer(name: str, metadata: str) -> set[str]:
    """The ONNX nodes a TensorRT layer came from: its ``[ONNX Layer: ...]`` metadata (TensorRT >= 10), else its name."""
    nodes = set(_ONNX_LAYER.findall(metadata or ""))
    return nodes or {name}


def _apply_precision(trt: ModuleType, network, config, options: BuildOptions) -> None:
    if options.precision == "fp32":
        return
    if not hasattr(trt.BuilderFlag, "FP16"):
        raise EngineBuildError(f"{tensorrt_version(trt)} has no FP16 builder flag (it builds strongly typed "
                               "networks only); build with --precision fp32")
    config.set_flag(trt.BuilderFlag.FP16)
    keep = set(options.fp32_layers)
    if not keep:
        return
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    floats = (trt.float32, trt.float16)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not onnx_nodes_of_layer(layer.name, getattr(layer, "metadata", "")) & keep:
            continue
        outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floats]
        if not outputs:
            continue
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)


def _load_timing_cache(config, options: BuildOptions, say: Callable[[str], None]):
    data = b""
    if options.timing_cache is not None and options.timing_cache.is_file():
        data = options.timing_cache.read_bytes()
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        say(f"timing cache {options.timing_cache} was made on another GPU or TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)


def build_serialized_engine(trt: ModuleType, onnx_path: Path, options: BuildOptions,
                            progress: Optional[BuildProgress] = None,
                            say: Callable[[str], None] = print) -> bytes:
    """Parse ``onnx_path`` and build a plan (bytes); raises :class:`EngineBuildError` naming what failed."""
    if options.precision not in PRECISIONS:
        raise EngineBuildError(f"unknown precision {options.precision!r}; choose one of {', '.join(PRECISIONS)}")
    logger = make_logger(trt, options.verbose)
    if options.plugin_library is not None:
        if trt.get_plugin_registry().load_library(str(options.plugin_library)) is None:
            raise EngineBuildError(f"TensorRT could not load the plugin library {options.plugin_library}: "
                                   + ("; ".join(logger.errors) or "no message"))
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EngineBuildError(f"TensorRT ({tensorrt_version(trt)}) cannot parse {onnx_path.name}: "
                               f"{_parser_errors(parser)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    _apply_precision(trt, network, config, options)
    rtx = trt.__name__ == "tensorrt_rtx"   # NOTE: TensorRT-RTX has no timing cache (its calls are no-ops)
    if not rtx:
        _load_timing_cache(config, options, say)
    if progress is not None:
        config.progress_monitor = make_progress_monitor(trt, progress)
    try:
        plan = builder.build_serialized_network(network, config)
    finally:
        if progress is not None:
            progress.close()
    if plan is None:
        cancelled = progress is not None and progress.cancelled
        raise EngineBuildError(f"TensorRT failed to build {onnx_path.name}: "
                               + ("cancelled" if cancelled else "; ".join(logger.errors) or "no error message"))
    if not rtx and options.timing_cache is not None:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)
