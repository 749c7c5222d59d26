"""``python -m export.build_engine``: model -> validated ONNX (full + streaming split) -> manifest -> TensorRT engines.

Run ``python -m export.build_engine --help`` for the walk-through. The artifact directory it writes is all the
runtime needs; ``runtime/manifest.py`` documents ``manifest.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
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

from runtime.manifest import (AudioSpec, EngineRecord, EngineStatus, FileDigest, GraphSpec, Manifest, ModelInfo,
                              OutputSpec, SCHEMA_VERSION, StreamingSpec, VideoSpec, write_manifest)

DEFAULT_VARIANT = "selm-s4-r50"
ALIASES = {"selm": DEFAULT_VARIANT}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
FRAME_RATE_HZ = 1.0
OUTPUT_SIZE = [224, 224]
AVSS_CLASSES = (
    "background accordion airplane axe baby bassoon bell bird boat boy bus car cat cello clarinet clipper clock dog "
    "donkey drum duck elephant emergency-car erhu flute frying-food girl goose guitar gun guzheng hair-dryer handpan "
    "harmonica harp helicopter hen horse keyboard leopard lion man marimba missile-rocket motorcycle mower parrot "
    "piano pig pipa saw saxophone sheep sitar sorna squirrel tabla tank tiger tractor train trombone truck trumpet "
    "tuba ukulele utv vacuum-cleaner violin wolf woman").split()

EPILOG = f"""\
what it does, in order:
  1. builds the model (--model) with its weights (--checkpoint; without one: RANDOM weights, for trials only)
     and VGGish (--vggish vggish-10086976.pth from torchvggish; without it: random VGGish)
  2. exports ONNX graphs into --out: model.onnx (one clip: frames + VGGish log-mel -> logits) and the streaming
     split encoder.onnx (one frame) / temporal.onnx (the T-frame window) / decoder.onnx (one frame)
  3. validates every graph in ONNX Runtime against PyTorch, and the split against the full graph
     (max abs diff and mask agreement; fails above --atol/--rtol)
  4. with --precision fp16: checks in ONNX Runtime which modules must stay fp32
  5. writes manifest.json (everything the runtime needs: tensors, preprocessing, classes, validation)
  6. builds TensorRT engines (<graph>.<precision>.engine, plain plans) when TensorRT and a GPU are present;
     a cached engine is reused while graph, TensorRT, GPU, precision and plugin are unchanged

examples:
  python -m export.build_engine --model selm                      # {DEFAULT_VARIANT}, random weights (a trial)
  python -m export.build_engine --model selm-s4-pvt --checkpoint S4_pvt.pth --vggish vggish-10086976.pth
  python -m export.build_engine --model selm-avss-r50 --checkpoint avss_r50.pth --precision fp16 --engine
  python -m export.build_engine --list-models

exit status: 0 done; 1 bad input or validation failed; 2 --engine demanded but no engine could be built.
"""


class UserError(Exception):
    """Bad input: printed as one line (no traceback), exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    """The CLI, in argument groups."""
    parser = argparse.ArgumentParser(
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
                       help="torchvggish's vggish-10086976.pth; omitted: random VGGish (announced)")
    model.add_argument("--gumbel", choices=("none", "input"), default="none",
                       help="decoder Gumbel noise: 'none' = deterministic argmax (default); 'input' = an extra "
                            "gumbel_noise input of uniform (0,1) noise (same noise, same result as PyTorch)")
    export = parser.add_argument_group("Export: the ONNX graphs")
    export.add_argument("--out", type=Path, metavar="DIR", help="artifact directory (default: artifacts/<model>)")
    export.add_argument("--opset", type=int, default=None, metavar="N", help="ONNX opset (default 18, minimum 18)")
    export.add_argument("--scan", choices=("auto", "plugin", "lowered"), default="auto",
                        help="selective scan as one avs::SelectiveScan node served by our plugin ('plugin'), or "
                             "unrolled into stock ops ('lowered', short scans only); 'auto' lowers SelM's "
                             "5/10-step scans so no plugin is needed")
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
    trt.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="engine precision (default fp32)")
    trt.add_argument("--plugin-lib", type=Path, metavar="PATH",
                     help="TensorRT plugin library for --scan plugin (default: plugins/lib/libavs_trt_plugins.so)")
    trt.add_argument("--timing-cache", type=Path, metavar="PATH",
                     help="TensorRT timing cache, read and updated (default: <out>/timing.cache)")
    trt.add_argument("--workspace-gb", type=float, default=2.0, metavar="N",
                     help="builder workspace limit in GiB (default 2)")
    parser.add_argument("-v", "--verbose", action="store_true", help="exporter, TensorRT and comparison details")
    return parser


def resolve_model_name(name: Optional[str]) -> str:
    """The registry name for ``--model`` (aliases resolved); unknown names raise with close matches."""
    from export.models import list_models

    if not name:
        raise UserError("--model is required (try --model selm, or --list-models)")
    name = ALIASES.get(name, name)
    known = list_models()
    if name == "vggish":
        raise UserError("vggish is the audio encoder inside every SelM graph, not a model to export on its own; "
                        "pass its weights with --vggish PATH and choose a SelM variant with --model")
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(f"unknown model {name!r}.{hint} Known: {', '.join(n for n in known if n != 'vggish')}")
    from export.models.selm import SELM_CONFIGS

    if name not in SELM_CONFIGS:
        raise UserError(f"{name}: this command exports the SelM variants ({', '.join(SELM_CONFIGS)}) so far")
    return name


def prepare_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it is writable, or raise a :class:`UserError` saying how to fix it."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to output directory {out}: {exc.strerror or exc}; "
                        "choose another --out or fix its permissions") from None
    return out


def check_readable(path: Path, what: str) -> Path:
    """``path`` must be a readable file; else a :class:`UserError` naming the flag."""
    if not path.exists():
        raise UserError(f"{what} {path} does not exist")
    if not path.is_file():
        raise UserError(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{what} {path} is not readable (permission denied)")
    return path


def load_models(name: str, checkpoint: Optional[Path], vggish: Optional[Path], gumbel: str, say):
    """The SelM variant and VGGish, eval mode; unreadable or mismatched checkpoints raise :class:`UserError`."""
    from export.models import create_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*", category=UserWarning)
        try:
            selm = create_model(name, checkpoint, gumbel=gumbel)
        except (OSError, ValueError) as exc:      # the loader names missing/unexpected keys and the right variant
            raise UserError(f"--checkpoint: {exc}") from None
        try:
            audio = create_model("vggish", vggish)
        except (OSError, ValueError) as exc:
            raise UserError(f"--vggish: {exc} (expected torchvggish's vggish-10086976.pth)") from None
    if checkpoint is None:
        say("!" * 78)
        say(f"!! no --checkpoint: {name} has RANDOM weights. The artifact works but segments nothing;")
        say("!! pass the official .pth for real masks.")
        say("!" * 78)
    if vggish is None:
        say("note: no --vggish: VGGish has random weights (pass vggish-10086976.pth for real audio features)")
    return selm.eval(), audio.eval()


def voc_palette(n: int) -> list[list[int]]:
    """The PASCAL-VOC colour map AVSBench uses for its class indices: index bits spread over R, G, B from the top."""
    palette = []
    for index in range(n):
        rgb, value = [0, 0, 0], index
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << (7 - bit)
            value >>= 3
        palette.append(rgb)
    return palette


def output_spec(cfg) -> OutputSpec:
    """Binary (S4/MS3) or 71-class semantic (AVSS) output semantics."""
    if cfg.num_classes == 1:
        return OutputSpec(kind="binary", num_classes=1, activation="sigmoid", threshold=0.5, size=OUTPUT_SIZE,
                          class_names=["background", "sounding object"], palette=[[0, 0, 0], [255, 255, 255]])
    if cfg.num_classes != len(AVSS_CLASSES):
        raise UserError(f"{cfg.name}: {cfg.num_classes} classes, but only the 71 AVSBench-semantic classes are known")
    return OutputSpec(kind="semantic", num_classes=cfg.num_classes, activation="argmax", threshold=None,
                      size=OUTPUT_SIZE, class_names=list(AVSS_CLASSES), palette=voc_palette(cfg.num_classes))


def video_spec(cfg) -> VideoSpec:
    return VideoSpec(resolution=cfg.resolution, channel_order="RGB", resize="bilinear", value_scale=1 / 255,
                     mean=IMAGENET_MEAN, std=IMAGENET_STD, layout="NCHW", frames_per_clip=cfg.frames,
                     frame_rate_hz=FRAME_RATE_HZ)


def audio_spec() -> AudioSpec:
    """VGGish's log-mel front end (torchvggish / AVSBench), one 0.96 s example per video frame."""
    return AudioSpec(sample_rate=16000, mono="mean of channels", int16_scale=1 / 32768, window_length=400,
                     hop_length=160, fft_length=512, window="periodic_hann", spectrum="magnitude", centered=False,
                     mel_bins=64, mel_min_hz=125.0, mel_max_hz=7500.0, mel_scale="htk", log_offset=0.01,
                     example_frames=96, example_hop_frames=96, example_seconds=0.96,
                     layout="[examples, 1, 96 frames, 64 mel bins]")


def tool_versions() -> dict[str, str]:
    """Versions of the tools that made the artifact."""
    versions = {"python": platform.python_version()}
    for dist in ("avs-edge", "torch", "onnx", "onnxscript", "onnxruntime", "numpy", "polygraphy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return versions


def choose_scan(scan: str, window: int) -> str:
    """'auto' -> 'lowered' when the scans are short enough to unroll, else 'plugin'."""
    from export.ops.selective_scan_onnx import MAX_LOWERED_LENGTH

    if scan != "auto":
        return scan
    return "lowered" if window <= MAX_LOWERED_LENGTH else "plugin"


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
    from export.engine import import_tensorrt, probe_gpu, tensorrt_version

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
    from export.engine import (BuildOptions, BuildProgress, EngineBuildError, EngineCache, EngineKey,
                               build_serialized_engine, file_sha256, graph_sha256, tensorrt_version)

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
        options = BuildOptions(precision=args.precision, workspace_gb=args.workspace_gb, timing_cache=timing_cache,
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
    has_cache = trt.__name__ != "tensorrt_rtx" and timing_cache.is_file()
    return EngineStatus(built=True, reason="built, or reused from the engine cache", tensorrt=tensorrt_version(trt),
                        timing_cache=os.path.relpath(timing_cache, out) if has_cache else None,
                        plugin_library=plugin.name if plugin else None, engines=records)


def engine_step(args, env: EngineEnvironment, out: Path, paths: dict[str, Path], fp16_nodes: dict[str, list[str]],
                say: Callable[[str], None]) -> EngineStatus:
    """Build the engines, or say in one line why they were skipped."""
    status = (EngineStatus(built=False, reason=env.reason) if env.reason
              else build_engines(args, env, out, paths, fp16_nodes, say))
    if not status.built:
        say(f"engine build skipped: {status.reason}")
    return status


def check_scan_libraries(scan: str) -> None:
    """``--scan plugin`` validates in ONNX Runtime through our custom-op library: it must be built."""
    if scan != "plugin":
        return
    import plugins

    try:
        plugins.ort_library_path()
    except FileNotFoundError as exc:
        raise UserError(f"--scan plugin: {exc}") from None


def run(args, say: Callable[[str], None] = print) -> int:
    """The whole command; returns the exit status."""
    from export.onnx_export import DEFAULT_OPSET, MIN_OPSET
    from export.validate import DEFAULT_ATOL, DEFAULT_RTOL

    if args.list_models:
        from export.models import list_models

        for name in list_models():
            if name != "vggish":
                say(name + ("   (default for --model selm)" if name == DEFAULT_VARIANT else ""))
        return 0
    name = resolve_model_name(args.model)
    checkpoint = check_readable(args.checkpoint, "--checkpoint") if args.checkpoint else None
    vggish_path = check_readable(args.vggish, "--vggish") if args.vggish else None
    opset = args.opset if args.opset is not None else DEFAULT_OPSET
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset} is too old: the exporter needs opset >= {MIN_OPSET} "
                        f"(try --opset {MIN_OPSET})")
    for flag in ("atol", "rtol", "workspace_gb", "fp16_budget"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise UserError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    out = prepare_out_dir(args.out or Path("artifacts") / name)
    from export.models.selm import SELM_CONFIGS

    scan = choose_scan(args.scan, SELM_CONFIGS[name].frames)
    check_scan_libraries(scan)
    env = engine_environment(args, scan)
    if env.reason and args.engine is True:
        print(f"error: --engine was demanded, but no engine can be built here: {env.reason}", file=sys.stderr)
        return 2
    atol = args.atol if args.atol is not None else DEFAULT_ATOL
    rtol = args.rtol if args.rtol is not None else DEFAULT_RTOL
    stages = Stages(6 if args.precision == "fp16" else 5, say)
    with stages(f"building {name} (seed {args.seed})"):
        import torch

        torch.manual_seed(args.seed)
        selm, vggish = load_models(name, checkpoint, vggish_path, args.gumbel, say)
    return export_artifact(args, name, selm, vggish, checkpoint, vggish_path, out, opset, scan, atol, rtol, env,
                           stages, say)


def export_artifact(args, name, selm, vggish, checkpoint, vggish_path, out, opset, scan, atol, rtol, env, stages,
                    say) -> int:
    """Stages 2..: export, validate, (fp16 check), manifest, engines; returns the exit status."""
    from export.engine import file_sha256, graph_sha256
    from export.onnx_export import export_graph, graph_defs, sample_inputs, tensor_specs
    from export.validate import describe, validate_export

    cfg = selm.cfg
    gumbel_input = args.gumbel == "input"
    reference = graph_defs(selm, vggish, gumbel_input)          # the model as loaded: validation's reference
    defs = graph_defs(copy.deepcopy(selm).fold_inert(), vggish, gumbel_input)   # DAM's inert A2V folded
    noise_shape = tuple(selm.gumbel_noise_shape(cfg.frames)) if gumbel_input else None
    metadata = {"avs.model": name, "avs.manifest_schema": str(SCHEMA_VERSION), "avs.scan": scan}
    with stages(f"exporting ONNX (opset {opset}, scan '{scan}') into {out}"):
        inputs = sample_inputs(reference, cfg, noise_shape, args.seed)
        paths = {}
        for role, gdef in defs.items():
            say(f"      {gdef.file} ...")
            try:
                paths[role] = export_graph(gdef, inputs[role], out, opset, scan, metadata, args.verbose)
            except ValueError as exc:
                raise UserError(f"export of {gdef.file} failed: {exc}") from None
    kind = "binary" if cfg.num_classes == 1 else "semantic"
    with stages("validating: ONNX Runtime vs PyTorch, streaming split vs full graph"):
        records = validate_export(reference, paths, inputs, kind=kind, atol=atol, rtol=rtol, seed=args.seed,
                                  say=lambda line: say("      " + line))
    fp16 = None
    if args.precision == "fp16":
        from export.fp16 import DEFAULT_BUDGET, fp16_sensitivity
        from export.validate import session_options

        with stages("fp16 sensitivity check in ONNX Runtime"):
            fp16 = fp16_sensitivity(paths, "full", inputs["full"], kind=kind,
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
        model=ModelInfo(name=name, family="selm", setting=cfg.setting, backbone=cfg.backbone,
                        checkpoint=digest(checkpoint), vggish_checkpoint=digest(vggish_path),
                        random_weights=checkpoint is None, weights_seed=args.seed, gumbel=args.gumbel),
        opset=opset, scan=scan, precision=args.precision, tools=tool_versions(), graphs=graphs,
        video=video_spec(cfg), audio=audio_spec(), output=output_spec(cfg),
        streaming=StreamingSpec(window=cfg.frames, encoder_frames=1, decoder_frames=1, decode_index=cfg.frames - 1,
                                carry=["pooled", "audio"], frame_rate_hz=FRAME_RATE_HZ),
        validation=records, fp16=fp16,
        engine=EngineStatus(built=False, reason="validation failed" if not passed else "not attempted yet"),
        created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if not passed:
        write_manifest(manifest, out)
        failed = [describe(r) for r in records if not r.passed]
        raise UserError("validation failed (artifact kept for inspection, marked unvalidated): " + " | ".join(failed))
    with stages("writing manifest.json"):
        write_manifest(manifest, out)
    with stages("TensorRT engines"):
        status = engine_step(args, env, out, paths, fp16.keep_fp32_nodes if fp16 else {}, say)
        versions = dict(manifest.tools, **({env.trt.__name__: env.trt.__version__} if env.trt else {}))
        write_manifest(dataclasses.replace(manifest, engine=status, tools=versions), out)
    say(f"artifact ready: {out / 'manifest.json'}")
    return 2 if (args.engine is True and not status.built) else 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point: user errors print one line and exit 1."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
