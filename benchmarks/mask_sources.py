"""COMBO's Maskige sources: wall time per frame at 224 on avs-synth frames (CPU).

    python -m benchmarks.mask_sources                      # 4 clips x 5 frames, the built-in stand-in model
    python -m benchmarks.mask_sources --onnx sam.onnx      # time your own segment-everything model as well

Rows: painting alone (``paint_maskige`` of 64 random box masks, at 224 and from 1024 x 1024 masks, the size SAM's
automatic generator returns for a 1024 frame); ``precomputed`` (reading one published-format palette PNG, written
here from the frames' over-segmentation); ``onnx`` twice: one refresh (model + painting, in the worker) and one
``maskige()`` call of the live loop, frames fed at ``--fps`` to a source refreshing at ``--rate`` Hz, so most calls
reuse the last Maskige (the worker finishes between frames, untimed, as it does when a refresh is shorter than a
frame period); ``overseg`` (Felzenszwalb + painting, every frame). Without ``--onnx`` the model is a
stand-in built here with onnx (channel and brightness thresholds, 12 masks): its refresh time is the source's
overhead, not a real segment-everything model's cost. Each figure is the median over frames of the best of
``--repeats`` passes, as wall time and as this process's CPU time (which a loaded machine inflates less). Machines
are noisy: compare figures within one run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from runtime.datasets.synth import plan_clip, render_frame
from runtime.mask_sources import OnnxMaskSource, OversegmentMaskSource, PrecomputedMaskige
from runtime.maskige import ADE20K_PALETTE, paint_ids, paint_maskige

SIZE = 224


def synthetic_frames(clips: int, seed: int = 0) -> list[np.ndarray]:
    """``clips`` avs-synth test clips, 5 frames each (RGB uint8, 224 x 224)."""
    rng = np.random.default_rng([seed, 14])
    frames = []
    for i in range(clips):
        plan = plan_clip(rng, "s4", "test", f"bench_{i}")
        frames += [render_frame(plan, float(t))[0] for t in range(5)]
    return frames


def random_masks(count: int, side: int, seed: int = 0) -> np.ndarray:
    """``count`` random overlapping box masks ``[count, side, side]``."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, side, side), bool)
    for mask, (top, left), (height, width) in zip(masks, rng.integers(0, side, (count, 2)),
                                                 rng.integers(side // 16, side // 2, (count, 2))):
        mask[top:top + height, left:left + width] = True
    return masks


def stand_in_model(path: Path) -> Path:
    """A segment-everything stand-in: masks = each RGB channel and the brightness above 9 levels (12 masks)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    levels = np.linspace(25, 230, 9, dtype=np.float32)
    inits = [numpy_helper.from_array(np.array([0], np.int64), "axis0"),
             numpy_helper.from_array(np.full((3, 1, 1), 127, np.float32), "channel_level"),
             numpy_helper.from_array(levels[:, None, None], "brightness_levels")]
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Squeeze", ["x", "axis0"], ["chw"]),
             helper.make_node("Greater", ["chw", "channel_level"], ["channels"]),
             helper.make_node("ReduceMean", ["chw"], ["brightness"], axes=[0], keepdims=1),
             helper.make_node("Greater", ["brightness", "brightness_levels"], ["bright"]),
             helper.make_node("Concat", ["channels", "bright"], ["masks"], axis=0)]
    graph = helper.make_graph(nodes, "stand_in", [helper.make_tensor_value_info("image", TensorProto.UINT8,
                                                                                [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("masks", TensorProto.BOOL, [12, "H", "W"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def per_frame(fn: Callable[[int], object], frames: int, repeats: int) -> tuple[float, float]:
    """Medians over frames of the best of ``repeats`` passes of ``fn(i)``: (wall seconds, CPU seconds)."""
    wall, cpu = [float("inf")] * frames, [float("inf")] * frames
    for _ in range(repeats):
        for i in range(frames):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(i)
            cpu[i] = min(cpu[i], time.process_time() - start_cpu)
            wall[i] = min(wall[i], time.perf_counter() - start)
    return statistics.median(wall), statistics.median(cpu)


def _live_call(source: OnnxMaskSource, frame: np.ndarray, timestamp: float) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``maskige()`` call; then, untimed, the worker finishes as between live frames."""
    start, start_cpu = time.perf_counter(), time.process_time()
    source.maskige(frame, timestamp)
    seconds = time.perf_counter() - start, time.process_time() - start_cpu
    source.wait(60)
    return seconds


def write_published_maskiges(folder: Path, frames: list[np.ndarray]) -> None:
    """The frames' over-segmentation as official-format files: ``v_<n>_mask_color.png``, 150-colour palette PNG."""
    from PIL import Image

    source = OversegmentMaskSource(SIZE)
    for n, frame in enumerate(frames, start=1):
        labels = source.labels(frame)
        image = Image.fromarray(paint_ids(labels[None] == np.arange(labels.max() + 1)[:, None, None], SIZE))
        image.putpalette(ADE20K_PALETTE.tobytes())
        image.save(folder / f"v_{n}_mask_color.png")


def run(clips: int, repeats: int, onnx_path: Optional[Path], fps: float,
        rate: float) -> list[tuple[str, tuple[float, float], str]]:
    frames = synthetic_frames(clips)
    count = len(frames)
    rows = []
    for masks in (random_masks(64, SIZE), random_masks(64, 1024)):
        seconds = per_frame(lambda i: paint_maskige(masks, SIZE), 1, repeats * 5)
        rows.append((f"paint 64 masks {masks.shape[1]}x{masks.shape[2]}", seconds, "paint_maskige alone"))
    with tempfile.TemporaryDirectory(prefix="maskige-bench-") as tmp:
        write_published_maskiges(Path(tmp), frames)
        with PrecomputedMaskige(tmp, size=SIZE) as source:
            seconds = per_frame(lambda i: source.maskige(frames[i], float(i)), count, repeats)
            rows.append(("precomputed", seconds, "one palette PNG read + decoded (Pillow)"))
        model = onnx_path or stand_in_model(Path(tmp) / "stand_in.onnx")
        label = "your model" if onnx_path else "stand-in model, 12 masks"
        with OnnxMaskSource(model, rate_hz=rate, size=SIZE) as source:
            seconds = per_frame(lambda i: paint_maskige(source.masks(frames[i]), SIZE), count, repeats)
            rows.append(("onnx, one refresh", seconds, f"{label}: model + painting, in the worker thread"))
            source.maskige(frames[0], 0.0)
            calls = [_live_call(source, frames[i], 1.0 + i / fps) for i in range(count)]
            seconds = statistics.median(c[0] for c in calls), statistics.median(c[1] for c in calls)
            rows.append(("onnx, maskige() call", seconds, f"frames at {fps:g} fps, refreshed at most {rate:g} Hz: "
                                                            f"{source.refreshes} refreshes for {count + 1} frames"))
    with OversegmentMaskSource(SIZE) as source:
        segments = statistics.median(int(source.labels(f).max()) + 1 for f in frames)
        seconds = per_frame(lambda i: source.maskige(frames[i], float(i)), count, repeats)
        rows.append(("overseg", seconds, f"Felzenszwalb + painting, median {segments:g} segments"))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mask_sources", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4, help="avs-synth clips (5 frames each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--onnx", type=Path, help="a segment-everything model (see runtime.mask_sources)")
    parser.add_argument("--fps", type=float, default=8.0, help="frame rate of the live loop, for the onnx source")
    parser.add_argument("--rate", type=float, default=1.0, help="onnx refreshes per second, at most")
    args = parser.parse_args(argv)
    rows = run(args.clips, args.repeats, args.onnx, args.fps, args.rate)
    print(f"Maskige sources at {SIZE} x {SIZE}, {args.clips * 5} avs-synth frames (median ms per frame; CPU = this "
          "process's CPU time, all threads)")
    print(f"  {'source':28s} {'wall':>9s} {'CPU':>9s}")
    for name, (wall, cpu), note in rows:
        print(f"  {name:28s} {1e3 * wall:9.3f} {1e3 * cpu:9.3f}   {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
