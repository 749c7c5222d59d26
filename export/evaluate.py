"""PyTorch-side evaluation: a ``create_model`` variant with its VGGish, on AVSBench, with the runtime's readers and
metrics, so its figures can be set beside ``avs-eval``'s on the artifact exported from the same weights.

    python -m export.evaluate --model selm-s4-r50 --checkpoint S4_R50.pth --vggish vggish-10086976.pth \\
        --data AVSBench/Single-source [--split test] [--json torch.json]

The composition is the exported one (``export.onnx_export.ClipGraph``): VGGish on the clip's log-mel examples,
then the model on the whole clip (T frames, one forward; AVSS clips of 5 frames are zero-padded to 10 with the
validity mask, and their audio embeddings zeroed there, as the official test does). A model with VGGish inside
(AVS-Mamba's ``audio_backbone``) takes the log-mel examples itself, with the validity mask. COMBO takes each real
frame's Maskige too (``export.training.data.ClipMaskiges``: the published files, or painted for avs-synth) and runs
the real frames only; its S4/MS3 probability is the softmax of its two class scores (object > background).
Weights load as ``export.build_engine`` loads them: without ``--checkpoint`` they are random after
``torch.manual_seed(--seed)``, the same draw the artifact built with that seed has.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from runtime.datasets.avsbench import AVSBench, Clip, DatasetError, normalize_frames
from runtime.evaluate import Predictor, evaluate, format_table

__all__ = ["torch_predictor", "load_for_eval", "main"]


def torch_predictor(model: torch.nn.Module, vggish: Optional[torch.nn.Module], device: Optional[torch.device] = None,
                    maskiges: Optional[Callable[[Clip], np.ndarray]] = None) -> Predictor:
    """A predictor running ``model`` (eval mode, on ``device``; default CPU) on whole clips: probabilities
    (binary) or labels (semantic).

    Args:
        model: a ``create_model`` variant.
        vggish: its separate audio encoder; None (or the model's own) for a model with VGGish inside
            (``audio_backbone``: AVS-Mamba, COMBO).
        device: where model and encoder are.
        maskiges: COMBO only (required there): a clip -> its real frames' Maskiges, uint8 RGB ``[n, R, R, 3]``
            (``export.training.data.ClipMaskiges``).
    """
    cfg = model.cfg
    combo = model.pretrained_cfg.family == "combo"
    if combo and maskiges is None:
        raise ValueError(f"{cfg.name} takes a Maskige per frame: pass maskiges= (e.g. "
                         f"export.training.data.ClipMaskiges(data))")
    if maskiges is not None and not combo:
        raise ValueError(f"{cfg.name} takes no Maskige; pass maskiges=None")
    mean, std = model.pretrained_cfg.mean, model.pretrained_cfg.std
    inside = getattr(model, "audio_backbone", None)
    if inside is not None and vggish is not None and vggish is not inside:
        raise ValueError(f"{cfg.name} has VGGish inside (its audio_backbone): pass vggish=None, not a separate "
                         f"encoder")
    if inside is None and vggish is None:
        raise ValueError(f"{cfg.name} takes the embeddings of a separate audio encoder: pass its VGGish")

    @torch.no_grad()
    def predict(clip: Clip) -> np.ndarray:
        n, t = clip.num_frames, cfg.frames
        frames = torch.zeros((t, 3, cfg.resolution, cfg.resolution))
        frames[:n] = torch.from_numpy(normalize_frames(clip.frames, mean, std))
        log_mel = torch.from_numpy(np.ascontiguousarray(clip.log_mel[:t]))
        frames, log_mel = frames.to(device), log_mel.to(device)
        if combo:                                   # per frame: the real frames only, no validity input
            maskige = torch.from_numpy(normalize_frames(list(maskiges(clip)[:, :, :, ::-1]), mean, std))
            scores = model(frames[:n], maskige.to(device), log_mel[:n]).cpu()
            if cfg.setting == "avss":
                return scores.argmax(dim=1).numpy()
            return scores.softmax(dim=1)[:, 1].numpy()
        valid = None
        if cfg.setting == "avss":
            valid = torch.from_numpy(np.arange(t) < n).to(device)
        elif n != t:
            raise DatasetError(f"clip {clip.name} has {n} frames; {cfg.name} takes {t}")
        if inside is not None:
            logits = model(frames, log_mel, valid)[:n].cpu()
        else:
            embed = vggish(log_mel)
            if valid is not None:
                embed = embed * valid.float().reshape(-1, *[1] * (embed.dim() - 1))   # [T,128] or a [T,C,6,4] map
            logits = model(frames, embed, valid)[:n].cpu()
        if cfg.num_classes == 1:
            return torch.sigmoid(logits[:, 0]).numpy()
        return logits.argmax(dim=1).numpy()

    return predict


def load_for_eval(name: str, checkpoint: Optional[Path], vggish: Optional[Path], seed: int = 0):
    """The variant and its audio encoder exactly as ``export.build_engine`` builds them (same seed, same draw); for
    a model with VGGish inside the encoder is that ``audio_backbone`` (``--vggish`` loaded into it)."""
    from export.build_engine import load_models, resolve_model_name

    name = resolve_model_name(name)
    torch.manual_seed(seed)
    return load_models(name, checkpoint, vggish, "none", lambda line: print(line, file=sys.stderr))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export.evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score a PyTorch model on AVSBench with the official metrics (the avs-eval figures, in torch).",
        epilog="example:\n  python -m export.evaluate --model selm-s4-r50 --checkpoint S4_R50.pth "
               "--vggish vggish-10086976.pth --data AVSBench/Single-source --json torch.json")
    parser.add_argument("--model", required=True, help="a registered variant (python -m export.build_engine "
                                                       "--list-models)")
    parser.add_argument("--checkpoint", type=Path, help="official .pth (default: random weights, seeded by --seed)")
    parser.add_argument("--vggish", type=Path, help="vggish-10086976.pth (default: random weights; AVS-Mamba: "
                                                     "loaded into its audio_backbone, default the checkpoint's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random weights (default: %(default)s, as "
                                                            "export.build_engine)")
    parser.add_argument("--data", type=Path, required=True, help="AVSBench subset folder (or the folder above)")
    parser.add_argument("--task", choices=("s4", "ms3", "avss"), help="default: avss for AVSS models, else from "
                                                                      "the data layout")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N clips")
    parser.add_argument("--clips-per-batch", type=int, metavar="N", help="grouping of the official figures "
                                                                         "(default 2)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the report here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Optional[list] = None) -> int:
    from export.build_engine import UserError

    args = build_parser().parse_args(argv)
    try:
        model, vggish = load_for_eval(args.model, args.checkpoint, args.vggish, args.seed)
    except (UserError, KeyError) as exc:
        print(f"export.evaluate: error: {exc}", file=sys.stderr)
        return 2
    task = "avss" if model.cfg.setting == "avss" else args.task
    try:
        data = AVSBench(args.data, task, args.split, model.cfg.resolution)
        if (data.task == "avss") != (model.cfg.setting == "avss"):
            raise DatasetError(f"{args.data} is {data.task.upper()} data but {model.cfg.name} is "
                               f"{'an AVSS' if model.cfg.setting == 'avss' else 'a binary'} model")
        maskiges = None
        if model.pretrained_cfg.family == "combo":
            from export.training.data import ClipMaskiges

            maskiges = ClipMaskiges(data)
        report = evaluate(data, torch_predictor(model, vggish, maskiges=maskiges), limit=args.limit,
                          clips_per_batch=args.clips_per_batch, progress=not args.quiet)
    except DatasetError as exc:
        print(f"export.evaluate: error: {exc}", file=sys.stderr)
        return 3
    report.update({"model": model.cfg.name, "checkpoint": str(args.checkpoint) if args.checkpoint else None,
                   "seed": args.seed, "backend": f"torch {torch.__version__} (eager, CPU)", "data": str(args.data)})
    print(format_table(report))
    if args.json is not None:
        tmp = args.json.with_name(args.json.name + ".partial")
        tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
