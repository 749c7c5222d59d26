"""Swin Transformer encoder: window helpers, shifted-window attention against a brute-force reference, stage
shapes (tiny and Swin-B at 384) and parameter count."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from export.models.swin import (SwinBlock, relative_position_index, shifted_window_mask, swin_base_384, swin_test,
                                window_partition, window_reverse)


def test_window_partition_round_trip_and_order():
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).reshape(2, 8, 8, 3)
    windows = window_partition(x, 4)
    assert windows.shape == (2 * 4, 16, 3)
    assert torch.equal(windows[1, 0], x[0, 0, 4])           # second window of image 0 starts at column 4
    assert torch.equal(window_reverse(windows, 4, 8, 8), x)


def test_relative_position_index_covers_the_table_symmetrically():
    w = 3
    index = relative_position_index(w)
    assert index.shape == (9, 9) and int(index.min()) == 0 and int(index.max()) == (2 * w - 1) ** 2 - 1
    assert torch.all(index.diagonal() == (w - 1) * (2 * w - 1) + (w - 1))     # zero offset: the table's centre
    assert torch.equal(index + index.T, torch.full_like(index, 2 * int(index[0, 0])))


def _reference_block(block: SwinBlock, x: torch.Tensor) -> torch.Tensor:
    """Brute force: each token attends to the tokens of its shifted window that are within one window of it in
    the unshifted image (no wrap-around), with the relative-position bias of their true offset."""
    b, h, w, c = x.shape
    win, shift, attn = block.window, block.shift, block.attn
    y = block.norm1(x)
    qkv = attn.qkv(y).reshape(b, h, w, 3, attn.heads, c // attn.heads)
    out = torch.zeros(b, h, w, c)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    win_id = ((ys - shift) % h // win) * (w // win) + ((xs - shift) % w // win)   # window after the cyclic shift
    table = attn.relative_position_bias_table
    for i in range(h):
        for j in range(w):
            same = (win_id == win_id[i, j]) & ((ys - i).abs() < win) & ((xs - j).abs() < win)
            keys = same.nonzero()
            dy, dx = i - keys[:, 0], j - keys[:, 1]
            bias = table[(dy + win - 1) * (2 * win - 1) + (dx + win - 1)]                  # [K, heads]
            q = qkv[:, i, j, 0] * attn.scale                                               # [B, heads, d]
            k = qkv[:, keys[:, 0], keys[:, 1], 1]                                          # [B, K, heads, d]
            v = qkv[:, keys[:, 0], keys[:, 1], 2]
            logits = torch.einsum("bhd,bkhd->bhk", q, k) + bias.T
            out[:, i, j] = (logits.softmax(-1).unsqueeze(-1) * v.transpose(1, 2)).sum(2).reshape(b, c)
    x = x + attn.proj(out)
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize("shift", [0, 2])
def test_shifted_window_block_equals_brute_force_attention(shift):
    torch.manual_seed(0)
    block = SwinBlock(dim=8, heads=2, size=8, window=4, shift=shift, mlp_ratio=2.0).eval()
    x = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_block(block, x), atol=1e-5, rtol=1e-5)


def test_shift_mask_blocks_exactly_the_wrapped_pairs():
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16) and set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all()                              # the top-left window holds no wrapped tokens
    assert (mask[3] != 0).sum() > (mask[1] != 0).sum() > 0   # the corner window mixes four regions


def test_no_shift_when_one_window_covers_the_map():
    block = SwinBlock(dim=8, heads=2, size=4, window=12, shift=6, mlp_ratio=2.0)
    assert (block.window, block.shift, block.attn_mask) == (4, 0, None)


def test_tiny_swin_stage_shapes_and_rejects_other_sizes():
    model = swin_test(64).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 8, 16, 16), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    assert all(torch.isfinite(f).all() for f in feats)
    with pytest.raises(ValueError, match="64x64"):
        model.forward_features(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match="windows"):
        swin_test(72)


def test_swin_b_384_parameters_and_stage_shapes():
    with torch.device("meta"):
        model = swin_base_384()
        feats = model.forward_features(torch.zeros(1, 3, 384, 384))
    # Swin-B without its classifier: 86.7 M (ImageNet head 1.0 M more); + our 4 output norms (3840 params)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(86.88e6, rel=2e-3)
    assert [tuple(f.shape) for f in feats] == [(1, 128, 96, 96), (1, 256, 48, 48), (1, 512, 24, 24),
                                               (1, 1024, 12, 12)]
    shifted = [blk for layer in model.layers for blk in layer.blocks if blk.shift]
    assert len(shifted) == 11 and all(b.window == 12 and b.shift == 6 for b in shifted)   # none in stage 4


def test_patch_merging_concatenates_2x2_neighbourhoods_in_timm_order():
    from export.models.swin import PatchMerging

    merge = PatchMerging(2)
    x = torch.randn(1, 4, 4, 2)
    with torch.no_grad():
        got = merge(x)
        # timm's order: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1), channels innermost
        want = merge.reduction(F.layer_norm(x[0, 2:, :2].permute(1, 0, 2).reshape(8), (8,)))
    assert got.shape == (1, 2, 2, 4)
    torch.testing.assert_close(got[0, 1, 0], want)
