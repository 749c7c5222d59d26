"""AVS-Mamba training (``python -m export.train``): its losses against a hand computation, the forward that feeds
them, one optimiser step through the Trainer and one through the command line (the loss drops, ``best.pth`` loads
strictly with ``create_model``), VGGish inside the model (``--vggish``, ``--audio-encoder``), the validation
predictor. One step of the tiny variant takes seconds on a CPU (the scan's backward dominates)."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from export.evaluate import torch_predictor
from export.models import create_model, pretrained_cfg
from export.train import main as train_main
from export.training.data import ClipDataset, collate
from export.training.losses import avs_mamba_binary_loss, avs_mamba_semantic_loss
from export.training.recipe import AVS_MAMBA_RECIPES
from export.training.trainer import TrainConfig, Trainer, TrainingError, forward_supervised_avs_mamba
from runtime.datasets import synth
from runtime.datasets.avsbench import AVSBench, normalize_frames

MODEL = "avs-mamba-test"
CPU = torch.device("cpu")


def _quiet(name, checkpoint=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return create_model(name, checkpoint, **kw)


@pytest.fixture(scope="module")
def s4_data(tmp_path_factory) -> Path:
    """One S4 training clip (a frame-0 mask, as AVSBench) and one validation clip."""
    root = tmp_path_factory.mktemp("synth")
    synth.write_dataset(root, "s4", 1, seed=5, split="train", progress=False)
    synth.write_dataset(root, "s4", 1, seed=5, split="val", progress=False)
    return root


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(model=MODEL, data=str(data), out=str(out), **{
        **dict(epochs=1, batch=1, lr=1e-3, device="cpu", seed=0), **kw})


def _eval_loss(model: torch.nn.Module, batch: dict) -> float:
    """The recipe's loss on ``batch`` in eval mode (no drop-path noise)."""
    model.eval()
    with torch.no_grad():
        return avs_mamba_binary_loss(*forward_supervised_avs_mamba(model, None, batch, False, CPU))["loss"].item()


def _hand_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over frames of 1 - 2 sum(p g) / (sum(p^2) + 0.001 + sum(g^2) + 0.001), with plain floats."""
    per_frame = []
    for x, g in zip(logits.tolist(), target.tolist()):
        p = [1 / (1 + math.exp(-v)) for row in x for v in row]
        g = [v for row in g for v in row]
        inter = sum(a * b for a, b in zip(p, g))
        per_frame.append(1 - 2 * inter / (sum(a * a for a in p) + 0.001 + sum(b * b for b in g) + 0.001))
    return sum(per_frame) / len(per_frame)


def _hand_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over frames and pixels of log(sum_k exp(z_k)) - z_label, with plain floats."""
    z, y = logits.tolist(), labels.tolist()
    total, count = 0.0, 0
    for f in range(len(y)):
        for i in range(len(y[f])):
            for j in range(len(y[f][i])):
                scores = [z[f][k][i][j] for k in range(len(z[f]))]
                total += math.log(sum(math.exp(s) for s in scores)) - scores[y[f][i][j]]
                count += 1
    return total / count


def test_binary_loss_is_dice_on_both_decoder_layers():
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(3, 1, 5, 4, generator=g) * 3 for _ in range(2)]
    masks = (torch.rand(3, 5, 4, generator=g) > 0.5).float()
    masks[2] = 0                                                   # an empty mask: only the epsilon is left
    terms = avs_mamba_binary_loss(outputs, masks)
    final, interm = _hand_dice(outputs[1][:, 0], masks), _hand_dice(outputs[0][:, 0], masks)
    assert set(terms) == {"dice", "interm", "loss"}
    assert terms["dice"].item() == pytest.approx(final, rel=1e-5)
    assert terms["interm"].item() == pytest.approx(interm, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(final + interm, rel=1e-5)
    perfect = masks[:2, None] * 40 - 20                            # confident and right on the non-empty masks
    assert avs_mamba_binary_loss([perfect, perfect], masks[:2])["loss"] < 0.01
    wrong_output = avs_mamba_binary_loss([perfect, -perfect], masks[:2])    # the last entry is the output
    assert wrong_output["dice"] > 0.99 and wrong_output["interm"] < 0.01


def test_semantic_loss_is_cross_entropy_on_both_decoder_layers():
    g = torch.Generator().manual_seed(1)
    outputs = [torch.randn(2, 4, 3, 3, generator=g) * 2 for _ in range(2)]
    labels = torch.randint(0, 4, (2, 3, 3), generator=g)
    terms = avs_mamba_semantic_loss(outputs, labels)
    final, interm = _hand_cross_entropy(outputs[1], labels), _hand_cross_entropy(outputs[0], labels)
    assert set(terms) == {"ce", "interm", "loss"}
    assert terms["ce"].item() == pytest.approx(final, rel=1e-5)
    assert terms["interm"].item() == pytest.approx(interm, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(final + interm, rel=1e-5)


def test_forward_decodes_the_supervised_frames_as_the_full_model():
    torch.manual_seed(0)
    model = _quiet(MODEL)
    g = torch.Generator().manual_seed(2)
    supervised = torch.tensor([[True, False, False, True, False]])
    batch = {"frames": torch.randn(1, 5, 3, 64, 64, generator=g), "log_mel": torch.randn(1, 5, 1, 96, 64, generator=g),
             "masks": (torch.rand(1, 5, 224, 224, generator=g) > 0.5).float(), "supervised": supervised,
             "valid": torch.ones(1, 5, dtype=torch.bool)}
    with torch.no_grad():
        outputs, targets = forward_supervised_avs_mamba(model, None, batch, False, CPU)
        full = model(batch["frames"].flatten(0, 1), batch["log_mel"].flatten(0, 1), aux=True)
    sel = supervised.flatten()
    assert len(outputs) == len(full) == 2 and outputs[0].shape == (2, 1, 224, 224)
    for got, want in zip(outputs, full):
        want = F.interpolate(want[sel], size=(224, 224), mode="bilinear", align_corners=False)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(targets, batch["masks"].flatten(0, 1)[sel])


def test_a_trainer_step_lowers_the_loss(s4_data, vggish_file, tmp_path):
    trainer = Trainer(_config(s4_data, tmp_path / "run", vggish=str(vggish_file)), progress=False)
    assert trainer.recipe == AVS_MAMBA_RECIPES["s4"] and trainer.audio is None
    inside = trainer.model.audio_backbone
    for key, value in torch.load(vggish_file, weights_only=True).items():   # --vggish went into audio_backbone
        assert torch.equal(inside.state_dict()[key], value), key
    assert not any(p.requires_grad for p in inside.parameters())
    batch = collate([trainer.train_data[0]])
    assert batch["supervised"][0, 0] and not batch["supervised"][0, 1:].any()     # S4: frame 0 only
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    before = _eval_loss(trainer.model, batch)
    record = trainer.fit()
    assert _eval_loss(trainer.model, batch) < before
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("mamba_encoder.") for k in changed) and any(k.startswith("fc.") for k in changed)
    # VGGish stays frozen; the image backbone is frozen for the recipe's first 20 epochs
    assert not [k for k in changed if k.startswith(("audio_backbone.", "vision_backbone."))]
    train = record["epochs"][0]["train"]
    assert train["clips"] == 1 and {"dice", "interm"} <= set(train) and math.isfinite(train["loss"])
    assert record["recipe"]["loss"] == "avs-mamba-binary" and record["recipe"]["frozen_backbone_epochs"] == 20
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pth", "last.pth", "train_record.json",
                                                                    "train_state.pt"]


def test_the_command_line_trains_and_best_pth_loads_strictly(s4_data, vggish_file, tmp_path):
    out = tmp_path / "run"
    start = Trainer(_config(s4_data, out, vggish=str(vggish_file)), progress=False)   # the run's first weights
    batch = collate([start.train_data[0]])
    before = _eval_loss(start.model, batch)
    assert train_main(["--model", MODEL, "--data", str(s4_data), "--out", str(out), "--vggish", str(vggish_file),
                       "--epochs", "1", "--batch", "1", "--lr", "1e-3", "--seed", "0", "--device", "cpu",
                       "--quiet"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # no "random weights" warning
        trained = create_model(MODEL, out / "best.pth")
    assert _eval_loss(trained, batch) < before
    saved = json.loads((out / "train_record.json").read_text())
    assert saved["best"]["epoch"] == 1 and 0 <= saved["best"]["M_J"] <= 1
    assert saved["settings"]["lr"] == 1e-3 and saved["recipe"]["task"] == "s4"


def test_vggish_options(s4_data, vggish_file, tmp_path, capsys):
    with pytest.raises(TrainingError, match="--init"):                 # frozen VGGish needs weights
        Trainer(_config(s4_data, tmp_path), progress=False)
    wrong = tmp_path / "model.pth"
    torch.save(_quiet(MODEL).state_dict(), wrong)
    assert train_main(["--model", MODEL, "--data", str(s4_data), "--out", str(tmp_path / "o"),
                       "--vggish", str(wrong), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--vggish" in err and "vggish-test" in err
    # --init brings VGGish with it; --vggish replaces it
    init = _quiet(MODEL).state_dict()
    torch.save(init, wrong)
    model = Trainer(_config(s4_data, tmp_path, init=str(wrong)), progress=False).model
    assert torch.equal(model.audio_backbone.features[0].weight, init["audio_backbone.features.0.weight"])
    model = Trainer(_config(s4_data, tmp_path, init=str(wrong), vggish=str(vggish_file)), progress=False).model
    vggish = torch.load(vggish_file, weights_only=True)
    assert torch.equal(model.audio_backbone.features[0].weight, vggish["features.0.weight"])
    # --audio-encoder train unfreezes the VGGish inside the model
    model = Trainer(_config(s4_data, tmp_path, audio_encoder="train"), progress=False).model
    assert all(p.requires_grad for p in model.audio_backbone.parameters())


def test_torch_predictor_runs_the_vggish_inside(s4_data):
    torch.manual_seed(0)
    model = _quiet(MODEL)
    clip = AVSBench(s4_data, "s4", "val", 64)[0]
    cfg = pretrained_cfg(MODEL)
    with torch.no_grad():
        frames = torch.from_numpy(normalize_frames(clip.frames, cfg.mean, cfg.std))
        want = torch.sigmoid(model(frames, torch.from_numpy(clip.log_mel))[:, 0]).numpy()
    got = torch_predictor(model, model.audio_backbone)(clip)         # what load_for_eval returns for AVS-Mamba
    assert got.shape == (5, 64, 64)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(want), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="inside"):
        torch_predictor(model, _quiet("vggish-test"))


@pytest.mark.slow
def test_an_avss_step_lowers_the_cross_entropy(tmp_path):
    """A tiny AVSS model (10-frame window, 71 classes) on a 5-frame AVSBench-semantic clip (padded to 10): the
    padded frames stay out of the loss, one AdamW step lowers it."""
    from export.models.avs_mamba import AVSMamba, AVSMambaConfig
    from test_datasets import write_avss_tree

    write_avss_tree(tmp_path, [("u1", "v1m", "train")])
    cfg = pretrained_cfg(MODEL)
    data = ClipDataset(AVSBench(tmp_path, "avss", "train", 64), cfg.mean, cfg.std)
    batch = collate([data[0]])
    assert batch["valid"].sum() == batch["supervised"].sum() == 5 and batch["frames"].shape[1] == 10
    torch.manual_seed(0)
    model = AVSMamba(AVSMambaConfig(name="avs-mamba-avss-tiny", backbone="pvt-test", setting="avss",
                                    audio_backbone="vggish-test", resolution=64, frames=10, num_classes=71, dim=16,
                                    d_state=4, norm_groups=8, ffn_hidden=32, head_widths=(16, 8)))
    model.eval()                                                   # no drop-path noise; gradients still flow
    outputs, labels = forward_supervised_avs_mamba(model, None, batch, False, CPU)
    assert len(outputs) == 2 and outputs[0].shape == (int(batch["supervised"].sum()), 71, 224, 224)
    assert labels.dtype == torch.int64 and labels.max() > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = avs_mamba_semantic_loss(outputs, labels)
    before["loss"].backward()
    optimizer.step()
    with torch.no_grad():
        after = avs_mamba_semantic_loss(*forward_supervised_avs_mamba(model, None, batch, False, CPU))
    assert after["loss"] < before["loss"]
