"""Golden tensors of the tiny test variants ``selm-test`` and ``vggish-test`` (``tests/test_golden.py``).

Regenerate (only when a numerical change is intended; the failing test names the stage that moved)::

    .venv/bin/python tests/golden/make_golden.py

For each variant this writes ``tests/golden/<variant>.npz`` with three groups of arrays:

* ``weights`` (all tensors flattened into one float16 array), ``weight_keys`` and ``weight_shapes``: the whole
  state_dict: random weights drawn after ``torch.manual_seed(SEED)``, every tensor then perturbed (so no bias is 0
  and no norm weight is 1) and rounded to float16-representable values (exact when loaded back as float32). The
  test loads them, so it never depends on torch's RNG.
* ``input/<name>``: the inputs: SelM's frames as uint8 RGB (normalised with the variant's pretrained-config mean
  and std, as a camera frame would be), the rest float16-representable and stored as float16.
* ``output/<name>``: float32 outputs of every stage (:func:`stage_outputs`): for SelM the four backbone maps (the
  inputs of the DAM blocks), the pooled and audio tokens of the encoder, the temporal gates and audio tokens, the
  decoder logits, and the newest frame's logits with Gumbel noise given as an input; for VGGish the embeddings.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

GOLDEN_DIR = Path(__file__).resolve().parent
VARIANTS = ("selm-test", "vggish-test")
SEED = 0


def _fp16_exact(t: torch.Tensor) -> torch.Tensor:
    return t.half().float()


def make_weights(name: str) -> dict[str, torch.Tensor]:
    """Seeded random weights of ``name``, perturbed and rounded to float16-representable values."""
    from export.models import create_model

    torch.manual_seed(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        state = create_model(name).state_dict()
    g = torch.Generator().manual_seed(SEED + 1)
    if not all(v.is_floating_point() for v in state.values()):
        raise TypeError(f"{name}: integer buffers are not supported by the golden format")
    return {k: _fp16_exact(v + 0.05 * torch.randn(v.shape, generator=g)) for k, v in state.items()}


def make_inputs(name: str) -> dict[str, torch.Tensor]:
    """Seeded inputs of ``name`` (float16-representable)."""
    g = torch.Generator().manual_seed(SEED + 2)
    if name.startswith("vggish"):
        return {"log_mel": _fp16_exact(torch.rand(5, 1, 96, 64, generator=g) * 7.6 - 4.6)}
    from export.models import model_builder

    with torch.device("meta"):
        cfg = model_builder(name)().cfg
    t, r = cfg.frames, cfg.resolution
    return {"frames_rgb": torch.randint(0, 256, (t, 3, r, r), generator=g, dtype=torch.uint8),
            "audio_embed": _fp16_exact(torch.rand(t, cfg.audio_dim, generator=g) * 2),
            "gumbel_noise": _fp16_exact(torch.rand(1, 2, sum(p * p for p in cfg.pe_shapes), generator=g) * 0.98
                                        + 0.01)}


def normalise(name: str, rgb: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [T,3,R,R] -> the model's input, with the variant's pretrained-config mean and std."""
    from export.models import pretrained_cfg

    cfg = pretrained_cfg(name)
    mean, std = (torch.tensor(v, dtype=torch.float32).reshape(3, 1, 1) for v in (cfg.mean, cfg.std))
    return (rgb.float() / 255 - mean) / std


def build(name: str, weights: dict[str, torch.Tensor], **kwargs) -> torch.nn.Module:
    """Variant ``name`` with ``weights`` (strictly loaded: a changed architecture fails here)."""
    from export.models import create_model

    return create_model(name, weights, **kwargs)


@torch.inference_mode()
def stage_outputs(name: str, weights: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]
                  ) -> dict[str, np.ndarray]:
    """Every stage's output of variant ``name`` on ``inputs``, as float32 numpy arrays."""
    model = build(name, weights)
    if name.startswith("vggish"):
        return {"embedding": model(inputs["log_mel"]).numpy()}
    frames = normalise(name, inputs["frames_rgb"])
    backbone = {}
    hooks = [dam.register_forward_hook(lambda _m, args, _out, i=i: backbone.__setitem__(f"backbone{i}", args[0]))
             for i, dam in enumerate(model._fusions, start=1)]
    try:
        maps, pooled, audio = model.encode_frames(frames, inputs["audio_embed"])
    finally:
        for hook in hooks:
            hook.remove()
    gates, audio_out = model.temporal(pooled, audio)
    logits = model.decode_frames(maps, gates, audio_out)
    newest = [m[-1:] for m in maps]
    noisy = build(name, weights, gumbel="input").decode_frames(newest, gates[-1:], audio_out[-1:],
                                                               gumbel_noise=inputs["gumbel_noise"])
    out = dict(backbone, pooled=pooled, audio=audio, gates=gates, audio_out=audio_out, logits=logits,
               logits_gumbel=noisy)
    return {k: v.numpy() for k, v in out.items()}


def write(name: str) -> Path:
    """Compute and write ``tests/golden/<name>.npz``; returns its path."""
    weights, inputs = make_weights(name), make_inputs(name)
    arrays = {"weights": torch.cat([v.flatten() for v in weights.values()]).half().numpy(),
              "weight_keys": np.array(list(weights)),
              "weight_shapes": np.array([",".join(map(str, v.shape)) for v in weights.values()])}
    arrays.update({f"input/{k}": v.half().numpy() if v.is_floating_point() else v.numpy()
                   for k, v in inputs.items()})
    arrays.update({f"output/{k}": v for k, v in stage_outputs(name, weights, inputs).items()})
    path = GOLDEN_DIR / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    return path


def load(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """``(weights, inputs, outputs)`` of ``tests/golden/<name>.npz`` (weights and inputs as float32 tensors)."""
    with np.load(GOLDEN_DIR / f"{name}.npz", allow_pickle=False) as data:
        groups: dict[str, dict] = {"input": {}, "output": {}}
        for key in data.files:
            group, _, rest = key.partition("/")
            if group in groups:
                groups[group][rest] = data[key]
        flat = torch.from_numpy(data["weights"].astype(np.float32))
        shapes = [tuple(int(d) for d in s.split(",") if d) for s in data["weight_shapes"]]
        keys = [str(k) for k in data["weight_keys"]]
    sizes = [int(np.prod(s)) for s in shapes]
    weights = {k: t.reshape(s) for k, t, s in zip(keys, torch.split(flat, sizes), shapes)}

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) if a.dtype == np.float16 else a)

    return weights, {k: tensor(v) for k, v in groups["input"].items()}, groups["output"]


if __name__ == "__main__":
    sys.path.insert(0, str(GOLDEN_DIR.parents[1]))
    for variant in VARIANTS:
        written = write(variant)
        print(f"{written}: {written.stat().st_size / 1024:.0f} KiB")
