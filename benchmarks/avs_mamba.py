"""AVS-Mamba on the CPU: PyTorch eager (our scan op) vs ONNX Runtime (our custom-op library), per clip and per new
frame, with peak memory, the scan's share, the largest scans against mamba's reference algorithm and the cost of the
explicit direction flips (issue 12, item 5).

    python -m benchmarks.avs_mamba [--model avs-mamba-s4-r50 | --pvt] [--resolution 224] [--repeats 3]

The model (random weights) is exported once with ``export.onnx_export`` (scans as ``avs::SelectiveScan`` nodes);
every measurement then runs in a fresh subprocess, so that one does not inflate the next's peak RSS ("peak MB":
that process's VmHWM; "base MB": its RSS once the libraries are imported, before the model or graph loads).
Per new frame is the streaming step: the encoder on the newest frame, the temporal part on the window of T cached
encoder outputs, the head on the newest frame. Times are medians of --repeats runs after one warm-up, fewer (at
least one) once a measurement has taken TIME_BUDGET_S: at 224 one eager clip takes minutes on two cores.

* Shares: eager wraps the op, ``_directions`` and ``_merge`` with timers; ONNX Runtime's profiler gives the
  SelectiveScan nodes' kernel time and the flips' (Slice nodes with a negative step).
* Largest scans: the op, our ONNX Runtime kernel and mamba's reference algorithm (``benchmarks/scan.py``'s
  baseline: (B, D, L, N) tensors, then a loop over L) on one scan of each of the three largest AVS-Mamba shapes,
  with that benchmark's inputs (ungrouped B/C, with z); the reference runs once, and not at all when its two
  (B, D, L, N) fp32 tensors would exceed --reference-max-gb.
* Flips: the explicit flips/permutes/concats that build the K direction sequences (``_directions``) and merge them
  back (``_merge``), against the scan between them, for the same blocks with the model's exact inputs (issue 12,
  item 2's alternative to a reverse flag in the op).

Targets (issue 12): ONNX Runtime clip time <= 0.5x eager; the exported graph's peak memory below 4 GB.
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

TARGET_RATIO = 0.5
TARGET_PEAK_GB = 4.0
LARGEST = 3                # the largest AVS-Mamba scans compared with the reference and timed with their flips
SEED = 0
TIME_BUDGET_S = 120.0      # a measurement stops repeating (after one timed call) once it took this long


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    """This process's peak RSS (VmHWM: reset by exec, unlike ``ru_maxrss``, which a child inherits from its parent)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _timed(fn, repeats: int):
    """(median seconds of up to ``repeats`` calls after one warm-up call, the last call's result). Calls stop early,
    after at least one, once the warm-up and the calls so far took TIME_BUDGET_S (eager scans take minutes)."""
    start = time.perf_counter()
    out = fn()
    times = []
    while len(times) < repeats and (not times or time.perf_counter() - start < TIME_BUDGET_S):
        begin = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - begin)
    return statistics.median(times), out


def _median_s(fn, repeats: int) -> float:
    """Median seconds of :func:`_timed`."""
    return _timed(fn, repeats)[0]


def _block(batch: int, dim: int, length: int, groups: int, frames: int, resolution: int) -> str:
    """Which block of the model runs a scan of this shape (K = G directions over T frames of a clip)."""
    coarse = frames * sum((resolution // k) ** 2 for k in (8, 16, 32))
    if groups == 8:
        return "MTE Temporal Mamba" if length == coarse else f"CIP Mamba3D, T x {math.isqrt(length // frames)}^2"
    if batch % frames == 0 and batch > 1:
        return "MTE VSS" if length * frames == coarse else "MAD frame-level V2A"
    return f"CIP A2V / MAD V2A, T x {math.isqrt((length - frames) // frames)}^2 + T"


# ----------------------------------------------------------------------------------------------------------------
# Parent: export once, then one subprocess per measurement
# ----------------------------------------------------------------------------------------------------------------

def export(name: str, resolution: int, work: Path) -> dict:
    """Random-weight ``name`` at ``resolution``: its four ONNX graphs, its weights and the sample feeds in ``work``."""
    import torch

    from export.models import create_model
    from export.onnx_export import export_graph, export_graphs, sample_inputs

    torch.manual_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = create_model(name, resolution=resolution)
    _, defs = export_graphs(model, None, False)
    feeds = sample_inputs(defs, model.cfg, None, SEED)
    seconds = {}
    for role, gdef in defs.items():
        start = time.perf_counter()
        export_graph(gdef, feeds[role], work, 18, "plugin", {})
        seconds[role] = time.perf_counter() - start
    torch.save(model.state_dict(), work / "weights.pt")
    np.savez(work / "clip.npz", **feeds["full"])
    return {"frames": model.cfg.frames, "export_s": seconds}


def _child(*args: str) -> dict | None:
    """Run one measurement in a fresh interpreter; its JSON result, or None (printed why) when it failed."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.avs_mamba", "--child", *args], capture_output=True,
                          text=True)
    if proc.returncode:
        tail = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"
        print(f"  {' '.join(args[:2])} failed: {tail}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------------
# Children
# ----------------------------------------------------------------------------------------------------------------

class _Timers:
    """Wraps module-level functions of ``export.models.avs_mamba`` with accumulating wall-clock timers."""

    def __init__(self, module, names: tuple[str, ...]):
        self.seconds = dict.fromkeys(names, 0.0)
        for name in names:
            setattr(module, name, self._timed(name, getattr(module, name)))

    def _timed(self, name: str, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - start
            return out
        return wrapper


def _eager(mode: str, name: str, resolution: int, work: Path, repeats: int) -> dict:
    """PyTorch eager with our op: one clip (``forward``) or one streaming step."""
    import torch

    import export.models.avs_mamba as avs_mamba
    from export.models import create_model

    base = _rss_mb()
    timers = _Timers(avs_mamba, ("selective_scan", "_directions", "_merge"))
    shapes: Counter = Counter()
    scan = avs_mamba.selective_scan

    def recorded(u, delta, A, B, C, *args, **kwargs):
        shapes[(*u.shape, A.shape[1], B.shape[1] if B.dim() == 4 else 1)] += 1
        return scan(u, delta, A, B, C, *args, **kwargs)

    avs_mamba.selective_scan = recorded
    model = create_model(name, torch.load(work / "weights.pt"), resolution=resolution)
    clip = {k: torch.from_numpy(v) for k, v in np.load(work / "clip.npz").items()}
    frames, log_mel = clip["frames"], clip["log_mel"]
    with torch.inference_mode():
        if mode == "clip":
            def step():
                return model(frames, log_mel)
        else:
            audio, maps = model.encode_frames(frames, log_mel)                    # the cache, filled beforehand

            def step():
                new_audio, new_maps = model.encode_frames(frames[-1:], log_mel[-1:])
                window = [torch.cat([m[1:], n]) for m, n in zip(maps, new_maps)]
                mask_features, queries = model.fuse_features(torch.cat([audio[1:], new_audio]), window)
                return model.decode(mask_features[-1:], queries[-1][-1:])
        runs = []

        def counted():
            runs.append(1)
            return step()

        start = time.perf_counter()
        seconds, out = _timed(counted, repeats)        # the timers see the same runs as this wall clock
        wall, spent = time.perf_counter() - start, dict(timers.seconds)
        np.save(work / f"eager-{mode}.npy", out.numpy())
    return {"seconds": seconds, "scan_share": spent["selective_scan"] / wall,
            "flips_share": (spent["_directions"] + spent["_merge"]) / wall, "base_mb": base, "peak_mb": _peak_mb(),
            "scans": [[*shape, calls // len(runs)] for shape, calls in shapes.items()]}


def _flip_nodes(path: Path) -> set[str]:
    """Names of the graph's flips: Slice nodes with a negative step (``torch.flip`` exports to them)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {t.name: t for t in graph.initializer}
    constants.update({n.output[0]: a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                      if a.name == "value"})
    return {n.name for n in graph.node if n.op_type == "Slice" and len(n.input) > 4 and n.input[4] in constants
            and (numpy_helper.to_array(constants[n.input[4]]) < 0).any()}


def _ort_shares(path: Path, feeds: dict, library: str, work: Path) -> tuple[float, float]:
    """Shares of one profiled run of the graph at ``path``: the SelectiveScan nodes', and the flips' (Slice nodes
    with a negative step: what a per-direction reverse flag in the op would remove)."""
    import onnxruntime as ort

    flips = _flip_nodes(path)
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    options.enable_profiling = True
    options.profile_file_prefix = str(work / f"profile-{path.stem}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    run = sum(e["dur"] for e in events if e.get("name") == "model_run")
    scan = flip = 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            scan += e["dur"] if e.get("args", {}).get("op_name") == "SelectiveScan" else 0
            flip += e["dur"] if e["name"].removesuffix("_kernel_time") in flips else 0
    if not run:
        return float("nan"), float("nan")
    return scan / run, flip / run


def _ort(mode: str, work: Path, repeats: int) -> dict:
    """ONNX Runtime (CPU provider + our library): the full graph on one clip, or one streaming step."""
    import onnxruntime as ort

    import plugins
    from export.onnx_export import GRAPH_FILES
    from runtime.backends.onnxruntime import session_options

    base = _rss_mb()
    library = plugins.ort_library_path()
    options = session_options(uses_custom_ops=True)            # as the runtime opens these graphs
    clip = dict(np.load(work / "clip.npz"))
    roles = ("full",) if mode == "clip" else ("encoder", "temporal", "decoder")
    sessions = {r: ort.InferenceSession(str(work / GRAPH_FILES[r]), options, providers=["CPUExecutionProvider"])
                for r in roles}
    if mode == "clip":
        feeds = {"clip": clip}

        def step():
            return sessions["full"].run(None, clip)[0]
    else:
        encoder, temporal = sessions["encoder"], sessions["temporal"]
        names = [o.name for o in encoder.get_outputs()]
        rows = [encoder.run(None, {"frame": clip["frames"][i:i + 1], "log_mel": clip["log_mel"][i:i + 1]})
                for i in range(len(clip["frames"]))]
        cache = {n: np.concatenate([r[k] for r in rows]) for k, n in enumerate(names)}   # the T cached outputs
        newest = {"frame": clip["frames"][-1:], "log_mel": clip["log_mel"][-1:]}
        feeds = {"temporal": {n: cache[n] for n in (i.name for i in temporal.get_inputs())}}

        def step():
            new = dict(zip(names, encoder.run(None, newest)))
            window = {n: np.concatenate([cache[n][1:], new[n]]) for n in feeds["temporal"]}
            mask_features, query = temporal.run(None, window)
            return sessions["decoder"].run(None, {"mask_features": mask_features[-1:], "query": query[-1:]})[0]
    seconds, out = _timed(step, repeats)
    np.save(work / f"ort-{mode}.npy", out)
    peak = _peak_mb()
    del sessions
    role = "full" if mode == "clip" else "temporal"
    scan, flips = _ort_shares(work / GRAPH_FILES[role], feeds["clip" if mode == "clip" else "temporal"], library,
                               work)
    return {"seconds": seconds, "scan_share": scan, "flips_share": flips, "shares_of": role, "base_mb": base,
            "peak_mb": peak}


def _scan(method: str, batch: int, dim: int, dstate: int, length: int, work: Path, repeats: int) -> dict:
    """One scan with benchmarks/scan.py's inputs and runners (our op, our ORT kernel or mamba's reference)."""
    from benchmarks.scan import _inputs, _runner

    data = _inputs(batch, dim, dstate, length)
    run = _runner({"op": "torch-op", "kernel": "cpp-kernel", "reference": "baseline-ref"}[method], data, work)
    base = _rss_mb()
    if method == "reference":                     # once: it allocates gigabytes and loops over L in Python
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
    else:
        seconds = _median_s(run, repeats)
    return {"seconds": seconds, "extra_mb": max(_peak_mb() - base, 0.0)}


def _flips(batch: int, dim: int, dstate: int, length: int, groups: int, frames: int, resolution: int,
           repeats: int) -> dict:
    """Building and merging the K direction sequences of the block that runs a scan of this shape (as the model
    does: ``_directions``, the audio tokens' concat, ``_merge``), against that scan, with random model-sized inputs.
    """
    import torch

    import export.models.avs_mamba as am
    from export.ops.selective_scan import selective_scan

    t, d = frames, dim // groups
    g = torch.Generator().manual_seed(SEED)
    block = _block(batch, dim, length, groups, frames, resolution)
    if block == "MTE Temporal Mamba":
        sides, orders, layout, audio = [resolution // k for k in (8, 16, 32)], am.TemporalMambaBlock.ORDERS, \
            am._PAIRS, 0
    elif block.startswith("CIP Mamba3D"):
        sides, orders, layout, audio = [math.isqrt(length // t)], am.TemporalMambaBlock.ORDERS, am._PAIRS, 0
    elif block.startswith("CIP A2V"):             # A2V's layout: T audio tokens, then the visual sequence
        sides, orders, layout, audio = [math.isqrt((length - t) // t)], ("thw", "twh"), am._HALVES, t
    else:
        raise ValueError(f"no flip measurement for {block} ({batch}x{dim}x{length}, G={groups})")
    xs = [torch.randn(batch, d, t, h, h, generator=g) for h in sides]
    seq_a = torch.randn(batch, groups, d, audio, generator=g)
    shapes = [x.shape[2:] for x in xs]

    def build():
        seqs = am._directions(xs, orders, layout)
        return torch.cat([seq_a, seqs], dim=-1) if audio else seqs

    def merge(y):
        return am._merge(y[..., audio:], shapes, orders, layout)

    with torch.inference_mode():
        seq = build()
        if tuple(seq.shape) != (batch, groups, d, length):
            raise RuntimeError(f"{block}: built {tuple(seq.shape)}, the scan is {(batch, groups, d, length)}")
        u = seq.reshape(batch, dim, length).contiguous()
        scan_in = dict(delta=torch.rand(batch, dim, length, generator=g) * 5 - 4,
                       A=-torch.arange(1, dstate + 1, dtype=torch.float32).repeat(dim, 1),
                       B=torch.randn(batch, groups, dstate, length, generator=g),
                       C=torch.randn(batch, groups, dstate, length, generator=g),
                       D=torch.ones(dim), delta_bias=torch.rand(dim, generator=g) - 1, delta_softplus=True)
        y = selective_scan(u, **scan_in).reshape(seq.shape)
        return {"block": block, "build_s": _median_s(build, repeats), "merge_s": _median_s(lambda: merge(y), repeats),
                "scan_s": _median_s(lambda: selective_scan(u, **scan_in), repeats)}


def _run_child(args: list[str]) -> dict:
    kind, what, *rest = args
    if kind == "eager":
        name, resolution, work, repeats = rest
        return _eager(what, name, int(resolution), Path(work), int(repeats))
    if kind == "ort":
        work, repeats = rest
        return _ort(what, Path(work), int(repeats))
    if kind == "scan":
        *shape, work, repeats = rest
        return _scan(what, *map(int, shape), Path(work), int(repeats))
    return _flips(*map(int, (what, *rest)))


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.avs_mamba", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="avs-mamba-s4-r50", help="registered AVS-Mamba variant "
                        "(default: %(default)s)")
    parser.add_argument("--pvt", action="store_true", help="the PVT-v2-b5 variant of --model's setting")
    parser.add_argument("--resolution", type=int, help="input side, a multiple of 32 (default: the variant's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, median (default 3)")
    parser.add_argument("--reference-max-gb", type=float, default=5.0,
                        help="skip mamba's reference algorithm on scans whose (B, D, L, N) tensors exceed this")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_run_child(args.child)))
        return 0
    name = args.model.replace("-r50", "-pvt") if args.pvt else args.model
    if not name.startswith("avs-mamba-"):
        parser.error(f"--model {name}: this benchmark is for the avs-mamba-* variants")

    import onnxruntime as ort
    import torch

    from export.models._registry import pretrained_cfg

    resolution = args.resolution or pretrained_cfg(name).input_size
    if resolution % 32:
        parser.error(f"--resolution {resolution}: AVS-Mamba needs a multiple of 32")
    print(f"AVS-Mamba benchmark: {name} at {resolution}x{resolution}, random weights; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}; median of up to {args.repeats} runs "
          f"(fewer past {TIME_BUDGET_S:.0f} s)")
    with tempfile.TemporaryDirectory(prefix="avs-mamba-bench-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        info = export(name, resolution, work)
        print(f"export: {time.perf_counter() - start:.0f} s ("
              + ", ".join(f"{r} {s:.0f} s" for r, s in info["export_s"].items()) + f"), T = {info['frames']}")
        rep = str(args.repeats)
        eager = {m: _child("eager", m, name, str(resolution), tmp, rep) for m in ("clip", "frame")}
        onnx = {m: _child("ort", m, tmp, rep) for m in ("clip", "frame")}

        print(f"\n{'':<28}{'time ms':>10}{'scan share':>12}{'flips share':>13}{'base MB':>9}{'peak MB':>9}")
        for mode in ("clip", "frame"):
            e, o = eager[mode], onnx[mode]
            label = "per clip" if mode == "clip" else "per new frame"
            if e:
                print(f"{'eager (our op), ' + label:<28}{_ms(e['seconds']):>10}{e['scan_share']:>12.1%}"
                      f"{e['flips_share']:>13.1%}{e['base_mb']:>9.0f}{e['peak_mb']:>9.0f}")
            if o:
                note = "" if mode == "clip" else f"  (shares: {o['shares_of']} graph)"
                print(f"{'ONNX Runtime, ' + label:<28}{_ms(o['seconds']):>10}{o['scan_share']:>12.1%}"
                      f"{o['flips_share']:>13.1%}"
                      f"{o['base_mb']:>9.0f}{o['peak_mb']:>9.0f}{note}")
        print("flips: eager, the time in _directions/_merge; ONNX Runtime, its Slice nodes with a negative step")
        for mode in ("clip", "frame"):
            if eager[mode] and onnx[mode]:
                diff = float(np.abs(np.load(work / f"ort-{mode}.npy") - np.load(work / f"eager-{mode}.npy")).max())
                print(f"max |ONNX Runtime - eager| of the logits, {mode}: {diff:.2e}")
        if eager["clip"] and onnx["clip"]:
            ratio = onnx["clip"]["seconds"] / eager["clip"]["seconds"]
            print(f"target: ONNX Runtime clip <= {TARGET_RATIO}x eager: {ratio:.2f}x, "
                  f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")
        peaks = [o["peak_mb"] for o in onnx.values() if o]
        if peaks:
            worst = max(peaks) / 1024
            print(f"target: exported graphs' peak memory < {TARGET_PEAK_GB:g} GB: {worst:.2f} GB (whole process), "
                  f"{'met' if worst < TARGET_PEAK_GB else 'NOT met'}")
        if not eager["clip"]:
            return 1
        scans = sorted(eager["clip"]["scans"], key=lambda c: c[0] * c[1] * c[2], reverse=True)
        print(f"\n{len(scans)} distinct scans, {sum(c[-1] for c in scans)} calls per clip; the {LARGEST} largest:")
        print(f"{'scan (batch x D x L, G)':<58}{'our op':>14}{'our ORT kernel':>16}{'mamba reference':>18}"
              f"{'ref / op':>10}")
        print(f"{'  time ms / extra MB; benchmarks/scan.py inputs (G=1, z)':<58}")
        for batch, dim, length, dstate, groups, calls in scans[:LARGEST]:
            shape = [str(v) for v in (batch, dim, dstate, length)]
            results = {m: _child("scan", m, *shape, tmp, rep) for m in ("op", "kernel")}
            need_gb = 2 * batch * dim * length * dstate * 4 / 2**30
            if need_gb <= args.reference_max_gb:
                results["reference"] = _child("scan", "reference", *shape, tmp, rep)
            cells = [f"{_ms(r['seconds'])} / {r['extra_mb']:.0f}" if r else "failed"
                     for r in (results.get(m) for m in ("op", "kernel"))]
            ref = results.get("reference")
            ref_cell = (f"{_ms(ref['seconds'])} / {ref['extra_mb']:.0f}" if ref
                        else f"skipped: ~{need_gb:.1f} GB" if "reference" not in results else "failed")
            speed = f"{ref['seconds'] / results['op']['seconds']:.1f}x" if ref and results["op"] else "-"
            label = (f"{_block(batch, dim, length, groups, info['frames'], resolution)} "
                     f"({batch}x{dim}x{length}, G={groups}) x{calls}")
            print(f"{label:<58}{cells[0]:>14}{cells[1]:>16}{ref_cell:>18}{speed:>10}")

        print(f"\nDirection flips around those scans (the model's inputs, eager), ms:")
        print(f"{'block':<58}{'build':>9}{'scan':>9}{'merge':>9}{'flips / scan':>14}")
        for batch, dim, length, dstate, groups, calls in scans[:LARGEST]:
            r = _child("flips", *(str(v) for v in (batch, dim, dstate, length, groups, info["frames"], resolution)),
                       rep)
            if r:
                label = f"{r['block']} ({batch}x{dim}x{length}, G={groups})"
                print(f"{label:<58}{_ms(r['build_s']):>9}{_ms(r['scan_s']):>9}{_ms(r['merge_s']):>9}"
                      f"{(r['build_s'] + r['merge_s']) / r['scan_s']:>14.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
