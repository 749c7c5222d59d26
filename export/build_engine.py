"""``python -m export.build_engine``: model -> validated ONNX (full + streaming split) -> manifest -> TensorRT engines.

Run ``python -m export.build_engine --help`` for the walk-through; :func:`build_artifact` is the same build as a
function (``avs-stream --demo`` calls it through the ``avs_edge.builders`` entry point). Everything
model-specific (input size, normalisation, audio front-end, classes, palette, frame rate) comes from the
variant's ``PretrainedCfg`` (``export.models.pretrained_cfg``). The artifact directory it writes is all the
runtime needs; ``runtime/manifest.py`` documents ``manifest.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Optional

from runtime.backends import STREAMING_ROLES
from runtime.manifest import (EngineRecord, EngineStatus, FileDigest, GraphSpec, Manifest, ModelInfo, OutputSpec,
                              SCHEMA_VERSION, StreamingSpec, VideoSpec, load_manifest, write_manifest)

DEFAULT_VARIANT = "selm-s4-r50"
DEMO_TRAINERS = {"sdavs-s4-demo": "export.train_sdavs_demo", "combo-s4-demo": "export.train_combo_demo"}  # else train_demo
ALIASES = {"selm": DEFAULT_VARIANT}
# Flags that are not build options (build_artifact takes them as its own arguments, or they are CLI-only).
_NOT_OPTIONS = ("model", "list_models", "out", "checkpoint", "vggish", "seed")

EPILOG = f"""\
what it does, in order:
  1. builds the model (--model) with its weights (--checkpoint; without one: RANDOM weights, for trials only)
     and its audio encoder (--vggish vggish-10086976.pth from torchvggish; without it: random weights)
  2. exports ONNX graphs into --out: model.onnx (one clip: frames + VGGish log-mel -> logits) and the streaming
     split encoder.onnx (one frame) / temporal.onnx (the T-frame window) / decoder.onnx (one frame)
  3. validates every graph in ONNX Runtime against PyTorch, and the split against the full graph
     (max abs diff and mask agreement; fails above --atol/--rtol)
  4. with --precision fp16: checks in ONNX Runtime which modules must stay fp32
  5. writes manifest.json (everything the runtime needs: tensors, preprocessing, classes, validation, and the
     sha256 of every file it names)
  6. builds TensorRT engines (<graph>.<precision>.engine, plain plans) when TensorRT and a GPU are present;
     a cached engine is reused while graph, TensorRT, GPU, precision and plugin are unchanged

A build that fails before step 5 removes what it wrote (and --out itself if it created it); an artifact that
fails validation is kept for inspection, marked unvalidated (the runtime refuses it).

examples:
  python -m export.build_engine --model selm                      # {DEFAULT_VARIANT}, random weights (a trial)
  python -m export.build_engine --model selm-s4-pvt --checkpoint S4_PVT.pth --vggish vggish-10086976.pth
  python -m export.build_engine --model selm-avss-r50 --checkpoint AVSS_R50.pth --precision fp16 --engine
  python -m export.build_engine --model selm-test --out /tmp/tiny   # tiny random model: a build in seconds
  python -m export.build_engine --model avs-mamba-s4-r50 --vggish vggish-10086976.pth   # scans as plugin nodes
  python -m export.build_engine --list-models

exit status: 0 done; 1 bad input (flags, model name, files, numbers) or export/validation failed;
             2 --engine demanded but no engine could be built; 130 interrupted.
"""


class UserError(Exception):
    """Bad input or a failed build: printed as one line (no traceback); ``exit_status`` 1."""

    exit_status = 1


class EngineUnavailableError(UserError):
    """``--engine`` was demanded but no engine can be (or was) built here; ``exit_status`` 2."""

    exit_status = 2


class ValidationFailedError(UserError):
    """The export disagrees with PyTorch beyond tolerance; the artifact is kept, marked unvalidated."""


class _Parser(argparse.ArgumentParser):
    """argparse with bad flags exiting 1 like every other bad input (argparse's own default is 2)."""

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(UserError.exit_status, f"error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The CLI, in argument groups."""
    parser = _Parser(
        prog="python -m export.build_engine", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Turn an audio-visual segmentation model into a validated ONNX artifact directory "
                    "(full graph + streaming split + manifest.json) and, where TensorRT and a GPU exist, engines.")
    model = parser.add_argument_group("Model: which network and which weights")
    model.add_argument("--model", metavar="NAME",
                       help=f"variant name (see --list-models); 'selm' means {DEFAULT_VARIANT}")
    model.add_argument("--list-models", action="store_true", help="list the variants and exit")
    model.add_argument("--checkpoint", type=Path, metavar="PATH",
                       help="the official .pth of that variant; omitted: random weights (announced)")
    model.add_argument("--vggish", type=Path, metavar="PATH",
                       help="the audio encoder's weights (torchvggish's vggish-10086976.pth; AVS-Mamba: loaded "
                            "into its audio_backbone); omitted: random weights (announced)")
    model.add_argument("--gumbel", choices=("none", "input"), default="none",
                       help="SelM's decoder Gumbel noise: 'none' = deterministic argmax (default); 'input' = an extra "
                            "gumbel_noise input of uniform (0,1) noise (same noise, same result as PyTorch)")
    export = parser.add_argument_group("Export: the ONNX graphs")
    export.add_argument("--out", type=Path, metavar="DIR", help="artifact directory (default: artifacts/<model>)")
    export.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default 18, minimum 18)")
    export.add_argument("--scan", choices=("auto", "plugin", "lowered"), default="auto",
                        help="selective scan as one avs::SelectiveScan node served by our plugin ('plugin'), or "
                             "unrolled into stock ops ('lowered', scans of at most 64 steps); 'auto' lowers SelM's "
                             "5/10-step scans so no plugin is needed, and keeps AVS-Mamba's long scans as plugin "
                             "nodes")
    check = parser.add_argument_group("Validation: ONNX Runtime against PyTorch")
    check.add_argument("--atol", type=float, default=None, metavar="TOL", help="absolute tolerance (default 1e-3)")
    check.add_argument("--rtol", type=float, default=None, metavar="TOL", help="relative tolerance (default 1e-3)")
    check.add_argument("--seed", type=int, default=0,
                       help="seed of the random weights (without --checkpoint) and validation inputs (default 0)")
    check.add_argument("--fp16-budget", type=float, default=None, metavar="ERR",
                       help="largest relative mean logits error fp16 may cause (default 0.01)")
    trt = parser.add_argument_group("TensorRT: engines, built on the target device")
    trt.add_argument("--engine", dest="engine", action="store_true", default=None,
                     help="require engines: exit 2 if they cannot be built (default: build when possible)")
    trt.add_argument("--no-engine", dest="engine", action="store_false", help="skip the engine step")
    trt.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                     help="engine precision (default fp32); int8 first calibrates (--calibration), adding Q/DQ "
                          "graphs that ONNX Runtime runs too")
    cal = parser.add_argument_group("INT8 calibration (with --precision int8; python -m calibration does it later)")
    cal.add_argument("--calibration", metavar="DIR",
                     help="calibration data: 'synth' (generated clips), an AVSBench-layout folder or a folder of "
                          "videos with audio")
    cal.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax",
                     help="activation range method (default minmax)")
    cal.add_argument("--calibration-clips", type=int, default=None, metavar="N",
                     help="calibration clips (default 16; 8 more feed the sensitivity sweep, 40 held-out clips "
                          "measure the accuracy)")
    trt.add_argument("--plugin-lib", type=Path, metavar="PATH",
                     help="TensorRT plugin library for --scan plugin (default: plugins/lib/libavs_trt_plugins.so)")
    trt.add_argument("--timing-cache", type=Path, metavar="PATH",
                     help="TensorRT timing cache, read and updated (default: <out>/timing.cache; recorded in the "
                          "manifest only when inside <out>)")
    trt.add_argument("--workspace-gb", type=float, default=2.0, metavar="N",
                     help="builder workspace limit in GiB (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="exporter, TensorRT and comparison details")
    return parser


def resolve_model_name(name: Optional[str]) -> str:
    """The registry name for ``--model`` (aliases resolved); unknown or non-exportable names raise."""
    from export.models import list_models, pretrained_cfg
    from export.onnx_export import EXPORTABLE_FAMILIES

    if not name:
        raise UserError("--model is required (try --model selm, or --list-models)")
    name = ALIASES.get(name, name)
    try:
        cfg = pretrained_cfg(name)
    except KeyError as exc:
        raise UserError(exc.args[0]) from None
    if cfg.task != "segmentation":
        raise UserError(f"{name} is an audio encoder used inside the segmentation graphs, not a model to export on "
                        f"its own; pass its weights with --vggish PATH and choose one of "
                        f"{', '.join(list_models(task='segmentation'))} with --model")
    if cfg.family not in EXPORTABLE_FAMILIES:
        raise UserError(f"{name}: the exporter knows the graphs of {', '.join(EXPORTABLE_FAMILIES)} so far, not "
                        f"{cfg.family}")
    return name


def prepare_out_dir(out: Path) -> Optional[Path]:
    """Create ``out`` and prove it is writable, or raise a :class:`UserError` saying how to fix it.

    Returns the topmost directory this call created (``out`` or a parent), or None when ``out`` existed.
    """
    created = None
    for parent in (out, *out.parents):
        if parent.exists():
            break
        created = parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise UserError(f"cannot write to output directory {out}: {exc.strerror or exc}; "
                        "choose another --out or fix its permissions") from None
    return created


def discard_partial(out: Path, created: Optional[Path], before: set[Path]) -> None:
    """Undo a failed build: remove the directory it created, or else only the entries it added to ``out``."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)
        return
    for entry in set(out.iterdir()) - before:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def check_readable(path: Path, what: str) -> Path:
    """``path`` must be a readable file; else a :class:`UserError` naming the flag."""
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path} is not readable (permission denied)")
    return path


def default_weights(name: str, checkpoint: Optional[Path], vggish: Optional[Path]
                    ) -> tuple[Optional[Path], Optional[Path]]:
    """The weights to load: the given ones, else the variant's (and its audio encoder's) shipped ones, if any."""
    from export.models import pretrained_cfg

    cfg = pretrained_cfg(name)
    chosen = []
    for given, owner in ((checkpoint, cfg), (vggish, pretrained_cfg(cfg.audio_encoder))):
        shipped = owner.bundled_path
        if given is None and shipped is not None:
            if not shipped.is_file():
                raise UserError(f"{owner.name}'s shipped weights {shipped} are missing; make them with "
                                f"python -m {DEMO_TRAINERS.get(owner.name, 'export.train_demo')} --ship, or pass the "
                                f"weights to use")
            given = shipped
        chosen.append(given)
    return chosen[0], chosen[1]


def load_models(name: str, checkpoint: Optional[Path], vggish: Optional[Path], gumbel: str, say):
    """The variant and its audio encoder, eval mode; unreadable or mismatched checkpoints raise :class:`UserError`.

    A family with VGGish inside the model (AVS-Mamba, COMBO: ``audio_backbone``) gets ``--vggish`` loaded there, and that
    module is returned as the audio encoder.
    """
    from export.models import create_model, load_checkpoint, pretrained_cfg

    cfg = pretrained_cfg(name)
    encoder = pretrained_cfg(cfg.audio_encoder)
    if gumbel != "none" and cfg.family != "selm":
        raise UserError(f"--gumbel {gumbel}: {name} has no Gumbel noise (only SelM variants take it); drop the flag")
    inside = cfg.family in ("avs-mamba", "combo")
    expected = f" (expected {encoder.file})" if encoder.file else ""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*", category=UserWarning)
        try:
            model = create_model(name, checkpoint, **({"gumbel": gumbel} if cfg.family == "selm" else {}))
        except (OSError, ValueError) as exc:      # the loader names missing/unexpected keys and the right variant
            raise UserError(f"--checkpoint: {exc}") from None
        try:
            if inside:
                audio = model.audio_backbone
                if vggish is not None:
                    load_checkpoint(audio, vggish, encoder.name)
            else:
                audio = create_model(encoder.name, vggish)
        except (OSError, ValueError) as exc:
            raise UserError(f"--vggish: {exc}{expected}") from None
    if checkpoint is None:
        say("!" * 78)
        say(f"!! no --checkpoint: {name} has RANDOM weights. The artifact works but segments nothing;")
        say(f"!! pass the official {cfg.file or '.pth'} for real masks.")
        say("!" * 78)
    if vggish is None and not (inside and checkpoint is not None):
        hint = f" (pass {encoder.file} for real audio features)" if encoder.file else ""
        say(f"note: no --vggish: {encoder.name} has random weights{hint}")
    elif inside and vggish is not None and checkpoint is not None:
        say(f"note: --vggish replaces the audio_backbone weights of --checkpoint")
    return model.eval(), audio.eval()


def video_spec(cfg) -> VideoSpec:
    """Frame preprocessing from a ``PretrainedCfg``."""
    return VideoSpec(resolution=cfg.input_size, channel_order="RGB", resize=cfg.interpolation, value_scale=1 / 255,
                     mean=list(cfg.mean), std=list(cfg.std), layout="NCHW", frames_per_clip=cfg.frames_per_clip,
                     frame_rate_hz=cfg.frame_rate_hz)


def output_spec(cfg) -> OutputSpec:
    """Output semantics from a ``PretrainedCfg``."""
    return OutputSpec(kind=cfg.output_kind, num_classes=cfg.num_classes, activation=cfg.activation,
                      threshold=cfg.threshold, size=[cfg.output_size, cfg.output_size],
                      class_names=list(cfg.class_names), palette=[list(rgb) for rgb in cfg.palette])


def streaming_spec(cfg) -> StreamingSpec:
    """The streaming split's layout: window of T frames, the newest one decoded."""
    from export.onnx_export import carry_names, window_fill, window_frames

    t = window_frames(cfg)
    return StreamingSpec(window=t, encoder_frames=1, decoder_frames=1, decode_index=t - 1,
                         carry=list(carry_names(cfg.family)),
                         frame_rate_hz=cfg.frame_rate_hz, fill=window_fill(cfg.family))


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made the artifact."""
    versions = {"python": platform.python_version()}
    for dist in ("avs-edge", "torch", "onnx", "onnxscript", "onnxruntime", "numpy", "polygraphy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def choose_scan(scan: str, cfg, say: Callable[[str], None] = print) -> str:
    """'auto' -> 'lowered' when the variant's scans are short enough to unroll, else 'plugin' (announced);
    'lowered' for longer scans raises :class:`UserError`."""
    from export.onnx_export import longest_scan
    from export.ops.selective_scan_onnx import MAX_LOWERED_LENGTH

    length = longest_scan(cfg)
    if length > MAX_LOWERED_LENGTH:
        if scan == "lowered":
            raise UserError(f"--scan lowered: {cfg.name}'s selective scans run up to {length} steps; unrolling into "
                            f"stock ops is for scans of at most {MAX_LOWERED_LENGTH} steps. Use --scan plugin "
                            f"(the default 'auto' picks it)")
        if scan == "auto":
            say(f"note: {cfg.name}'s selective scans run up to {length} steps, too long to lower into stock ops: "
                f"each is one avs::SelectiveScan node, served by our ONNX Runtime custom-op library and TensorRT "
                f"plugin (python -m plugins.build)")
    if scan != "auto":
        return scan
    return "lowered" if length <= MAX_LOWERED_LENGTH else "plugin"


class Stages:
    """Numbered stage lines with timings: ``with stages("title"): ...``."""

    def __init__(self, total: int, say: Callable[[str], None]):
        self.total, self.index, self.say = total, 0, say

    @contextlib.contextmanager
    def __call__(self, title: str):
        self.index += 1
        self.say(f"[{self.index}/{self.total}] {title}")
        start = time.perf_counter()
        yield
        self.say(f"      done in {time.perf_counter() - start:.1f} s")


@dataclasses.dataclass
class EngineEnvironment:
    """What the engine step would use, or why it cannot run (``reason`` non-empty)."""
    reason: str = ""
    trt: object = None
    gpu: object = None
    plugin: Optional[Path] = None


def engine_environment(args, scan: str) -> EngineEnvironment:
    """TensorRT, a GPU and (for ``--scan plugin``) the plugin library: found, or the reason they are not."""
    from runtime.engine_cache import import_tensorrt, tensorrt_version
    from runtime.gpu import probe_gpu

    if args.engine is False:
        return EngineEnvironment("--no-engine given")
    trt, why = import_tensorrt()
    if trt is None:
        return EngineEnvironment(why)
    gpu, why = probe_gpu()
    if gpu is None:
        return EngineEnvironment(f"{why} ({tensorrt_version(trt)} is installed)", trt)
    plugin = None
    if scan == "plugin":
        if args.plugin_lib is not None:
            plugin = check_readable(args.plugin_lib, "--plugin-lib")
        else:
            import plugins

            try:
                plugin = Path(plugins.trt_plugin_path())
            except FileNotFoundError as exc:
                return EngineEnvironment(str(exc), trt, gpu)
    return EngineEnvironment("", trt, gpu, plugin)


def build_engines(args, env: EngineEnvironment, out: Path, paths: dict[str, Path],
                  fp16_nodes: dict[str, list[str]], say: Callable[[str], None]) -> EngineStatus:
    """Engines for every graph, built or reused through the engine cache; a failure is reported, not raised."""
    from export.engine import BuildOptions, BuildProgress, EngineBuildError, build_serialized_engine
    from runtime.engine_cache import EngineCache, EngineKey, graph_sha256, tensorrt_version
    from runtime.integrity import file_sha256

    trt, gpu = env.trt, env.gpu
    plugin = None
    if env.plugin is not None:
        plugin = out / env.plugin.name          # ship the plugin library the engines were built with
        if env.plugin.resolve() != plugin.resolve():
            shutil.copy2(env.plugin, plugin)
    timing_cache = args.timing_cache or out / "timing.cache"
    plugin_sha = file_sha256(plugin) if plugin else "none"
    cache = EngineCache(out)
    records = []
    say(f"      {tensorrt_version(trt)} on {gpu.name} (compute capability {gpu.compute_capability})")
    for role, path in paths.items():
        key = EngineKey(graph_sha256(path), tensorrt_version(trt), gpu.name, gpu.compute_capability,
                        args.precision, plugin_sha)
        # NOTE: an int8 role without Q/DQ nodes (wholly kept fp32 by the sweep) builds as fp16 under the int8 key
        flags = "fp16" if args.precision == "int8" and path.suffixes[-2:] != [".int8", ".onnx"] else args.precision
        options = BuildOptions(precision=flags, workspace_gb=args.workspace_gb, timing_cache=timing_cache,
                               plugin_library=plugin, fp32_layers=tuple(fp16_nodes.get(role, ())),
                               verbose=args.verbose)
        try:
            engine, _ = cache.get_or_build(
                role, key, lambda: build_serialized_engine(trt, path, options, BuildProgress(role), say),
                lambda line: say("      " + line))
        except EngineBuildError as exc:
            return EngineStatus(built=False, reason=str(exc), tensorrt=tensorrt_version(trt))
        records.append(EngineRecord(graph=role, file=engine.name, precision=args.precision,
                                    key={k: str(v) for k, v in dataclasses.asdict(key).items()}))
    # NOTE: the manifest names only files inside the artifact (a --timing-cache elsewhere is the user's own file)
    has_cache = (trt.__name__ != "tensorrt_rtx" and timing_cache.is_file()
                 and timing_cache.resolve().is_relative_to(out.resolve()))
    return EngineStatus(built=True, reason="built, or reused from the engine cache", tensorrt=tensorrt_version(trt),
                        timing_cache=os.path.relpath(timing_cache.resolve(), out.resolve()) if has_cache else None,
                        plugin_library=plugin.name if plugin else None, engines=records)


def engine_step(args, env: EngineEnvironment, out: Path, paths: dict[str, Path], fp16_nodes: dict[str, list[str]],
                say: Callable[[str], None]) -> EngineStatus:
    """Build the engines, or say in one line why they were skipped."""
    status = (EngineStatus(built=False, reason=env.reason) if env.reason
              else build_engines(args, env, out, paths, fp16_nodes, say))
    if not status.built:
        say(f"engine build skipped: {status.reason}")
    return status


def calibrate(out: Path, args, say: Callable[[str], None]):
    """``python -m calibration`` on the fresh artifact; prints the accuracy table; returns the INT8 record."""
    from calibration.calibrate import calibrate_artifact, format_table
    from calibration.int8 import CalibrationError
    from runtime.datasets.avsbench import DatasetError

    try:
        records = calibrate_artifact(out, args.calibration, method=args.calibration_method,
                                     clips=args.calibration_clips, say=lambda line: say("      " + line))
    except (CalibrationError, DatasetError) as exc:
        raise UserError(f"INT8 calibration failed: {exc} (the fp32 artifact in {out} is complete)") from None
    for line in format_table(records).splitlines():
        say("      " + line)
    if not records["int8"].passed:
        say("      WARNING: int8 is outside its accuracy bounds: recorded, but --precision auto will not pick it")
    return records["int8"]


def check_scan_libraries(scan: str) -> None:
    """``--scan plugin`` validates in ONNX Runtime through our custom-op library: it must be built."""
    if scan != "plugin":
        return
    import plugins

    try:
        plugins.ort_library_path()
    except FileNotFoundError as exc:
        raise UserError(f"--scan plugin: {exc}") from None


def build_options(parser: argparse.ArgumentParser, options: dict) -> argparse.Namespace:
    """The CLI's defaults overridden by ``options`` (flag names with '_'); unknown names raise ``TypeError``."""
    args = parser.parse_args([])
    known = sorted(k for k in vars(args) if k not in _NOT_OPTIONS)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"build_artifact: unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for action in parser._actions:
        value = options.get(action.dest)
        if action.dest in options and action.choices and value not in action.choices:
            raise UserError(f"--{action.dest.replace('_', '-')} must be one of {', '.join(action.choices)}, "
                            f"got {value!r}")
    for name, value in options.items():
        setattr(args, name, value)
    return args


def check_numbers(args) -> int:
    """Positive tolerances and sizes, a supported opset; returns the opset."""
    from export.onnx_export import DEFAULT_OPSET, MIN_OPSET

    opset = args.opset if args.opset is not None else DEFAULT_OPSET
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset} is too old: the exporter needs opset >= {MIN_OPSET} "
                        f"(try --opset {MIN_OPSET})")
    for flag in ("atol", "rtol", "workspace_gb", "fp16_budget", "calibration_clips"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    return opset


def build_artifact(model: str, out: Path, *, checkpoint: Optional[Path] = None, vggish: Optional[Path] = None,
                   seed: int = 0, say: Callable[[str], None] = print, **options) -> Path:
    """Build the artifact of variant ``model`` into ``out``; returns ``out``.

    Args:
        model: a registered segmentation variant (or an alias such as ``selm``).
        out: the artifact directory (created if needed).
        checkpoint, vggish: weight files of the model and its audio encoder; None = random weights (announced).
        seed: seed of random weights and validation inputs.
        say: receives the progress lines.
        **options: any other CLI flag by its Python name (``precision="fp16"``, ``engine=False``, ``scan=...``,
            ``gumbel=...``, ``atol=...``); an unknown name raises ``TypeError``.

    Raises:
        UserError: bad input or a failed export/validation (``EngineUnavailableError`` when ``engine=True`` and no
            engine can be built). A failure before the manifest is written leaves nothing behind: files it added
            are removed, and ``out`` too if it created it.
    """
    from export.validate import DEFAULT_ATOL, DEFAULT_RTOL
    from export.models import pretrained_cfg

    args = build_options(build_parser(), options)
    if args.precision == "int8" and not args.calibration:
        raise UserError("--precision int8 needs calibration data: add --calibration synth (generated clips), "
                        "--calibration AVSBench/Single-source, or --calibration DIR_OF_VIDEOS")
    if args.calibration and args.precision != "int8":
        raise UserError("--calibration is for --precision int8 (to calibrate an existing artifact: python -m "
                        "calibration --model-dir ART --data DIR)")
    name = resolve_model_name(model)
    cfg = pretrained_cfg(name)
    checkpoint, vggish = default_weights(name, checkpoint, vggish)
    checkpoint = check_readable(Path(checkpoint), "--checkpoint") if checkpoint else None
    vggish = check_readable(Path(vggish), "--vggish") if vggish else None
    opset = check_numbers(args)
    scan = choose_scan(args.scan, cfg, say)
    check_scan_libraries(scan)
    env = engine_environment(args, scan)
    if env.reason and args.engine is True:
        raise EngineUnavailableError(f"--engine was demanded, but no engine can be built here: {env.reason}")
    out = Path(out)
    created = prepare_out_dir(out)
    before = set(out.iterdir()) if created is None else set()
    stages = Stages(6 if args.precision in ("fp16", "int8") else 5, say)
    atol = args.atol if args.atol is not None else DEFAULT_ATOL
    rtol = args.rtol if args.rtol is not None else DEFAULT_RTOL
    try:
        with stages(f"building {name} (seed {seed})"):
            import torch

            torch.manual_seed(seed)
            net, audio = load_models(name, checkpoint, vggish, args.gumbel, say)
        manifest, paths, fp16 = export_artifact(args, cfg, net, audio, checkpoint, vggish, seed, out, opset, scan,
                                                atol, rtol, stages, say)
    except ValidationFailedError:
        raise                                   # a complete artifact, kept for inspection
    except BaseException:
        discard_partial(out, created, before)
        raise
    keep = fp16.keep_fp32_nodes if fp16 else {}
    if args.precision == "int8":
        with stages(f"INT8 calibration on {args.calibration} ({args.calibration_method})"):
            record = calibrate(out, args, say)
        paths = {role: out / manifest.graph(role).file for role in STREAMING_ROLES}
        paths.update({role: out / spec.file for role, spec in record.graphs.items()})
        keep = record.keep_fp32
    with stages("TensorRT engines"):
        status = engine_step(args, env, out, paths, keep, say)
        manifest = load_manifest(out)
        versions = dict(manifest.tools, **({env.trt.__name__: env.trt.__version__} if env.trt else {}))
        write_manifest(dataclasses.replace(manifest, engine=status, tools=versions), out)
    if args.engine is True and not status.built:
        raise EngineUnavailableError(f"--engine was demanded, but the engine build failed: {status.reason} "
                                     f"(the ONNX artifact in {out} is complete)")
    say(f"artifact ready: {out / 'manifest.json'}")
    return out


def export_artifact(args, cfg, model, audio, checkpoint, vggish_path, seed, out, opset, scan, atol, rtol, stages,
                    say):
    """Stages 2..: export, validate, (fp16 check), manifest; returns ``(manifest, graph paths, fp16 report)``.

    Validation failure writes the manifest (marked unvalidated, kept for inspection) and raises :class:`UserError`.
    """
    from export.onnx_export import (export_graph, export_graphs, maskige_spec, noise_shape, sample_inputs,
                                    tensor_specs, window_frames)
    from export.validate import describe, validate_export
    from runtime.engine_cache import graph_sha256
    from runtime.integrity import file_sha256

    gumbel_input = args.gumbel == "input"
    reference, defs = export_graphs(model, audio, gumbel_input)
    metadata = {"avs.model": cfg.name, "avs.family": cfg.family, "avs.manifest_schema": str(SCHEMA_VERSION),
                "avs.scan": scan}
    with stages(f"exporting ONNX (opset {opset}, scan '{scan}') into {out}"):
        inputs = sample_inputs(reference, model.cfg, noise_shape(model, gumbel_input), seed, window_frames(cfg))
        paths = {}
        for role, gdef in defs.items():
            say(f"      {gdef.file} ...")
            try:
                paths[role] = export_graph(gdef, inputs[role], out, opset, scan, metadata, args.verbose)
            except ValueError as exc:
                raise UserError(f"export of {gdef.file} failed: {exc}") from None
    with stages("validating: ONNX Runtime vs PyTorch, streaming split vs full graph"):
        records = validate_export(reference, paths, inputs, kind=cfg.output_kind, atol=atol, rtol=rtol, seed=seed,
                                  say=lambda line: say("      " + line))
    fp16 = None
    if args.precision == "fp16":
        from export.fp16 import DEFAULT_BUDGET, fp16_sensitivity
        from export.validate import session_options

        with stages("fp16 sensitivity check in ONNX Runtime"):
            fp16 = fp16_sensitivity(paths, "full", inputs["full"], kind=cfg.output_kind,
                                    budget=args.fp16_budget or DEFAULT_BUDGET, say=lambda line: say("      " + line),
                                    session_options=session_options(paths["full"]))
    graphs = {}
    for role, path in paths.items():
        ins, outs = tensor_specs(path)
        data = f"{path.name}.data"
        graphs[role] = GraphSpec(role=role, file=path.name, sha256=graph_sha256(path), inputs=ins, outputs=outs,
                                 external_data=data if (out / data).is_file() else None)

    def digest(path: Optional[Path]) -> Optional[FileDigest]:
        return FileDigest(str(path), file_sha256(path)) if path else None

    passed = all(r.passed for r in records)
    manifest = Manifest(
        schema_version=SCHEMA_VERSION,
        model=ModelInfo(name=cfg.name, family=cfg.family, setting=cfg.setting, backbone=cfg.backbone,
                        checkpoint=digest(checkpoint), vggish_checkpoint=digest(vggish_path),
                        random_weights=checkpoint is None, weights_seed=seed, gumbel=args.gumbel),
        opset=opset, scan=scan, precision=args.precision, tools=tool_versions(), graphs=graphs,
        video=video_spec(cfg), audio=cfg.audio, output=output_spec(cfg), streaming=streaming_spec(cfg),
        validation=records, fp16=fp16, maskige=maskige_spec(cfg),
        engine=EngineStatus(built=False, reason="validation failed" if not passed else "not attempted yet"),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    with stages("writing manifest.json"):
        write_manifest(manifest, out)
    if not passed:
        failed = [describe(r) for r in records if not r.passed]
        raise ValidationFailedError("validation failed (artifact kept for inspection, marked unvalidated): "
                                    + " | ".join(failed))
    return manifest, paths, fp16


def run(args, say: Callable[[str], None] = print) -> int:
    """The whole command; returns the exit status (errors raise :class:`UserError`)."""
    if args.list_models:
        from export.models import list_models, pretrained_cfg

        for name in list_models(task="segmentation"):
            note = "   (default for --model selm)" if name == DEFAULT_VARIANT else ""
            cfg = pretrained_cfg(name)
            if cfg.bundled:
                note = "   (trained here on synthetic data; weights shipped)"
            elif name.endswith("-test"):
                note = "   (tiny test variant: random weights only)"
            elif not cfg.file:
                note = "   (no released weights: random unless --checkpoint)"
            say(name + note)
        return 0
    name = resolve_model_name(args.model)
    options = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}
    build_artifact(name, args.out or Path("artifacts") / name, checkpoint=args.checkpoint, vggish=args.vggish,
                   seed=args.seed, say=say, **options)
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: errors print one line and return their exit status (see ``--help``)."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
