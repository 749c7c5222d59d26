"""Building TensorRT engines: parse ONNX, configure the builder (fp16 layer pinning, int8 from Q/DQ graphs, timing
cache), report progress.

The engine key, the keyed engine cache and TensorRT/GPU discovery live on the runtime side
(:mod:`runtime.engine_cache`, :mod:`runtime.gpu`), so the builder and the runtime decide alike. Everything here but
:func:`build_serialized_engine` and the monitor/logger adapters is plain host logic, testable without TensorRT.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

from tqdm import tqdm

from runtime.engine_cache import tensorrt_version, write_atomic
from runtime.manifest import PRECISIONS

_ONNX_LAYER = re.compile(r"\[ONNX Layer: ([^\]]+)\]")
#: What to do about TensorRT's messages on Q/DQ graphs (substring of the message -> advice), for quantize_static users.
_QDQ_ADVICE = (
    ("Non-zero zero point", "TensorRT takes symmetric signed int8 only: quantize with activation_type=QInt8, "
                            "weight_type=QInt8 and extra_options ActivationSymmetric=True, WeightSymmetric=True"),
    ("has type Int32 but must have type", "TensorRT rejects the int32 bias Q/DQ: quantize with extra_options "
                                          "QuantizeBias=False"),
    ("Quantized constant", "quantize the inputs of weighted layers only (quantize_static's op_types_to_quantize, "
                           "e.g. Conv, MatMul, Gemm): TensorRT refuses a quantized constant feeding an elementwise "
                           "layer"),
)


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a graph; the message says which graph and why."""


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
    """The parser's errors, one line per distinct message (first node named, the others counted), then advice on
    what they say about Q/DQ nodes."""
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
    return "; ".join(lines + _qdq_advice(first)) or "no parser message"


def _qdq_advice(messages) -> list[str]:
    """Advice for the TensorRT messages about Q/DQ graphs among ``messages``."""
    return [advice for marker, advice in _QDQ_ADVICE if any(marker in m for m in messages)]


def onnx_nodes_of_layer(name: str, metadata: str) -> set[str]:
    """The ONNX nodes a TensorRT layer came from: its ``[ONNX Layer: ...]`` metadata (TensorRT >= 10), else its name."""
    nodes = set(_ONNX_LAYER.findall(metadata or ""))
    return nodes or {name}


def _check_quantization(trt: ModuleType, network, precision: str, graph: str) -> None:
    """int8 takes an explicitly quantized graph (Q/DQ nodes) and only int8 does: the graph decides, not a flag."""
    qdq = sum(network.get_layer(i).type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
              for i in range(network.num_layers))
    if precision == "int8" and not qdq:
        raise EngineBuildError(f"{graph} has no QuantizeLinear/DequantizeLinear nodes, and int8 engines are built from "
                               "explicitly quantized graphs only: quantize it first (ONNX Runtime's quantize_static, "
                               "quant_format=QDQ), or build with --precision fp32 or fp16")
    if precision != "int8" and qdq:
        raise EngineBuildError(f"{graph} is explicitly quantized ({qdq} Q/DQ layers): build it with --precision int8")


def _apply_precision(trt: ModuleType, network, config, options: BuildOptions, say: Callable[[str], None]) -> None:
    if options.precision == "fp32":
        return
    flags = trt.BuilderFlag
    if options.precision == "int8":
        if not hasattr(flags, "INT8"):
            # NOTE: strongly typed builders (TensorRT-RTX; TensorRT >= 11 removed the flag) take int8 from the Q/DQ
            # nodes alone, and every other layer keeps its ONNX type: there is no fp16 fallback to allow or forbid.
            say(f"{tensorrt_version(trt)} builds strongly typed networks: int8 where the graph has Q/DQ nodes, "
                "the other layers in their ONNX types")
            return
        config.set_flag(flags.INT8)    # weakly typed TensorRT 10: Q/DQ regions run in int8 only with this flag
    if not hasattr(flags, "FP16"):
        raise EngineBuildError(f"{tensorrt_version(trt)} has no FP16 builder flag (it builds strongly typed "
                               "networks only); build with --precision fp32")
    config.set_flag(flags.FP16)        # int8: the layers outside Q/DQ regions may run in fp16
    keep = set(options.fp32_layers)
    if not keep:
        return
    config.set_flag(flags.OBEY_PRECISION_CONSTRAINTS)
    floats = (trt.float32, trt.float16)
    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in qdq or not onnx_nodes_of_layer(layer.name, getattr(layer, "metadata", "")) & keep:
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
    _check_quantization(trt, network, options.precision, onnx_path.name)
    _apply_precision(trt, network, config, options, say)
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
        errors = logger.errors + _qdq_advice(logger.errors)
        raise EngineBuildError(f"TensorRT failed to build {onnx_path.name}: "
                               + ("cancelled" if cancelled else "; ".join(errors) or "no error message"))
    if not rtx and options.timing_cache is not None:
        options.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(options.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)
