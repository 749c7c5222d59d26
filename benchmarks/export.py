"""Export benchmark: export wall time, ONNX Runtime vs PyTorch eager per clip, streaming cost per new frame.

    python -m benchmarks.export [--model selm-s4-r50] [--artifact DIR] [--repeat 3] [--json results.json]

Without ``--artifact`` it first runs ``python -m export.build_engine`` (random weights, no engines) into a
temporary directory and times it. PyTorch is then rebuilt with the artifact's weights (its checkpoint, or its
random-weight seed), and both run on the same random clip on the CPU. Targets (issue 4): ONNX Runtime >= 1.5x
faster than eager per clip; one new frame in streaming (encoder on it, temporal on the window, decoder on it)
<= 1.2x one frame's share of a clip.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):            # run as a file: make the repository's `export` package win over this file
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from export.build_engine import main as build_engine  # noqa: E402
from export.onnx_export import MAP_NAMES  # noqa: E402
from runtime.manifest import load_manifest  # noqa: E402

TARGET_SPEEDUP = 1.5
TARGET_FRAME_SHARE = 1.2


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def export_artifact(model: str, out: Path) -> tuple[float, list[str]]:
    """Run the CLI in-process; wall seconds and its stage lines."""
    buffer = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = build_engine(["--model", model, "--out", str(out), "--no-engine"])
    seconds = time.perf_counter() - start
    lines = buffer.getvalue().splitlines()
    if code != 0:
        raise SystemExit(f"export failed (exit {code}):\n" + "\n".join(lines[-20:]))
    return seconds, [line for line in lines if line.startswith("[") or "done in" in line]


def torch_models(manifest):
    """PyTorch SelM + VGGish with the artifact's weights."""
    from export.models import create_model

    info = manifest.model
    torch.manual_seed(info.weights_seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        selm = create_model(info.name, info.checkpoint.path if info.checkpoint else None, gumbel="none")
        vggish = create_model("vggish", info.vggish_checkpoint.path if info.vggish_checkpoint else None)
    return selm, vggish


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="selm-s4-r50")
    parser.add_argument("--artifact", type=Path, help="reuse this artifact directory instead of exporting")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median; default 3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    results: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
                     "onnxruntime": ort.__version__, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.artifact
        if out is None:
            out = Path(tmp)
            seconds, stages = export_artifact(args.model, out)
            results["export_wall_s"] = round(seconds, 1)
            print(f"export + validation wall time: {seconds:.1f} s")
            for line in stages:
                print("   " + line.strip())
        manifest = load_manifest(out)
        if manifest.model.gumbel != "none":
            raise SystemExit("benchmark artifacts exported with --gumbel none (the default)")
        t = manifest.video.frames_per_clip
        r = manifest.video.resolution
        rng = np.random.default_rng(0)
        clip = {"frames": rng.standard_normal((t, 3, r, r), dtype=np.float32),
                "log_mel": rng.uniform(-4.6, 3.0, size=(t, 1, 96, 64)).astype(np.float32)}
        sessions = {role: ort.InferenceSession(str(out / g.file), providers=["CPUExecutionProvider"])
                    for role, g in manifest.graphs.items()}
        selm, vggish = torch_models(manifest)

        def eager():
            with torch.inference_mode():
                return selm(torch.from_numpy(clip["frames"]), vggish(torch.from_numpy(clip["log_mel"])))

        ort_clip = timed(lambda: sessions["full"].run(None, clip), args.repeat)
        torch_clip = timed(eager, args.repeat)
        diff = float(np.abs(sessions["full"].run(None, clip)[0] - eager().numpy()).max())

        newest = {"frame": clip["frames"][-1:], "log_mel": clip["log_mel"][-1:]}
        encoded = dict(zip([o.name for o in sessions["encoder"].get_outputs()], sessions["encoder"].run(None, newest)))
        window = {"pooled": np.repeat(encoded["pooled"], t, 0), "audio": np.repeat(encoded["audio"], t, 0)}
        gates, audio_out = sessions["temporal"].run(None, window)
        decoder_feeds = {name: encoded[name] for name in MAP_NAMES}
        decoder_feeds.update(gates=gates[-1:], audio_out=audio_out[-1:])
        parts = {"encoder": timed(lambda: sessions["encoder"].run(None, newest), args.repeat),
                 "temporal": timed(lambda: sessions["temporal"].run(None, window), args.repeat),
                 "decoder": timed(lambda: sessions["decoder"].run(None, decoder_feeds), args.repeat)}
    per_frame = sum(parts.values())
    share = ort_clip / t
    results.update(model=manifest.model.name, frames_per_clip=t, repeat=args.repeat,
                   onnxruntime_clip_s=round(ort_clip, 3), torch_eager_clip_s=round(torch_clip, 3),
                   speedup=round(torch_clip / ort_clip, 2), max_abs_diff=diff,
                   streaming_parts_s={k: round(v, 3) for k, v in parts.items()},
                   streaming_frame_s=round(per_frame, 3), clip_share_per_frame_s=round(share, 3),
                   frame_vs_share=round(per_frame / share, 2), frame_vs_window_recompute=round(ort_clip / per_frame, 2))
    print(f"\n{manifest.model.name}, T={t}, CPU, median of {args.repeat}")
    print(f"  one clip: ONNX Runtime {ort_clip:.2f} s, PyTorch eager {torch_clip:.2f} s -> "
          f"{torch_clip / ort_clip:.2f}x (target >= {TARGET_SPEEDUP}x); max abs diff {diff:.2g}")
    print(f"  one new frame streaming: encoder {parts['encoder']:.3f} + temporal {parts['temporal']:.3f} + "
          f"decoder {parts['decoder']:.3f} = {per_frame:.3f} s")
    print(f"  vs one frame's share of a clip {share:.3f} s -> {per_frame / share:.2f}x (target <= "
          f"{TARGET_FRAME_SHARE}x); {ort_clip / per_frame:.1f}x cheaper than recomputing the window")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
