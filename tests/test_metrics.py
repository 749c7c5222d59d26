"""runtime.metrics: hand-computed cases, and agreement with loop references that follow the official scripts."""
import numpy as np
import pytest

from runtime.metrics import (BinaryMeter, SemanticMeter, frame_f_curve, frame_iou, pr_thresholds,
                             semantic_frame_scores)


def test_thresholds_are_torch_linspace():
    torch = pytest.importorskip("torch")
    expected = torch.linspace(0, 1 - 1e-10, 255).numpy()
    assert np.array_equal(pr_thresholds(), expected)
    assert pr_thresholds()[-1] == 1.0  # 1 - 1e-10 rounds to 1 in float32


def test_iou_hand_cases():
    gt = np.zeros((4, 4))
    gt[:2] = 1
    assert frame_iou(gt * 0.9, gt) == pytest.approx(1.0, abs=1e-6)           # perfect
    assert frame_iou((1 - gt) * 0.9, gt) == 0.0                                # all wrong
    half = gt.copy()
    half[1] = 0
    assert frame_iou(half, gt) == pytest.approx(0.5, abs=1e-6)                 # 4 of 8
    assert frame_iou(np.full((4, 4), 0.5), gt) == 0.0                          # 0.5 is not > 0.5
    empty = np.zeros((4, 4))
    assert frame_iou(empty, empty) == pytest.approx(1.0, abs=1e-6)             # empty GT, nothing predicted
    assert frame_iou(gt, empty) == pytest.approx(0.5, abs=1e-6)                # empty GT: half the pixels right
    with pytest.raises(ValueError, match="same"):
        frame_iou(np.zeros((4, 4)), np.zeros((4, 5)))


def test_f_curve_known_pr_curve():
    # foreground probabilities 0.9 0.6 0.3 0.1, background 0.7 0.2 0 0 (worked out by hand per threshold band)
    prob = np.array([[0.9, 0.6, 0.3, 0.1], [0.7, 0.2, 0.0, 0.0]], np.float32)
    gt = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], np.float64)
    curve = frame_f_curve(prob, gt)
    th = pr_thresholds()
    f = lambda p, r: 1.3 * p * r / (0.3 * p + r)  # noqa: E731
    expected = np.select([th <= 0, th <= 0.1, th <= 0.2, th <= 0.3, th <= 0.6, th <= 0.7, th <= 0.9],
                         [f(4 / 8, 1), f(4 / 6, 1), f(3 / 5, 3 / 4), f(3 / 4, 3 / 4), f(2 / 3, 1 / 2),
                          f(1 / 2, 1 / 4), f(1, 1 / 4)], 0.0)
    np.testing.assert_allclose(curve, expected, atol=1e-9)
    assert curve.max() == pytest.approx(0.75)
    assert frame_f_curve(prob, np.zeros_like(gt)) is None


def test_batches_group_clips_like_the_official_script():
    gt = np.zeros((1, 2, 2))
    gt[0, 0] = 1
    perfect, wrong = gt * 0.99, (1 - gt) * 0.99
    half = np.array([[[0.99, 0.0], [0.99, 0.0]]])                              # IoU 1/3
    meter = BinaryMeter(clips_per_batch=2)
    meter.add_clip(np.concatenate([perfect, perfect]), np.concatenate([gt, gt]))   # batch 1: frames 1, 1, 0
    meter.add_clip(wrong, gt)
    meter.add_clip(half, gt)                                                        # batch 2: 1/3
    result = meter.result()
    assert result["official"]["M_J"] == pytest.approx((2 / 3 + 1 / 3) / 2, abs=1e-6)
    assert result["per_frame"]["M_J"] == pytest.approx((1 + 1 + 0 + 1 / 3) / 4, abs=1e-6)
    assert result["official"]["batches"] == 2


def test_batch_with_only_empty_ground_truth_scores_f_zero():
    gt = np.zeros((1, 2, 2))
    gt[0, 0] = 1
    meter = BinaryMeter(clips_per_batch=1)
    meter.add_clip(gt * 0.9, gt)                                              # F 1
    meter.add_clip(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))                  # no object: F counts as 0
    result = meter.result()
    assert result["official"]["M_F"] == pytest.approx(0.5)
    assert result["per_frame"]["M_F"] == pytest.approx(1.0)                   # empty frames left out
    assert result["official"]["M_J"] == pytest.approx(1.0, abs=1e-6)


def _official_binary(logit_clips, gt_clips, clips_per_batch):
    """The official test loop, transcribed with torch and per-threshold loops."""
    import torch

    def mask_iou(pred, target):
        n, pixels = pred.shape[0], pred.shape[-1] * pred.shape[-2]
        empty = target.sum(2).sum(1) == 0
        pred = (torch.sigmoid(pred) > 0.5).int()
        inter = (pred * target).sum(2).sum(1)
        union = torch.max(pred, target).sum(2).sum(1)
        inter[empty] = ((1 - target) * (1 - pred)).sum(2).sum(1)[empty]
        union[empty] = pixels
        return torch.sum(inter / (union + 1e-7)) / n

    def f_measure(pred, gt):
        pred = torch.sigmoid(pred)
        thresholds = torch.linspace(0, 1 - 1e-10, 255)
        total, count, score = 0.0, 0, torch.zeros(255)
        for i in range(pred.shape[0]):
            if torch.mean(gt[i]) == 0.0:
                continue
            prec, rec = torch.zeros(255), torch.zeros(255)
            for k in range(255):
                y = (pred[i] >= thresholds[k]).float()
                tp = (y * gt[i]).sum()
                prec[k], rec[k] = tp / (y.sum() + 1e-20), tp / (gt[i].sum() + 1e-20)
            f = 1.3 * prec * rec / (0.3 * prec + rec)
            f[f != f] = 0
            total = total + f
            count += 1
            score = total / count
        return score.max().item()

    ious, fs = [], []
    for start in range(0, len(logit_clips), clips_per_batch):
        pred = torch.from_numpy(np.concatenate(logit_clips[start:start + clips_per_batch]))
        gt = torch.from_numpy(np.concatenate(gt_clips[start:start + clips_per_batch]))
        ious.append(mask_iou(pred, gt).item())
        fs.append(f_measure(pred, gt))
    return float(np.mean(ious)), float(np.mean(fs))


def test_binary_meter_matches_the_official_loops():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits, gts = [], []
    for clip in range(5):
        gt = (rng.random((5, 12, 12)) < rng.uniform(0.1, 0.5)).astype(np.float32)
        if clip == 1:
            gt[2:] = 0                                                      # frames without a sounding object
        if clip == 4:
            gt[:] = 0                                                       # the last batch has no object at all
        logits.append((rng.normal(size=gt.shape) + 2.5 * (gt - 0.5)).astype(np.float32))
        gts.append(gt)
    for per_batch in (1, 2, 3):
        meter = BinaryMeter(per_batch)
        for lg, gt in zip(logits, gts):
            meter.add_clip(torch.sigmoid(torch.from_numpy(lg)).numpy(), gt)
        expected_j, expected_f = _official_binary(logits, gts, per_batch)
        got = meter.result()["official"]
        assert got["M_J"] == pytest.approx(expected_j, abs=1e-6)
        assert got["M_F"] == pytest.approx(expected_f, abs=1e-6)


def test_semantic_hand_case():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 0, 1, 2], [0, 0, 1, 1]])
    iou, f, present = semantic_frame_scores(pred, gt, 4)
    np.testing.assert_allclose(iou, [1.0, 3 / 4, 0.0, 0.0])
    np.testing.assert_allclose(f[:3], [1.0, 1.3 * 1 * 0.75 / (0.3 + 0.75), 0.0])
    np.testing.assert_array_equal(present, [1, 1, 1, 0])
    meter = SemanticMeter(4)
    meter.add_clip(pred[None], gt[None], padded=1)
    result = meter.result()
    # valid frame only: classes 0, 1, 2 occur, class 3 never (counts 0 in the mean over 4 classes)
    assert result["per_frame"]["M_J"] == pytest.approx((1 + 0.75 + 0 + 0) / 4)
    # the padded frame adds a perfect class-0 frame: class 0 is (1 + 1) / 2, unchanged
    assert result["official"]["M_J"] == pytest.approx((1 + 0.75 + 0 + 0) / 4)
    assert result["official"]["padded_frames"] == 1


def _official_semantic(logit_frames, target_frames, nclass):
    """compute_color_metrics.py's per-frame histc loop and test.py's final means."""
    import torch

    iou_sum, f_sum, count = torch.zeros(nclass), torch.zeros(nclass), torch.zeros(nclass)
    predict = torch.argmax(torch.softmax(torch.from_numpy(logit_frames), 1), 1) + 1
    target = torch.from_numpy(target_frames).float() + 1
    predict = predict.float() * (target > 0).float()
    inter_map = predict * (predict == target).float()
    for i in range(target.shape[0]):
        inter = torch.histc(inter_map[i], bins=nclass, min=1, max=nclass)
        area_pred = torch.histc(predict[i], bins=nclass, min=1, max=nclass)
        area_lab = torch.histc(target[i], bins=nclass, min=1, max=nclass)
        union = area_pred + area_lab - inter
        iou_sum += inter / (2.220446049250313e-16 + union)
        count[torch.nonzero(union).squeeze(-1)] += 1
        p, r = inter / area_pred, inter / area_lab
        f = 1.3 * p * r / (0.3 * p + r)
        f[torch.isnan(f)] = 0
        f_sum += f
    miou, fs = iou_sum / count, f_sum / count
    miou[torch.isnan(miou)] = 0
    fs[torch.isnan(fs)] = 0
    return miou.mean().item(), fs.mean().item()


def test_semantic_meter_matches_the_official_loops_with_padding():
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    nclass, meter = 7, SemanticMeter(7)
    all_logits, all_targets = [], []
    for valid in (5, 10, 5):
        target = rng.integers(0, 4, (10, 9, 9))
        logits = rng.normal(size=(10, nclass, 9, 9)).astype(np.float32)
        logits[np.arange(10)[:, None, None], target, np.arange(9)[:, None], np.arange(9)] += 1.5
        target[valid:] = 0
        logits[valid:] = 0                                  # the official model zeroes padded frames' output
        meter.add_clip(logits[:valid].argmax(1), target[:valid], padded=10 - valid)
        all_logits.append(logits)
        all_targets.append(target)
    miou, fscore = _official_semantic(np.concatenate(all_logits), np.concatenate(all_targets), nclass)
    result = meter.result()["official"]
    assert result["M_J"] == pytest.approx(miou, abs=1e-6)
    assert result["M_F"] == pytest.approx(fscore, abs=1e-6)
