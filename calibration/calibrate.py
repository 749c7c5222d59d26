"""INT8 and FP16 for an existing artifact: calibrate, sweep, measure, record (``python -m calibration``).

1. The fp32 streaming graphs run over the calibration clips; the tensors each graph receives are recorded.
2. INT8: activation ranges from those tensors (:mod:`calibration.int8`); the sensitivity sweep
   (:func:`calibration.groups.sweep`) measures 1 - foreground IoU with fp32's masks on ``sweep_clips`` further
   calibration clips (not used for the ranges) with module groups of all three graphs in INT8, and keeps in fp32 the groups that push it over ``budget``
   (the scan always stays fp32). The Q/DQ graphs are written beside the fp32 ones (``encoder.int8.onnx``, ...).
3. FP16: the graphs with every node but the scan (and what the export-time fp16 check kept fp32) rounded to fp16
   as TensorRT's fp16 kernels store it (:func:`calibration.groups.emulate_fp16`).
4. Each precision runs over the held-out accuracy clips next to fp32: M_J and M_F (where there is ground truth),
   mask agreement and logits error are recorded in the manifest's ``precisions`` with the bounds they met or not.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import onnx

from calibration.data import ClipList, open_source
from calibration.groups import SCAN_GROUP, Group, emulate_fp16, is_scan_node, members, module_path, sweep
from calibration.int8 import METHODS, QDQ_SETTINGS, CalibrationError, quantize_graph
from calibration.streaming import Run, compare, run_clips
from runtime.backends import STREAMING_ROLES
from runtime.engine_cache import graph_sha256
from runtime.manifest import (AccuracyRecord, CalibrationRecord, Manifest, PrecisionRecord, load_manifest,
                              write_manifest)

__all__ = ["BOUNDS", "DEFAULTS", "calibrate_artifact", "format_table"]

BOUNDS = {"int8": {"max_mj_drop": 0.01, "min_mask_agreement": 0.98},
          "fp16": {"max_mj_drop": 0.002, "min_mask_agreement": 0.99}}
DEFAULTS = dict(method="minmax", clips=16, accuracy_clips=40, sweep_clips=8, budget=0.015)
FP16_METHOD = ("fp16-storage emulation in ONNX Runtime (weights and activations rounded to fp16, fp32 math); the "
               "scan and the nodes the export-time fp16 check keeps fp32 stay fp32")


def _split(clips: ClipList, sweep_clips: int, say: Callable[[str], None]) -> tuple[ClipList, ClipList]:
    """Range clips and sweep clips: the last ``sweep_clips`` are held apart for the sweep when there are enough."""
    if len(clips) <= sweep_clips:
        say(f"only {len(clips)} calibration clips: the sweep runs on the clips the ranges came from")
        return clips, clips
    return (dataclasses.replace(clips, clips=clips.clips[:-sweep_clips]),
            dataclasses.replace(clips, clips=clips.clips[-sweep_clips:]))


def _accuracy(run: Run, reference: Run, clips: ClipList, description: str, kind: str) -> AccuracyRecord:
    agreement, error, iou = compare(run, reference, kind)
    return AccuracyRecord(data=description, clips=len(clips), frames=run.frames, fp32=reference.metrics,
                          reduced=run.metrics, mask_agreement=agreement, logits_error=error, foreground_iou=iou)


def _passed(accuracy: AccuracyRecord, bounds: dict[str, float]) -> bool:
    ok = accuracy.mask_agreement >= bounds["min_mask_agreement"]
    if "M_J" in accuracy.fp32 and "M_J" in accuracy.reduced:
        ok = ok and abs(accuracy.fp32["M_J"] - accuracy.reduced["M_J"]) <= bounds["max_mj_drop"]
    return ok


class _Int8Graphs:
    """Q/DQ graphs of the streaming graphs for any set of module groups in INT8, built once each."""

    def __init__(self, model_dir: Path, manifest: Manifest, work: Path, feeds: dict[str, list], method: str):
        self.model_dir, self.manifest, self.work, self.feeds, self.method = model_dir, manifest, work, feeds, method
        self.models = {role: onnx.load(str(model_dir / manifest.graph(role).file), load_external_data=False)
                       for role in STREAMING_ROLES}
        self.scan = {role: {n.name for n in m.graph.node if is_scan_node(n)} for role, m in self.models.items()}
        self.excluded: dict[str, frozenset[str]] = {}
        self._built: dict[tuple[str, frozenset[str]], Path] = {}

    def paths(self) -> list[str]:
        """Module paths (``role/module``) of every node that may be quantized."""
        return [f"{role}/{module_path(n)}" for role, m in self.models.items() for n in m.graph.node
                if not is_scan_node(n)]

    def has_scan(self) -> bool:
        return any(self.scan.values())

    def for_groups(self, groups: list[Group]) -> dict[str, Path]:
        """role -> Q/DQ graph with exactly ``groups`` in INT8 (roles with nothing in INT8 are left out)."""
        out = {}
        for role, model in self.models.items():
            chosen = set(members(model, groups, prefix=f"{role}/")) - self.scan[role]
            if not chosen:
                continue
            exclude = frozenset(n.name for n in model.graph.node if n.name not in chosen)
            key = (role, exclude)
            if key not in self._built:
                target = self.work / f"{role}.{len(self._built)}.int8.onnx"
                quantize_graph(self.model_dir / self.manifest.graph(role).file, target, self.feeds[role],
                               method=self.method, exclude=exclude, cache=self.work / f"{role}.{self.method}.json")
                self._built[key] = target
            self.excluded[role] = exclude
            out[role] = self._built[key]
        return out


def _int8(model_dir: Path, manifest: Manifest, work: Path, source, ranges: ClipList, reference: Run,
          sweep_set: ClipList, sweep_reference: Run, held_out: Run, options: dict, say: Callable[[str], None]
          ) -> PrecisionRecord:
    kind = manifest.output.kind
    graphs = _Int8Graphs(model_dir, manifest, work, reference.feeds, options["method"])

    def iou_loss(groups: list[Group]) -> float:
        run = run_clips(model_dir, manifest, sweep_set, graphs=graphs.for_groups(groups), precision="int8")
        return 1.0 - compare(run, sweep_reference, kind)[2]

    found = sweep(graphs.paths(), iou_loss, options["budget"],
                  what=f"int8 sweep (1 - foreground IoU with fp32 on {len(sweep_set)} sweep clips)", say=say)
    final = graphs.for_groups(found.reduced)
    specs = {}
    for role, path in final.items():
        fp32 = manifest.graph(role)
        target = model_dir / f"{Path(fp32.file).stem}.int8.onnx"
        shutil.copyfile(path, target)
        specs[role] = dataclasses.replace(fp32, file=target.name, sha256=graph_sha256(target), external_data=None)
    say(f"int8 graphs: {', '.join(s.file for s in specs.values())}; kept fp32: "
        f"{', '.join(found.keep + [SCAN_GROUP] * graphs.has_scan()) or 'nothing'}")
    say("int8: held-out accuracy clips ...")
    run = run_clips(model_dir, manifest, source.accuracy, graphs=final, precision="int8")
    accuracy = _accuracy(run, held_out, source.accuracy, source.description, kind)
    bounds = BOUNDS["int8"]
    frames = sum(c.num_frames for c in ranges.clips)
    return PrecisionRecord(
        precision="int8", method=f"{QDQ_SETTINGS}; activation ranges: {options['method']}",
        backends=["onnxruntime", "tensorrt"], graphs=specs,
        keep_fp32_groups=sorted(found.keep + [SCAN_GROUP] * graphs.has_scan()),
        keep_fp32={role: sorted(graphs.excluded.get(role, ())) for role in final},
        group_errors=found.errors,
        calibration=CalibrationRecord(data=source.description, clips=len(ranges), frames=frames,
                                      method=options["method"]),
        accuracy=accuracy, bounds=bounds, passed=_passed(accuracy, bounds))


def _fp16(model_dir: Path, manifest: Manifest, work: Path, source, held_out: Run,
          say: Callable[[str], None]) -> PrecisionRecord:
    files, keep, scan = {}, {}, False
    for role in STREAMING_ROLES:
        model = onnx.load(str(model_dir / manifest.graph(role).file))
        kept = set(manifest.fp16.keep_fp32_nodes.get(role, ())) if manifest.fp16 else set()
        scan_nodes = {n.name for n in model.graph.node if is_scan_node(n)}
        scan = scan or bool(scan_nodes)
        kept |= scan_nodes
        keep[role] = sorted(kept)
        files[role] = work / f"{role}.fp16-emulated.onnx"
        onnx.save(emulate_fp16(model, [n.name for n in model.graph.node if n.name not in kept]), str(files[role]))
    say("fp16: held-out accuracy clips ...")
    run = run_clips(model_dir, manifest, source.accuracy, graphs=files)
    accuracy = _accuracy(run, held_out, source.accuracy, source.description, manifest.output.kind)
    bounds = BOUNDS["fp16"]
    groups = manifest.fp16.keep_fp32_groups if manifest.fp16 else []
    return PrecisionRecord(precision="fp16", method=FP16_METHOD, backends=["tensorrt"], graphs={},
                           keep_fp32_groups=sorted(set(groups) | ({SCAN_GROUP} if scan else set())),
                           keep_fp32=keep, group_errors={}, calibration=None, accuracy=accuracy, bounds=bounds,
                           passed=_passed(accuracy, bounds))


def calibrate_artifact(model_dir: Path, data: str, *, precisions: Sequence[str] = ("int8", "fp16"),
                       say: Callable[[str], None] = print, **options) -> dict[str, PrecisionRecord]:
    """Add ``precisions`` to the artifact in ``model_dir`` from calibration ``data`` ('synth', an AVSBench-layout
    folder or a folder of videos); options (see :data:`DEFAULTS`): ``method``, ``clips``, ``accuracy_clips``,
    ``sweep_clips``, ``budget``. Returns the records written to its manifest."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown option(s) {', '.join(sorted(unknown))}; known: {', '.join(DEFAULTS)}")
    options = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if options["method"] not in METHODS:
        raise CalibrationError(f"unknown calibration method {options['method']!r}; choose one of {', '.join(METHODS)}")
    bad = [p for p in precisions if p not in BOUNDS]
    if bad or not precisions:
        raise CalibrationError(f"precisions must be among {', '.join(BOUNDS)}; got {', '.join(precisions) or 'none'}")
    if not 0 < options["budget"] < 1:
        raise CalibrationError(f"the sweep budget is a fraction of pixels in (0, 1); got {options['budget']}")
    model_dir = Path(model_dir)
    manifest = load_manifest(model_dir)
    source = open_source(data, task=manifest.model.setting, frames_per_clip=manifest.video.frames_per_clip,
                         resolution=manifest.video.resolution, clips=options["clips"] + options["sweep_clips"],
                         accuracy_clips=options["accuracy_clips"], say=say)
    say(f"data: {source.description}")
    work = Path(tempfile.mkdtemp(prefix=".calibration-", dir=model_dir))
    try:
        say(f"fp32: {len(source.accuracy)} held-out accuracy clips ...")
        held_out = run_clips(model_dir, manifest, source.accuracy)
        records = {}
        if "int8" in precisions:
            ranges, sweep_set = _split(source.calibration, options["sweep_clips"], say)
            say(f"fp32: {len(ranges)} calibration clips, recording what each graph receives ...")
            reference = run_clips(model_dir, manifest, ranges, record=STREAMING_ROLES)
            say(f"fp32: {len(sweep_set)} sweep clips ...")
            sweep_reference = run_clips(model_dir, manifest, sweep_set)
            records["int8"] = _int8(model_dir, manifest, work, source, ranges, reference, sweep_set,
                                    sweep_reference, held_out, options, say)
        if "fp16" in precisions:
            records["fp16"] = _fp16(model_dir, manifest, work, source, held_out, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if source.keep_alive is not None:
            source.keep_alive.cleanup()
    write_manifest(dataclasses.replace(manifest, precisions={**manifest.precisions, **records}), model_dir)
    return records


def format_table(records: dict[str, PrecisionRecord]) -> str:
    """Each precision next to fp32 on the held-out clips, with its verdict."""
    lines = [f"{'precision':<10} {'M_J':>6} {'M_F':>6} {'agreement':>10} {'logits err':>10}  verdict"]
    first = next(iter(records.values())).accuracy

    def cells(metrics: dict[str, float]) -> str:
        return " ".join(f"{100 * metrics[k]:6.2f}" if k in metrics else f"{'-':>6}" for k in ("M_J", "M_F"))

    lines.append(f"{'fp32':<10} {cells(first.fp32)} {'-':>10} {'-':>10}  reference")
    for name, record in records.items():
        acc, bounds = record.accuracy, record.bounds
        verdict = (f"{'within' if record.passed else 'OUTSIDE'} bounds (M_J within {100 * bounds['max_mj_drop']:g}, "
                   f"agreement >= {100 * bounds['min_mask_agreement']:g}%)")
        lines.append(f"{name:<10} {cells(acc.reduced)} {100 * acc.mask_agreement:9.2f}% {acc.logits_error:10.4f}  "
                     f"{verdict}")
    lines.append(f"({first.clips} held-out clips, {first.frames} frames: {first.data})")
    return "\n".join(lines)
