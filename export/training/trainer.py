"""The training loop: batches through the model with the recipe's loss, AdamW (with the recipe's schedule, gradient
clipping and per-group learning rates), validation with the runtime's metrics after each epoch, best-checkpoint
selection, resumable state. What differs between model families (their recipes, the forward pass that feeds the
loss, where VGGish lives, COMBO's Maskige input) is one :class:`Family` entry in ``FAMILIES``.

Files written into ``out``:

* ``best.pth``: the model's plain state_dict at the best validation M_J (the official layout, so
  ``create_model(name, "best.pth")`` and ``python -m export.build_engine --checkpoint best.pth`` load it);
  ``best.audio.pth`` beside it when a separate audio encoder was trained (``--vggish`` of ``build_engine``;
  AVS-Mamba's and COMBO's VGGish is inside the model, so their ``best.pth`` holds it);
* ``last.pth`` (and ``last.audio.pth``): the weights after the latest epoch;
* ``train_state.pt``: model, audio encoder, optimiser, AMP scaler and RNG state for ``--resume``;
* ``train_record.json``: the command's settings, seeds, per-epoch losses, metrics and times.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from runtime.datasets.avsbench import AVSBench, DatasetError

from .data import ClipDataset, ClipMaskiges, collate
from .losses import LOSSES
from .recipe import AVS_MAMBA_RECIPES, COMBO_RECIPES, RECIPES, SDAVS_RECIPES, Recipe

__all__ = ["TrainConfig", "Trainer", "TrainingError", "Family", "FAMILIES", "SCHEDULES", "forward_supervised",
           "forward_supervised_sdavs", "forward_supervised_avs_mamba", "forward_supervised_combo", "param_groups"]

#: ``--schedule`` values: the learning-rate factor at ``step`` of ``total`` steps.
SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "constant": lambda step, total: 1.0,
    "cosine": lambda step, total: 0.01 + 0.495 * (1 + math.cos(math.pi * min(step, total) / total)),
    "poly": lambda step, total: max(1 - step / total, 0.0) ** 0.9,
}


class TrainingError(RuntimeError):
    """Bad settings or data for training; the message names the problem and the fix."""


@dataclass
class TrainConfig:
    """Everything one training run depends on (recorded in ``train_record.json``).

    Args:
        model: a registered SelM, SDAVS, AVS-Mamba or COMBO variant.
        data: the data set folder (AVSBench or avs-synth; the task follows from the model).
        out: where checkpoints and the record go.
        epochs, batch, lr, weight_decay: None = the recipe's.
        workers: DataLoader worker processes.
        limit: use only the first N training clips (and N validation clips).
        seed: seeds the weights, the shuffling and the Gumbel noise.
        init: a checkpoint to fine-tune from (loaded strictly).
        vggish: the audio encoder's weights (AVS-Mamba, COMBO: loaded into the model's ``audio_backbone``, after
            ``init``).
        audio_encoder: ``frozen`` (the official recipe; needs ``vggish``, or for AVS-Mamba and COMBO ``init``) or
            ``train`` (learnt with the model; for AVS-Mamba and COMBO this unfreezes ``audio_backbone``, which
            their recipes never do).
        gumbel: SelM: ``sample`` (the official training) or ``none`` (noise-free hard assignment).
        schedule: a key of ``SCHEDULES``, per step: ``constant``, ``cosine`` (down to 1 % at the end) or ``poly``
            (``(1 - step / steps) ** 0.9``); None = the recipe's (COMBO poly, the others constant).
        device: ``auto`` (CUDA with AMP if present, else CPU), ``cpu`` or ``cuda``.
        cache: keep decoded clips in memory.
        threads: torch CPU threads (0 = torch's default).
    """

    model: str
    data: str
    out: str
    epochs: Optional[int] = None
    batch: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    workers: int = 0
    limit: Optional[int] = None
    seed: int = 123
    init: Optional[str] = None
    vggish: Optional[str] = None
    audio_encoder: str = "frozen"
    gumbel: str = "sample"
    schedule: Optional[str] = None
    device: str = "auto"
    cache: bool = False
    threads: int = 0


def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def forward_supervised(model: nn.Module, audio_encoder: nn.Module, batch: dict, train_audio: bool,
                       device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Logits, the decoder's three assignment maps and the targets of the batch's supervised frames.

    The clips' frames go through the per-frame encoder together, BCSM runs clip by clip (the only cross-frame
    op), the decoder runs on the supervised frames only. Frames after a batch's last supervised frame cannot
    change the loss (BCSM is causal) and are skipped, unless the model has batch norms (their statistics see
    every frame).
    """
    clips, frames = batch["frames"].shape[:2]
    supervised = batch["supervised"]
    keep = frames if _has_batch_norm(model) else int(supervised.nonzero()[:, 1].max()) + 1
    avss = model.cfg.setting == "avss"
    valid = batch["valid"][:, :keep].flatten().to(device) if avss else None
    with torch.set_grad_enabled(train_audio and torch.is_grad_enabled()):
        embed = audio_encoder(batch["log_mel"][:, :keep].flatten(0, 1).to(device))
    maps, pooled, audio = model.encode_frames(batch["frames"][:, :keep].flatten(0, 1).to(device), embed,
                                              valid=valid)
    temporal = [model.temporal(pooled[i * keep:(i + 1) * keep], audio[i * keep:(i + 1) * keep])
                for i in range(clips)]
    gates, audio_out = torch.cat([g for g, _ in temporal]), torch.cat([a for _, a in temporal])
    sel = supervised[:, :keep].flatten().to(device)
    hits: list[torch.Tensor] = []
    logits = model.decode_frames([m[sel] for m in maps], gates[sel], audio_out[sel],
                                 valid=None if valid is None else valid[sel], hits=hits)
    targets = batch["masks"][:, :keep].flatten(0, 1).to(device)[sel]
    if logits.shape[-2:] != targets.shape[-2:]:                 # a model whose output is not the masks' 224 px
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return logits, hits, targets


def forward_supervised_sdavs(model: nn.Module, audio_encoder: nn.Module, batch: dict, train_audio: bool,
                             device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SDAVS: logits and targets of the batch's supervised frames. The clips run whole through the model up to
    the batch's last supervised frame (SDAVS is causal in time, so later frames cannot change the loss)."""
    clips = batch["frames"].shape[0]
    keep = int(batch["supervised"].nonzero()[:, 1].max()) + 1
    with torch.set_grad_enabled(train_audio and torch.is_grad_enabled()):
        audio_map = audio_encoder(batch["log_mel"][:, :keep].flatten(0, 1).to(device))
    logits = model.forward_clips(batch["frames"][:, :keep].flatten(0, 1).to(device), audio_map, clips)
    sel = batch["supervised"][:, :keep].flatten().to(device)
    targets = batch["masks"][:, :keep].flatten(0, 1).to(device)[sel]
    logits = logits[sel]
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return logits, targets


def forward_supervised_avs_mamba(model: nn.Module, audio_encoder: Optional[nn.Module], batch: dict,
                                 train_audio: bool, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    """AVS-Mamba: every decoder layer's logits on the batch's supervised frames (the last is the output) and their
    targets. Encoder and fusion run on the whole clips (the temporal scans run both ways, so every frame counts);
    the head runs on the supervised frames only, which equals ``model(..., aux=True)`` on them. VGGish is the
    model's ``audio_backbone`` (``audio_encoder`` is None; ``train_audio`` is its ``requires_grad``)."""
    valid = batch["valid"].flatten().to(device) if model.cfg.setting == "avss" else None
    audio, maps = model.encode_frames(batch["frames"].flatten(0, 1).to(device),
                                      batch["log_mel"].flatten(0, 1).to(device), valid)
    mask_features, queries = model.fuse_features(audio, maps)
    sel = batch["supervised"].flatten().to(device)
    outputs = [model.decode(mask_features[sel], query[sel]) for query in queries]
    targets = batch["masks"].flatten(0, 1).to(device)[sel]
    if outputs[0].shape[-2:] != targets.shape[-2:]:
        outputs = [F.interpolate(o, size=targets.shape[-2:], mode="bilinear", align_corners=False) for o in outputs]
    return outputs, targets


def forward_supervised_combo(model: nn.Module, audio_encoder: Optional[nn.Module], batch: dict, train_audio: bool,
                             device: torch.device) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
    """COMBO: the decoder's predictions on the batch's real frames (all of them: the consistency loss compares
    consecutive frames, labelled or not), each frame's clip, which frames are supervised, and their targets. The
    frames, Maskiges and log-mels of the whole batch go through the model in one call, as upstream trains (its
    audio-query layout spreads audio over the queries across the call's frames). VGGish is the model's
    ``audio_backbone`` (``audio_encoder`` is None)."""
    clips, frames = batch["frames"].shape[:2]
    valid = batch["valid"].flatten()
    outputs = model(batch["frames"].flatten(0, 1)[valid].to(device), batch["maskige"].flatten(0, 1)[valid].to(device),
                    batch["log_mel"].flatten(0, 1)[valid].to(device), raw=True)
    clip = torch.arange(clips).repeat_interleave(frames)[valid].to(device)
    supervised = batch["supervised"].flatten()
    targets = batch["masks"].flatten(0, 1)[supervised].to(device)
    return outputs, clip, supervised[valid].to(device), targets


def param_groups(model: nn.Module, recipe: Recipe, lr: float, weight_decay: float) -> list[dict]:
    """AdamW's parameter groups: learning rate ``lr`` times ``recipe.backbone_lr`` for parameters of modules whose
    name contains ``backbone``; weight decay ``recipe.norm_weight_decay`` (when set) for normalisation layers and
    embeddings. Every parameter is included, frozen or not (a frozen backbone may train later)."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
             nn.LocalResponseNorm, nn.Embedding)
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            decay = weight_decay
            if recipe.norm_weight_decay is not None and isinstance(module, norms):
                decay = recipe.norm_weight_decay
            groups.setdefault((lr * recipe.backbone_lr if "backbone" in name else lr, decay), []).append(param)
    return [{"params": params, "lr": group_lr, "weight_decay": decay} for (group_lr, decay), params in groups.items()]


@dataclass(frozen=True)
class Family:
    """How one model family trains; adding a family is adding an entry to ``FAMILIES``.

    Args:
        label: the family's name in messages.
        recipes: task -> its official :class:`Recipe`.
        forward: ``(model, audio_encoder, batch, train_audio, device) -> outputs``; the recipe's loss
            (``losses.LOSSES``) takes ``*outputs``.
        gumbel: the model has Gumbel assignment noise (``--gumbel`` applies; validation runs noise-free).
        audio_inside: VGGish is the model's ``audio_backbone``: no separate encoder, ``--vggish`` loads into it.
        backbone: the image backbone's attribute, frozen during the recipe's ``frozen_backbone_epochs``.
        maskige: the model takes a Maskige per frame (COMBO): the batches carry ``maskige``.
    """

    label: str
    recipes: dict[str, Recipe]
    forward: Callable[..., tuple]
    gumbel: bool = False
    audio_inside: bool = False
    backbone: str = ""
    maskige: bool = False


FAMILIES = {
    "selm": Family("SelM", RECIPES, forward_supervised, gumbel=True),
    "sdavs": Family("SDAVS", SDAVS_RECIPES, forward_supervised_sdavs),
    "avs-mamba": Family("AVS-Mamba", AVS_MAMBA_RECIPES, forward_supervised_avs_mamba, audio_inside=True,
                        backbone="vision_backbone"),
    "combo": Family("COMBO", COMBO_RECIPES, forward_supervised_combo, audio_inside=True, backbone="backbone",
                    maskige=True),
}


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu (or auto)")
    return torch.device(name)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    """One training run (see the module docstring); ``fit()`` runs it and returns the record."""

    def __init__(self, cfg: TrainConfig, say: Callable[[str], None] = print, progress: bool = True) -> None:
        from export.models import create_model, pretrained_cfg

        self.cfg, self.say, self.progress = cfg, say, progress
        pcfg = pretrained_cfg(cfg.model)
        if pcfg.family not in FAMILIES:
            raise TrainingError(f"--model {cfg.model}: only {', '.join(f.label for f in FAMILIES.values())} "
                                f"variants train here ({', '.join(f'{name}-*' for name in FAMILIES)})")
        self.family = family = FAMILIES[pcfg.family]
        task = {"test": "s4"}.get(pcfg.setting, pcfg.setting)
        self.recipe = family.recipes[task]
        self.epochs = cfg.epochs or self.recipe.epochs
        self.batch = cfg.batch or self.recipe.batch
        if cfg.audio_encoder not in ("frozen", "train"):
            raise TrainingError(f"--audio-encoder must be frozen or train, got {cfg.audio_encoder!r}")
        vggish_file = pretrained_cfg(pcfg.audio_encoder).file or "PATH"
        if cfg.audio_encoder == "frozen" and cfg.vggish is None and not (family.audio_inside and cfg.init):
            raise TrainingError(f"a frozen audio encoder needs its weights: pass --vggish {vggish_file}"
                                f"{', or --init CHECKPOINT (it holds VGGish)' if family.audio_inside else ''}, or "
                                f"--audio-encoder train to learn it with the model")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = _pick_device(cfg.device)
        self.amp = self.device.type == "cuda"
        torch.manual_seed(cfg.seed)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*random weights.*", category=UserWarning)
            self.model = create_model(cfg.model, cfg.init, **({"gumbel": cfg.gumbel} if family.gumbel else {}))
            audio = None
            if not family.audio_inside or cfg.vggish is not None:
                try:
                    audio = create_model(pcfg.audio_encoder, cfg.vggish)
                except (OSError, ValueError) as exc:
                    raise TrainingError(f"--vggish {cfg.vggish}: {exc} (expected {pcfg.audio_encoder} weights, "
                                        f"{vggish_file})") from None
        train_audio = cfg.audio_encoder == "train"
        #: The separate audio encoder; None where VGGish is inside the model (AVS-Mamba's ``audio_backbone``).
        self.audio: Optional[nn.Module] = None if family.audio_inside else audio
        if family.audio_inside:
            if audio is not None:                                   # --vggish wins over the --init checkpoint's
                self.model.audio_backbone.load_state_dict(audio.state_dict())
            self.model.audio_backbone.requires_grad_(train_audio)
        self.model.to(self.device)
        self.lr = cfg.lr or self.recipe.lr
        decay = self.recipe.weight_decay if cfg.weight_decay is None else cfg.weight_decay
        groups = param_groups(self.model, self.recipe, self.lr, decay)
        if self.audio is not None:
            self.audio.to(self.device).requires_grad_(train_audio)
            if train_audio:
                groups += param_groups(self.audio, self.recipe, self.lr, decay)
        self.optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.train_data = self._dataset("train", pcfg, task)
        self.schedule = cfg.schedule or self.recipe.schedule
        if self.schedule not in SCHEDULES:
            raise TrainingError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        total, factor = self.epochs * math.ceil(len(self.train_data) / self.batch), SCHEDULES[self.schedule]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: factor(step, total))
        self.val_data = self._dataset("val", pcfg, task)
        self.out = Path(cfg.out)
        self.history: list[dict] = []
        self.best: Optional[dict] = None
        self.start_epoch = 0

    def _dataset(self, split: str, pcfg, task: str) -> ClipDataset:
        try:
            reader = AVSBench(self.cfg.data, task, split, pcfg.input_size)
        except (DatasetError, FileNotFoundError) as exc:
            raise TrainingError(f"--data {self.cfg.data}: {exc}") from None
        if len(reader) == 0:
            raise TrainingError(f"--data {self.cfg.data}: the {task} {split} split has no clips")
        maskiges = ClipMaskiges(reader) if self.family.maskige else None
        return ClipDataset(reader, pcfg.mean, pcfg.std, self.cfg.limit, self.cfg.cache, maskiges)

    # -- one epoch -----------------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training split; returns the mean loss terms and the speed."""
        from tqdm import tqdm

        loader = DataLoader(self.train_data, batch_size=self.batch, shuffle=True, collate_fn=collate,
                            num_workers=self.cfg.workers, generator=torch.Generator().manual_seed(
                                self.cfg.seed * 1000 + epoch))
        loss_fn = LOSSES[self.recipe.loss]
        train_audio = self.cfg.audio_encoder == "train"
        self.model.train()
        if self.family.gumbel:
            self.model.gumbel = self.cfg.gumbel
        frozen = self.recipe.frozen_backbone_epochs
        if frozen:
            getattr(self.model, self.family.backbone).requires_grad_(epoch >= frozen)
            if epoch == frozen:
                self.say(f"epoch {epoch + 1}: the image backbone trains from now on (frozen for {frozen} epochs)")
        if self.audio is not None:
            self.audio.train(train_audio)
        sums: dict[str, float] = {}
        clips, start = 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{self.epochs}", unit="batch", disable=not self.progress)
        for batch in bar:
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                outputs = self.family.forward(self.model, self.audio, batch, train_audio, self.device)
            terms = loss_fn(*outputs)
            if not torch.isfinite(terms["loss"]):
                raise TrainingError(f"epoch {epoch + 1}: the loss is {terms['loss'].item()}; lower --lr")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
            if self.recipe.clip_grad_norm:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               self.recipe.clip_grad_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            n = batch["frames"].shape[0]
            clips += n
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.item() * n
            bar.set_postfix_str(f"loss {sums['loss'] / clips:.4f} {clips / (time.perf_counter() - start):.2f} clip/s")
        seconds = time.perf_counter() - start
        return {**{k: v / clips for k, v in sums.items()}, "clips": clips, "seconds": seconds,
                "clips_per_second": clips / seconds}

    def validate(self) -> dict:
        """M_J and M_F (official and per-frame) on the validation split, with the runtime's metrics."""
        from export.evaluate import torch_predictor
        from runtime.evaluate import evaluate

        self.model.eval()
        if self.audio is not None:
            self.audio.eval()
        if self.family.gumbel:
            self.model.gumbel = "none"
        predictor = torch_predictor(self.model, self.audio, self.device, maskiges=self.val_data.maskiges)
        report = evaluate(self.val_data.data, predictor, limit=self.val_data.count, progress=self.progress)
        return report["metrics"]

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _weights(self, stem: str) -> None:
        _atomic_save(self.model.state_dict(), self.out / f"{stem}.pth")
        if self.cfg.audio_encoder == "train" and self.audio is not None:
            _atomic_save(self.audio.state_dict(), self.out / f"{stem}.audio.pth")

    def _save_state(self, epoch: int) -> None:
        _atomic_save({"epoch": epoch, "model": self.model.state_dict(),
                      "audio": {} if self.audio is None else self.audio.state_dict(),
                      "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                      "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state(),
                      "history": json.dumps(self.history),
                      "best": json.dumps(self.best)}, self.out / "train_state.pt")

    def resume(self) -> None:
        """Continue from ``out/train_state.pt``."""
        path = self.out / "train_state.pt"
        if not path.is_file():
            raise TrainingError(f"--resume: {path} does not exist; start without --resume")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        if self.audio is not None:
            self.audio.load_state_dict(state["audio"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        self.history, self.best = json.loads(state["history"]), json.loads(state["best"])
        self.start_epoch = int(state["epoch"]) + 1
        self.say(f"resumed after epoch {self.start_epoch} of {self.epochs}")

    def record(self, seconds: float) -> dict:
        settings = asdict(self.cfg)
        settings.update(epochs=self.epochs, batch=self.batch, lr=self.lr, schedule=self.schedule,
                        weight_decay=self.optimizer.defaults["weight_decay"])
        return {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "settings": settings,
                "recipe": asdict(self.recipe), "device": str(self.device), "amp": self.amp,
                "torch": torch.__version__, "train_clips": len(self.train_data), "val_clips": len(self.val_data),
                "epochs": self.history, "best": self.best, "train_seconds": seconds}

    def fit(self) -> dict:
        """Train ``epochs`` epochs (validating after each), keep the best; returns the record."""
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter() - sum(e["train"]["seconds"] + e["val_seconds"] for e in self.history)
        for epoch in range(self.start_epoch, self.epochs):
            train = self.train_epoch(epoch)
            tick = time.perf_counter()
            metrics = self.validate()
            entry = {"epoch": epoch + 1, "train": train, "val": metrics, "val_seconds": time.perf_counter() - tick}
            self.history.append(entry)
            score = metrics["official"]["M_J"]
            improved = self.best is None or score > self.best["M_J"]
            if improved:
                self.best = {"epoch": epoch + 1, "M_J": score, "M_F": metrics["official"]["M_F"]}
                self._weights("best")
            self._weights("last")
            self._save_state(epoch)
            self.say(f"epoch {epoch + 1}/{self.epochs}: loss {train['loss']:.4f}, {train['clips_per_second']:.2f} "
                     f"clip/s; val M_J {score:.4f} M_F {metrics['official']['M_F']:.4f}"
                     f"{' (best)' if improved else ''}")
            record = self.record(time.perf_counter() - start)
            (self.out / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")
        return self.record(time.perf_counter() - start)
