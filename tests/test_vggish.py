"""export.models.vggish: shapes, the (H, W, C) flatten order, the checkpoint layout and input checks."""
from __future__ import annotations

import pytest
import torch

from export.models.vggish import VGGish  # registers "vggish"
from export.models._registry import model_builder


@pytest.fixture(scope="module")
def model() -> VGGish:
    torch.manual_seed(0)
    return model_builder("vggish")().eval()


def test_forward_shape_and_non_negative(model):
    with torch.no_grad():
        out = model(torch.randn(3, 1, 96, 64))
    assert out.shape == (3, 128) and out.dtype == torch.float32
    assert (out >= 0).all() and (out > 0).any()


def test_flatten_is_height_width_channel():
    """A first FC row that reads one flattened position must see the feature map at (h, w, c) = (2, 3, 100)."""
    h, w, c = 2, 3, 100
    torch.manual_seed(1)
    probe = VGGish().eval()
    with torch.no_grad():
        for layer in probe.features:
            if isinstance(layer, torch.nn.Conv2d):
                layer.bias.fill_(0.05)  # keep the ReLU maps positive, so the probed value is not 0
        for layer in (probe.embeddings[0], probe.embeddings[2], probe.embeddings[4]):
            layer.weight.zero_()
            layer.bias.zero_()
        probe.embeddings[0].weight[0, (h * 4 + w) * 512 + c] = 1.0
        probe.embeddings[2].weight[0, 0] = 1.0
        probe.embeddings[4].weight[0, 0] = 1.0
        x = torch.randn(2, 1, 96, 64)
        fmap = probe.features(x)  # [2, 512, 6, 4]
        out = probe(x)
    expected = fmap[:, c, h, w]
    assert (expected > 0).all()
    torch.testing.assert_close(out[:, 0], expected, rtol=0, atol=0)
    chw_reading = fmap.flatten(1)[:, (h * 4 + w) * 512 + c]  # what a (C, H, W) flatten would have given
    assert not torch.equal(chw_reading, expected)
    assert (out[:, 1:] == 0).all()


def test_state_dict_matches_the_released_checkpoint_layout(model, shared_dir):
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sum(v.numel() for v in model.parameters()) == 72_141_184  # shared/specs/selm.md section 2.3
    expected = {}
    for line in (shared_dir / "reference" / "state_dicts" / "vggish.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            expected[key] = tuple(int(d) for d in shape.strip("[]").split(","))
            assert dtype == "float32"
    assert state == expected


@pytest.mark.parametrize("shape", [(1, 96, 64), (2, 1, 64, 96), (2, 3, 96, 64), (2, 1, 96, 64, 1)])
def test_wrong_input_shape_is_refused(model, shape):
    with pytest.raises(ValueError, match=r"expects log-mel examples \[N, 1, 96, 64\].*got shape"):
        model(torch.zeros(shape))


def test_wrong_dtype_is_refused(model):
    with pytest.raises(ValueError, match="float32"):
        model(torch.zeros(1, 1, 96, 64, dtype=torch.float64))


@pytest.mark.parametrize("option", ["gumbel", "pretrained"])
def test_builder_refuses_options_it_does_not_have(option):
    with pytest.raises(TypeError, match=f"vggish: unknown option\\(s\\) {option}"):
        model_builder("vggish")(**{option: "none"})


def test_test_variant_is_tiny_with_the_same_interface():
    torch.manual_seed(0)
    tiny = model_builder("vggish-test")().eval()
    assert sum(p.numel() for p in tiny.parameters()) < 10_000
    with torch.no_grad():
        assert tiny(torch.randn(2, 1, 96, 64)).shape == (2, 128)
