"""What each Maskige source costs a trained COMBO: M_J / M_F and time per frame on avs-synth's held-out test clips.

    python -m benchmarks.combo_sources --model-dir runs/combo-demo/artifact [--data runs/demo/synth-test] [--clips N]

The artifact (``combo-s4-demo``, trained on over-segmentation Maskiges by ``python -m export.train_combo_demo``)
runs through ONNX Runtime with avs-eval's code (``runtime.Segmenter.segment_log_mel`` per clip, the official
metric), once per source:

* ``overseg``: Felzenszwalb per frame, what the demo was trained with (the artifact's default source);
* ``overseg, N s old``: the over-segmentation of the scene N seconds before each frame (the generator re-renders
  it), what an asynchronous source refreshed once a second gives: at 1 Hz a Maskige is 0.5 s old on average and
  1 s at worst (the ``onnx:PATH@HZ`` source's reuse; its own worker thread carries the cost, one refresh per
  second);
* ``oracle (true objects)``: the generator's true masks of every object (sounding or not) painted with
  ``runtime.maskige`` and written as published-format palette PNGs beside a mirror of the test set, read back by
  ``--mask-source precomputed`` (``runtime.evaluate.PublishedMaskiges``): a perfect segment-everything model;
* ``blank``: the Maskige of no masks (uniform id 0), what a missing source costs;
* ``onnx stand-in``: ``benchmarks.mask_sources.stand_in_model`` (12 colour- and brightness-threshold masks, a
  real ONNX graph through ``onnx:PATH``, refreshed every frame): a crude source the model never saw;
* a reference row without the model: background predicted everywhere (the score of segmenting nothing).

The test clips' generator plans are rebuilt from the seed the data was written with (``--seed``, the demo's
``export.train_demo.TEST_SEED``) and checked against the stored frames. "Maskige ms" is the source's own time per
frame in the caller's thread (for the aged rows that includes re-rendering the scene, which a live source does not
pay); "total ms" is the whole per-frame wall time (source, model, decoding). CPU figures on a shared machine:
compare within one run.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from runtime.datasets import synth
from runtime.datasets.avsbench import AVSBench, Clip
from runtime.evaluate import PublishedMaskiges, evaluate, segmenter_predictor
from runtime.mask_sources import MaskSource, OversegmentMaskSource, maskige_path
from runtime.maskige import ADE20K_PALETTE, paint_ids, paint_maskige

__all__ = ["test_plans", "AgedOverseg", "BlankMaskige", "TimedSource", "write_oracle_mirror", "run", "main"]


def test_plans(data: Path, seed: int, count: int) -> dict[str, synth.ClipPlan]:
    """The avs-synth S4 test split's first ``count`` clip plans, rebuilt from ``seed`` as ``synth.write_dataset``
    draws them; raises ValueError when the stored frames are not what the plans render (another seed)."""
    code = synth.SPLITS.index("test")
    plans = {}
    for index in range(count):
        rng = np.random.default_rng([seed, synth.TASKS.index("s4"), code, index])
        plan = synth.plan_clip(rng, "s4", "test", f"synths4_{seed}_test_{index:05d}")
        plans[plan.name] = plan
    first = next(iter(plans.values()))
    stored = data / "Single-source" / "s4_data" / "visual_frames" / "test" / first.category / first.name
    frame = cv2.imread(str(stored / f"{first.name}_1.png"), cv2.IMREAD_COLOR)
    if frame is None or not np.array_equal(frame[:, :, ::-1], synth.render_frame(first, 0.0)[0]):
        raise ValueError(f"{data} is not the avs-synth S4 test split of seed {seed} ({stored} missing or different); "
                         "pass the seed it was written with (--seed)")
    return plans


class _PlannedSource(MaskSource):
    """A source that knows the clip being scored (``select``), for Maskiges drawn from the generator's plan."""

    def __init__(self, plans: dict[str, synth.ClipPlan], size: int):
        super().__init__(size)
        self.plans, self.plan = plans, None

    def select(self, clip: Clip) -> None:
        self.plan = self.plans[clip.name]

    def _second(self, timestamp: float) -> int:
        # Segmenter.segment_log_mel stamps frame i at 0.975 + 0.96 i s: inside second i for the 5 frames.
        return math.floor(float(timestamp) + 1e-6)


class AgedOverseg(_PlannedSource):
    """``overseg`` of the scene ``age`` seconds before each frame (after, for the frames before ``age``): a Maskige
    refreshed asynchronously and reused since.

    Args:
        plans: clip name -> its generator plan. age: seconds. size: the model's input side.
    """

    def __init__(self, plans: dict[str, synth.ClipPlan], age: float, size: int):
        super().__init__(plans, size)
        self.age, self.overseg = float(age), OversegmentMaskSource(size)

    def maskige(self, frame_rgb: np.ndarray, timestamp: float) -> np.ndarray:
        # The generator renders no negative times: a frame younger than ``age`` gets the scene ``age`` s later, the
        # same displacement.
        second = self._second(timestamp)
        other = synth.render_frame(self.plan, second - self.age if second >= self.age else second + self.age)[0]
        return self.overseg.maskige(other, timestamp)

    def describe(self) -> str:
        return f"overseg of the scene {self.age:g} s earlier (an asynchronous source's reused Maskige)"


class BlankMaskige(MaskSource):
    """The Maskige of no masks (every pixel id 0, ADE20K colour 0): what the model sees when a source has nothing."""

    def __init__(self, size: int):
        super().__init__(size)
        self.image = paint_maskige(np.zeros((0, size, size), bool), size)

    def maskige(self, frame_rgb: np.ndarray, timestamp: float) -> np.ndarray:
        return self.image

    def describe(self) -> str:
        return "blank Maskige (no masks)"


class TimedSource(MaskSource):
    """Another source, timed: ``seconds`` and ``frames`` add up what its ``clip_maskiges`` calls took."""

    def __init__(self, inner: MaskSource):
        super().__init__(inner.size)
        self.inner, self.seconds, self.frames = inner, 0.0, 0

    def select(self, clip: Clip) -> None:
        if hasattr(self.inner, "select"):
            self.inner.select(clip)

    def maskige(self, frame_rgb: np.ndarray, timestamp: float) -> np.ndarray:
        return self.clip_maskiges([frame_rgb], [timestamp])[0]

    def clip_maskiges(self, frames_rgb: Sequence[np.ndarray], timestamps: Sequence[float]) -> list[np.ndarray]:
        start = time.perf_counter()
        out = self.inner.clip_maskiges(frames_rgb, timestamps)
        self.seconds += time.perf_counter() - start
        self.frames += len(out)
        return out

    def describe(self) -> str:
        return self.inner.describe()

    def close(self) -> None:
        self.inner.close()


def write_oracle_mirror(data: Path, plans: dict[str, synth.ClipPlan], out: Path) -> Path:
    """A mirror of the test split in ``out`` (links to its files) with a ``pre_SAM_mask/`` of published-format
    Maskiges painted from every object's true mask, as COMBO's release names them; returns ``out``."""
    from PIL import Image

    source, mirror = data / "Single-source", out / "Single-source"
    (mirror / "s4_data").mkdir(parents=True)
    for item in source.iterdir():
        if item.name != "s4_data":
            (mirror / item.name).symlink_to(item.resolve())
    for item in (source / "s4_data").iterdir():
        (mirror / "s4_data" / item.name).symlink_to(item.resolve())
    for plan in plans.values():
        folder = mirror / "s4_data" / "visual_frames" / "test" / plan.category / plan.name
        for k in range(synth.FRAMES):
            labels = synth.render_frame(plan, float(k))[1]
            masks = labels[None] == np.arange(len(plan.objects))[:, None, None]
            path = maskige_path(folder / f"{plan.name}_{k + 1}.png")
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(paint_ids(masks, synth.SIZE))
            image.putpalette(ADE20K_PALETTE.tobytes())
            image.save(path)
    return out


def _score(model_dir: Path, data: Path, source: MaskSource, clips: int) -> dict:
    """One source through the artifact on ``clips`` test clips: metrics and time per frame."""
    from runtime.segmenter import Segmenter

    timed = TimedSource(source)
    with Segmenter(model_dir, backend="onnxruntime", mask_source=timed, say=lambda line: None) as segmenter:
        inner = segmenter_predictor(segmenter)

        def predict(clip: Clip) -> np.ndarray:
            timed.select(clip)
            return inner(clip)

        resolution = segmenter.manifest.video.resolution
        report = evaluate(AVSBench(str(data), "s4", "test", resolution), predict, limit=clips, progress=False)
    frames = timed.frames
    return {"M_J": report["metrics"]["official"]["M_J"], "M_F": report["metrics"]["official"]["M_F"],
            "silent_area": report["silence"]["mean_area"], "frames": frames,
            "maskige_ms": 1e3 * timed.seconds / frames, "total_ms": 1e3 * report["seconds"] / frames,
            "source": source.describe()}


def run(model_dir: Path, data: Path, clips: int, seed: int, ages: Sequence[float],
        say: Callable[[str], None] = print) -> list[tuple[str, dict]]:
    """Every row of the table (see the module docstring): ``[(name, result)]``."""
    from benchmarks.mask_sources import stand_in_model
    from runtime.manifest import load_manifest
    from runtime.mask_sources import open_mask_source

    manifest = load_manifest(model_dir)
    if manifest.maskige is None:
        raise SystemExit(f"{model_dir} is a {manifest.model.name} artifact without a Maskige input; pass a COMBO "
                         "artifact (python -m export.train_combo_demo makes runs/combo-demo/artifact)")
    size = manifest.video.resolution
    clips = min(clips, len(AVSBench(str(data), "s4", "test", size)))
    plans = test_plans(data, seed, clips)
    rows = []
    with tempfile.TemporaryDirectory(prefix="combo-sources-") as tmp:
        mirror = write_oracle_mirror(data, plans, Path(tmp) / "oracle")
        sources: list[tuple[str, Callable[[], MaskSource], Path]] = [
            ("overseg (trained with)", lambda: OversegmentMaskSource(size), data),
            *((f"overseg, {age:g} s old", lambda age=age: AgedOverseg(plans, age, size), data) for age in ages),
            ("oracle (true objects)", lambda: PublishedMaskiges(size), mirror),
            ("blank", lambda: BlankMaskige(size), data),
            ("onnx stand-in, 12 masks", lambda: open_mask_source(f"onnx:{stand_in_model(Path(tmp) / 'stand_in.onnx')}"
                                                                 "@100", size), data)]
        for name, make, root in sources:
            result = _score(model_dir, root, make(), clips)
            say(f"  {name:26s} M_J {result['M_J']:.4f}  M_F {result['M_F']:.4f}  Maskige {result['maskige_ms']:7.2f} ms"
                f"  total {result['total_ms']:7.2f} ms")
            rows.append((name, result))
    floor = evaluate(AVSBench(str(data), "s4", "test", size),
                     lambda clip: np.zeros((clip.num_frames, size, size), np.float32), limit=clips, progress=False)
    rows.append(("(no model: background everywhere)", {
        "M_J": floor["metrics"]["official"]["M_J"], "M_F": floor["metrics"]["official"]["M_F"],
        "silent_area": 0.0, "frames": 5 * clips, "maskige_ms": 0.0, "total_ms": 0.0, "source": "reference"}))
    return rows


def main(argv: Optional[list] = None) -> int:
    from export.train_demo import TEST_SEED

    parser = argparse.ArgumentParser(prog="python -m benchmarks.combo_sources", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=Path("runs/combo-demo/artifact"),
                        help="a combo-s4-demo artifact (default: %(default)s)")
    parser.add_argument("--data", type=Path, default=Path("runs/demo/synth-test"),
                        help="the demo's avs-synth test set (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=TEST_SEED, help="the seed --data was written with")
    parser.add_argument("--clips", type=int, default=300, help="test clips scored per source (5 frames each)")
    parser.add_argument("--ages", type=float, nargs="*", default=[0.5, 1.0],
                        help="ages (s) of the reused over-segmentation rows (default: %(default)s: 1 Hz mean, worst)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    print(f"COMBO Maskige sources: {args.model_dir} on {args.data} test, ONNX Runtime, {args.clips} clips")
    rows = run(args.model_dir, args.data, args.clips, args.seed, args.ages)
    print(f"\n| source | M_J | M_F | Maskige ms/frame | total ms/frame |\n|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['M_J']:.4f} | {r['M_F']:.4f} | {r['maskige_ms']:.2f} | {r['total_ms']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(dict(rows), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
