"""python -m export.train: a short run lowers the loss, writes checkpoints in the official layout, resumes."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from export.models import create_model
from export.train import main as train_main
from export.training.data import collate
from export.training.losses import binary_loss, dice_loss
from export.training.trainer import TrainConfig, Trainer, TrainingError, forward_supervised
from runtime.datasets import synth


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Four S4 training clips (frame-0 masks, as AVSBench) and two validation clips."""
    root = tmp_path_factory.mktemp("synth")
    synth.write_dataset(root, "s4", 4, seed=5, split="train", progress=False)
    synth.write_dataset(root, "s4", 2, seed=5, split="val", progress=False)
    return root


def _loss(trainer: Trainer, batch: dict) -> float:
    trainer.model.train()
    trainer.model.gumbel = "none"
    with torch.no_grad():
        outputs = forward_supervised(trainer.model, trainer.audio, batch, True, trainer.device)
    return binary_loss(*outputs)["loss"].item()


def test_two_steps_lower_the_loss_and_the_checkpoint_loads_strictly(tiny_data, tmp_path):
    cfg = TrainConfig(model="selm-test", data=str(tiny_data), out=str(tmp_path / "run"), epochs=1, batch=2,
                      lr=3e-3, audio_encoder="train", gumbel="none", device="cpu", seed=0)
    trainer = Trainer(cfg, progress=False)
    batch = collate([trainer.train_data[i] for i in range(4)])
    assert batch["supervised"][:, 0].all() and not batch["supervised"][:, 1:].any()   # S4: frame 0 only
    before = _loss(trainer, batch)
    record = trainer.fit()
    after = _loss(trainer, batch)
    assert record["epochs"][0]["train"]["clips"] == 4                     # 2 steps of 2 clips
    assert after < before
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # no "random weights" warning
        model = create_model("selm-test", tmp_path / "run" / "best.pth")
        audio = create_model("vggish-test", tmp_path / "run" / "best.audio.pth")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name].cpu()), name
    assert torch.equal(audio.state_dict()["embeddings.4.weight"], trainer.audio.state_dict()["embeddings.4.weight"])
    saved = json.loads((tmp_path / "run" / "train_record.json").read_text())
    assert saved["best"]["epoch"] == 1 and 0 <= saved["best"]["M_J"] <= 1
    assert saved["settings"]["seed"] == 0 and saved["recipe"]["task"] == "s4"


def test_resume_continues_after_the_last_epoch(tiny_data, tmp_path):
    out = tmp_path / "run"
    common = ["--model", "selm-test", "--data", str(tiny_data), "--out", str(out), "--audio-encoder", "train",
              "--batch", "4", "--device", "cpu", "--quiet"]
    assert train_main(common + ["--epochs", "1"]) == 0
    assert train_main(common + ["--epochs", "2", "--resume"]) == 0
    record = json.loads((out / "train_record.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]


def test_frozen_audio_encoder_needs_its_weights(tiny_data, tmp_path):
    with pytest.raises(TrainingError, match="--vggish"):
        Trainer(TrainConfig(model="selm-test", data=str(tiny_data), out=str(tmp_path)), progress=False)


def test_a_model_without_a_training_family_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(TrainingError, match="only SelM, SDAVS, AVS-Mamba, COMBO variants train here"):
        Trainer(TrainConfig(model="vggish-test", data=str(tiny_data), out=str(tmp_path)), progress=False)


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert train_main(["--model", "selm-test", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                       "--audio-encoder", "train"]) == 2
    assert "--data" in capsys.readouterr().err


def test_dice_loss_is_zero_for_a_perfect_confident_prediction():
    target = torch.zeros(2, 8, 8)
    target[:, 2:5, 2:5] = 1
    assert dice_loss(target * 40 - 20, target) < 1e-3
    assert dice_loss(-target * 40 + 20, target) > 0.99
