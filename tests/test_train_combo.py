"""COMBO training (``python -m export.train``): the set criterion's pieces against hand computations (targets,
Hungarian matching, class/mask/Dice weights, the no-object weight, the consistency loss on intermediate predictions
only), the Maskige data path, the recipe's optimiser (backbone lr, poly schedule, gradient clipping), one step of
``combo-test`` on two synthetic S4 clips through the Trainer and through the command line (the loss drops,
``best.pth`` loads strictly), and the validation predictor. One step of the tiny variant takes seconds on a CPU."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from export.evaluate import torch_predictor
from export.models import create_model, pretrained_cfg
from export.train import main as train_main
from export.training.data import ClipDataset, ClipMaskiges, collate
from export.training.losses import (COMBO_CRITERION, combo_binary_loss, combo_loss, consistency_loss,
                                    combo_semantic_loss, hungarian_match, point_sample, set_targets,
                                    uncertain_points)
from export.training.recipe import COMBO_RECIPES
from export.training.trainer import SCHEDULES, TrainConfig, Trainer, forward_supervised_combo
from runtime.datasets import synth
from runtime.datasets.avsbench import AVSBench, DatasetError, normalize_frames
from runtime.mask_sources import maskige_path

MODEL = "combo-test"
CPU = torch.device("cpu")


def _quiet(name, checkpoint=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return create_model(name, checkpoint, **kw)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny model's ops are too small to share, and on a busy CPU extra threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def s4_data(tmp_path_factory) -> Path:
    """Two S4 training clips (frame-0 masks, as AVSBench) and one validation clip; no published Maskiges."""
    root = tmp_path_factory.mktemp("synth")
    synth.write_dataset(root, "s4", 2, seed=5, split="train", progress=False)
    synth.write_dataset(root, "s4", 1, seed=5, split="val", progress=False)
    return root


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# -- criterion pieces -------------------------------------------------------------------------------------------

def test_targets_are_the_classes_present_with_their_masks():
    binary = torch.zeros(2, 4, 4)
    binary[0, :2] = 1                                               # frame 0: object on top; frame 1: silent
    (labels0, masks0), (labels1, masks1) = set_targets(binary, binary=True)
    assert labels0.tolist() == [0, 1] and torch.equal(masks0[1], binary[0]) and torch.equal(masks0[0], 1 - binary[0])
    assert labels1.tolist() == [0] and masks1.shape == (1, 4, 4) and masks1.all()
    semantic = torch.tensor([[[0, 3, 3], [255, 7, 0], [0, 0, 255]]])
    ((labels, masks),) = set_targets(semantic, binary=False)
    assert labels.tolist() == [0, 3, 7]                             # the ignore label is no target
    assert masks.sum((1, 2)).tolist() == [4, 2, 1] and masks[:, 1, 0].sum() == 0


def test_point_sample_is_bilinear_over_pixel_centres():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    coords = torch.tensor([[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.5, 0.5], [0.5, 0.25]]])    # (x, y)
    assert point_sample(maps, coords)[0].tolist() == pytest.approx([0.0, 1.0, 2.0, 1.5, 0.5])


def test_uncertain_points_prefer_logits_near_zero():
    logits = torch.full((1, 16, 16), 20.0)
    logits[0, :, :8] = 0.0                                          # the uncertain half: x < 0.5
    torch.manual_seed(0)
    coords = uncertain_points(logits, 400, 3.0, 0.75)               # ~600 of the 1,200 candidates are there
    assert coords.shape == (1, 400, 2)
    assert (coords[0, :300, 0] < 0.5).all()                         # the 300 importance points are in it
    assert 25 < (coords[0, 300:, 0] >= 0.5).sum() < 75              # the 100 uniform ones are not


def test_matching_picks_the_query_with_the_right_mask_and_class():
    labels = torch.tensor([0, 1])
    targets = torch.zeros(2, 32, 32)
    targets[1, :, :16] = 1                                          # object: left half
    targets[0] = 1 - targets[1]
    masks = torch.full((4, 8, 8), -6.0)
    masks[0, :, :4] = 6.0                                           # query 0: left half
    masks[2, :, 4:] = 6.0                                           # query 2: right half
    masks[3] = masks[0]                                             # query 3: left half, but says background
    logits = torch.zeros(4, 3)
    logits[0, 1] = logits[2, 0] = logits[3, 0] = 4.0
    torch.manual_seed(0)
    rows, cols = hungarian_match(logits, masks, labels, targets)
    assert dict(zip(cols.tolist(), rows.tolist())) == {1: 0, 0: 2}
    logits[0, 1], logits[3, 1] = 0.0, 4.0                           # now query 3 names the object, query 0 not
    rows, cols = hungarian_match(logits, masks, labels, targets)
    assert dict(zip(cols.tolist(), rows.tolist())) == {1: 3, 0: 2}


def _prediction(logits: torch.Tensor, mask_logits: list[list[float]], size: int = 8) -> dict:
    """A prediction dict with constant mask logits per frame and query."""
    masks = torch.tensor(mask_logits)[:, :, None, None].expand(-1, -1, size, size).clone()
    return {"pred_logits": logits, "pred_masks": masks}


def test_loss_terms_weights_and_no_object_weight_by_hand():
    """Two frames of one clip, frame 0 supervised and all object; 3 queries, two predictions (one intermediate,
    the final one). Mask logits 0 on frame 0 (sampled as 0 everywhere, zero padding included), so the class
    scores decide the matching and BCE is log 2 exactly: ce, BCE and Dice by hand, the weights 2/5/5/10."""
    logits = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 3.0, 0.0], [0.2, 0.1, 0.0]]]).repeat(2, 1, 1)
    final = _prediction(logits, [[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    aux = _prediction(logits * 0.5, [[0.0, 0.0, 0.0], [1.0, -1.0, 3.0]])
    outputs = {**final, "aux_outputs": [aux]}
    clip, supervised = torch.tensor([0, 0]), torch.tensor([True, False])
    masks = torch.ones(1, 224, 224)                                 # all object: one target, label 1
    torch.manual_seed(0)
    terms = combo_binary_loss(outputs, clip, supervised, masks)

    def ce(rows: list[list[float]]) -> float:                      # query 1 matched to class 1, the rest no-object
        total = weights = 0.0
        for q, z in enumerate(rows):
            target, weight = (1, 1.0) if q == 1 else (2, 0.1)
            total += weight * (math.log(sum(math.exp(v) for v in z)) - z[target])
            weights += weight
        return total / weights

    points = COMBO_CRITERION.points                                 # truth 1 at (almost) every sampled point
    hand_dice = 1 - (2 * 0.5 * points + 1) / (0.5 * points + points + 1)
    assert terms["ce"].item() == pytest.approx(ce(logits[0].tolist()) + ce((logits[0] * 0.5).tolist()), rel=1e-5)
    assert terms["bce"].item() == pytest.approx(2 * math.log(2), rel=1e-6)
    # zero padding lowers the truth within half a pixel of the border (~0.5 % of the points); Dice barely moves
    assert terms["dice"].item() == pytest.approx(2 * hand_dice, rel=5e-3)
    ada = consistency_loss(aux["pred_masks"], clip).item()
    assert terms["ada"].item() == pytest.approx(ada)
    want = 2 * terms["ce"] + 5 * terms["bce"] + 5 * terms["dice"] + 10 * terms["ada"]
    assert terms["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    # the unsupervised frame's predictions do not enter the set losses (S4: frame 0 only)
    final["pred_logits"][1] += 5 * torch.randn(3, 3)
    final["pred_masks"][1] *= -3
    torch.manual_seed(0)
    again = combo_binary_loss(outputs, clip, supervised, masks)
    for key in ("ce", "bce", "dice", "ada"):
        assert again[key].item() == pytest.approx(terms[key].item(), rel=1e-6), key
    # AVSS: the consistency weight is 5
    semantic = combo_loss(outputs, clip, supervised, masks.long(), binary=False)
    want = 2 * semantic["ce"] + 5 * semantic["bce"] + 5 * semantic["dice"] + 5 * semantic["ada"]
    assert semantic["loss"].item() == pytest.approx(want.item(), rel=1e-6)


def test_consistency_loss_by_hand_and_on_intermediate_predictions_only():
    g = torch.Generator().manual_seed(3)
    masks = torch.randn(5, 2, 3, 3, generator=g)                    # clip 0: frames 0-2, clip 1: frames 3-4
    clip = torch.tensor([0, 0, 0, 1, 1])
    flat = masks.flatten(1).tolist()
    hand = []
    for a, b in ((0, 1), (1, 2), (3, 4)):                           # no pair across clips
        cos = sum(x * y for x, y in zip(flat[a], flat[b])) / math.sqrt(sum(x * x for x in flat[a]) *
                                                                       sum(y * y for y in flat[b]))
        hand.append((1 - cos) * math.exp(-(1 - cos)))
    assert consistency_loss(masks, clip).item() == pytest.approx(sum(hand) / 3, rel=1e-5)
    assert consistency_loss(masks[:1], clip[:1]).item() == 0.0      # one frame: no pair
    # in the loss: only the intermediate predictions count
    logits = torch.zeros(5, 2, 3)
    outputs = {"pred_logits": logits, "pred_masks": masks.clone(),
               "aux_outputs": [{"pred_logits": logits, "pred_masks": masks.clone()} for _ in range(2)]}
    supervised = torch.tensor([True, False, False, True, False])
    targets = torch.zeros(2, 224, 224)
    torch.manual_seed(0)
    base = combo_binary_loss(outputs, clip, supervised, targets)["ada"].item()
    assert base == pytest.approx(2 * sum(hand) / 3, rel=1e-5)       # summed over the intermediate predictions
    outputs["pred_masks"][1:3] = torch.randn(2, 2, 3, 3, generator=g)        # the final prediction's frames
    assert combo_binary_loss(outputs, clip, supervised, targets)["ada"].item() == pytest.approx(base, rel=1e-6)
    outputs["aux_outputs"][0]["pred_masks"][1:3] = masks[0]        # the first intermediate: frames 0-2 equal
    ada = combo_binary_loss(outputs, clip, supervised, targets)["ada"].item()
    assert ada == pytest.approx((hand[2] + sum(hand)) / 3, rel=1e-5)


# -- data, optimiser, training ----------------------------------------------------------------------------------

def test_synthetic_maskiges_are_painted_and_cached_published_ones_read(s4_data, tmp_path):
    data = AVSBench(s4_data, "s4", "val", 64)
    clip = data[0]
    maskiges = ClipMaskiges(data)
    assert maskiges.synthetic and all(p.is_file() for p in maskiges.frame_files(clip))
    first = maskiges(clip)
    assert first.shape == (5, 64, 64, 3) and first.dtype == np.uint8
    assert len(np.unique(first[0].reshape(-1, 3), axis=0)) > 1      # several segments
    maskiges._overseg = None                                        # painted once per frame: no painter needed now
    assert np.array_equal(maskiges(clip), first) and maskiges._overseg is None
    # a published Maskige wins over painting
    published = maskige_path(maskiges.frame_files(clip)[1])
    published.parent.mkdir(parents=True)
    cv2.imwrite(str(published), np.full((224, 224, 3), (10, 20, 30), np.uint8))      # BGR on disk
    try:
        got = ClipMaskiges(data)(clip)
        assert (got[1] == (30, 20, 10)).all() and np.array_equal(got[0], first[0])
        (data.root / "synth_clips.jsonl").rename(tmp_path / "moved.jsonl")         # now "real" AVSBench
        with pytest.raises(DatasetError, match="missing Maskige .*_1_mask_color.png.*published"):
            ClipMaskiges(data)(clip)
    finally:
        published.unlink()
        if (tmp_path / "moved.jsonl").is_file():
            (tmp_path / "moved.jsonl").rename(data.root / "synth_clips.jsonl")


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(model=MODEL, data=str(data), out=str(out), **{
        **dict(epochs=1, batch=2, lr=1e-3, device="cpu", seed=0, threads=1), **kw})


def _eval_loss(model: torch.nn.Module, batch: dict) -> float:
    """The recipe's loss on ``batch`` in eval mode with fixed sampling points (seeded)."""
    model.eval()
    torch.manual_seed(11)
    with torch.no_grad():
        return combo_binary_loss(*forward_supervised_combo(model, None, batch, False, CPU))["loss"].item()


def test_recipe_optimiser_and_schedule(s4_data, vggish_file, tmp_path):
    trainer = Trainer(_config(s4_data, tmp_path / "run", vggish=str(vggish_file)), progress=False)
    assert trainer.recipe == COMBO_RECIPES["s4"] and trainer.schedule == "poly" and trainer.audio is None
    recipe = trainer.recipe
    assert (recipe.lr, recipe.weight_decay, recipe.batch, recipe.clip_grad_norm, recipe.backbone_lr) == \
        (1e-4, 0.05, 8, 0.01, 0.1)
    group_of = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    model = trainer.model
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        group = group_of[id(param)]
        assert group["lr"] == pytest.approx(1e-4 if "backbone" in name else 1e-3), name
    norm = model.sem_seg_head.predictor.decoder_norm.weight
    assert group_of[id(norm)]["weight_decay"] == 0.0
    assert group_of[id(model.sem_seg_head.predictor.query_feat.weight)]["weight_decay"] == 0.0     # an embedding
    assert group_of[id(model.sem_seg_head.predictor.class_embed.weight)]["weight_decay"] == 0.05
    assert SCHEDULES["poly"](0, 10) == 1.0 and SCHEDULES["poly"](5, 10) == pytest.approx(0.5 ** 0.9)
    assert SCHEDULES["poly"](10, 10) == 0.0


def test_a_trainer_step_lowers_the_loss(s4_data, vggish_file, tmp_path):
    trainer = Trainer(_config(s4_data, tmp_path / "run", vggish=str(vggish_file)), progress=False)
    batch = collate([trainer.train_data[0], trainer.train_data[1]])
    assert batch["maskige"].shape == batch["frames"].shape == (2, 5, 3, 64, 64)
    assert batch["supervised"][:, 0].all() and not batch["supervised"][:, 1:].any()      # S4: frame 0 only
    outputs, clip, supervised, targets = forward_supervised_combo(trainer.model, None, batch, False, CPU)
    assert len(outputs["aux_outputs"]) == 3 and outputs["pred_masks"].shape[0] == 10       # combo-test: 3 layers
    assert clip.tolist() == [0] * 5 + [1] * 5 and supervised.tolist() == ([True] + [False] * 4) * 2
    assert targets.shape == (2, 224, 224)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    before = _eval_loss(trainer.model, batch)
    record = trainer.fit()
    assert _eval_loss(trainer.model, batch) < before
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.startswith("sem_seg_head.") for k in changed) and any(k.startswith("backbone.") for k in changed)
    assert any(k.startswith("pre_sam_backbone.") for k in changed)
    assert not [k for k in changed if k.startswith("audio_backbone.")]                      # VGGish stays frozen
    train = record["epochs"][0]["train"]
    assert train["clips"] == 2 and {"ce", "bce", "dice", "ada"} <= set(train) and math.isfinite(train["loss"])
    assert record["recipe"]["loss"] == "combo-binary" and record["settings"]["schedule"] == "poly"
    assert record["settings"]["lr"] == 1e-3


def test_the_command_line_trains_and_best_pth_loads_strictly(s4_data, vggish_file, tmp_path):
    out = tmp_path / "run"
    start = Trainer(_config(s4_data, out, vggish=str(vggish_file)), progress=False)   # the run's first weights
    batch = collate([start.train_data[0], start.train_data[1]])
    before = _eval_loss(start.model, batch)
    assert train_main(["--model", MODEL, "--data", str(s4_data), "--out", str(out), "--vggish", str(vggish_file),
                       "--epochs", "1", "--batch", "2", "--lr", "1e-3", "--seed", "0", "--device", "cpu",
                       "--threads", "1", "--quiet"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # no "random weights" warning
        trained = create_model(MODEL, out / "best.pth")
    assert _eval_loss(trained, batch) < before
    saved = json.loads((out / "train_record.json").read_text())
    assert saved["best"]["epoch"] == 1 and 0 <= saved["best"]["M_J"] <= 1
    assert saved["recipe"]["task"] == "s4" and saved["settings"]["schedule"] == "poly"


def test_torch_predictor_feeds_the_maskiges_and_thresholds_object_over_background(s4_data):
    torch.manual_seed(0)
    model = _quiet(MODEL)
    data = AVSBench(s4_data, "s4", "val", 64)
    clip, maskiges = data[0], ClipMaskiges(data)
    cfg = pretrained_cfg(MODEL)
    with torch.no_grad():
        frames = torch.from_numpy(normalize_frames(clip.frames, cfg.mean, cfg.std))
        maskige = torch.from_numpy(normalize_frames(list(maskiges(clip)[:, :, :, ::-1]), cfg.mean, cfg.std))
        scores = model(frames, maskige, torch.from_numpy(clip.log_mel))
    got = torch_predictor(model, None, maskiges=maskiges)(clip)
    assert got.shape == (5, 64, 64)
    np.testing.assert_allclose(got, scores.softmax(dim=1)[:, 1].numpy(), atol=1e-6, rtol=1e-5)
    assert np.array_equal(got > 0.5, (scores[:, 1] > scores[:, 0]).numpy())
    with pytest.raises(ValueError, match="Maskige"):
        torch_predictor(model, None)


def test_an_avss_step_lowers_the_loss(tmp_path):
    """A tiny 71-class COMBO on a 5-frame and a 10-frame AVSBench-semantic clip (batched to 10 frames), with
    published Maskiges: the padded frames are not run, each clip's frames pair only among themselves, one AdamW
    step lowers the loss."""
    from export.models.combo import COMBO, COMBOConfig
    from test_datasets import write_avss_tree

    write_avss_tree(tmp_path, [("u1", "v1m", "train"), ("u2", "v2", "train")])
    reader = AVSBench(tmp_path, "avss", "train", 64)
    maskiges = ClipMaskiges(reader)
    rng = np.random.default_rng(0)
    for index in range(2):
        for frame_file in maskiges.frame_files(reader[index]):
            path = maskige_path(frame_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), rng.integers(0, 4, (224, 224, 1), dtype=np.uint8).repeat(3, 2) * 60)
    assert not maskiges.synthetic
    cfg = pretrained_cfg(MODEL)
    data = ClipDataset(reader, cfg.mean, cfg.std, maskiges=maskiges)
    batch = collate([data[0], data[1]])
    assert batch["frames"].shape[:2] == (2, 10) and batch["valid"].sum() == batch["supervised"].sum() == 15
    assert not batch["maskige"][0, 5:].any() and batch["maskige"][0, :5].std() > 0.1     # padding stays zero
    torch.manual_seed(0)
    model = COMBO(COMBOConfig(name="combo-avss-tiny", backbone="pvt-test", setting="avss",
                              audio_backbone="vggish-test", resolution=64, frames=10, num_classes=71, conv_dim=16,
                              mask_dim=16, hidden_dim=16, num_queries=8, nheads=2, norm_groups=4, enc_layers=1,
                              enc_ffn=32, dec_layers=3, dec_ffn=32, audio_mlp_hidden=32, se_reduction=4))
    model.eval()                                                   # no dropout noise; gradients still flow
    outputs, clip, supervised, labels = forward_supervised_combo(model, None, batch, False, CPU)
    assert outputs["pred_logits"].shape == (15, 8, 72) and clip.tolist() == [0] * 5 + [1] * 10
    assert supervised.all() and labels.dtype == torch.int64 and labels.shape == (15, 224, 224) and labels.max() > 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(1)
    before = combo_semantic_loss(outputs, clip, supervised, labels)
    assert before["loss"].item() == pytest.approx((2 * before["ce"] + 5 * before["bce"] + 5 * before["dice"]
                                                   + 5 * before["ada"]).item(), rel=1e-6)
    before["loss"].backward()
    optimizer.step()
    torch.manual_seed(1)
    with torch.no_grad():
        after = combo_semantic_loss(*forward_supervised_combo(model, None, batch, False, CPU))
    assert after["loss"] < before["loss"]
