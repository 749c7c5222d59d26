"""Strict checkpoint loading: official layout round trip, containers, prefix, and every error message."""
from __future__ import annotations

import argparse
import random
import re

import pytest
import torch

from export.models import CheckpointMismatchError, create_model, model_builder
from export.models.checkpoint import read_checkpoint

NAME = "selm-s4-r50"


def _meta_state_dict(name):
    with torch.device("meta"):
        return model_builder(name)().state_dict()


@pytest.fixture(scope="module")
def source():
    """A random selm-s4-r50 saved as the official code saves it: torch.save(model.state_dict(), path)."""
    with pytest.warns(UserWarning, match="random weights"):
        model = create_model(NAME)
    torch.manual_seed(0)
    with torch.no_grad():  # non-default values everywhere, buffers included
        for k, v in model.state_dict().items():
            if k.endswith("running_var"):
                v.uniform_(0.5, 1.5)
            elif v.is_floating_point():
                v.add_(0.01 * torch.randn(v.shape))
            else:
                v.fill_(7)
    return model


@pytest.fixture(scope="module")
def official_file(source, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "S4_R50.pth"
    torch.save(source.state_dict(), path)
    return path


def _run_last_frame(model):
    g = torch.Generator().manual_seed(1)
    frames, audio = torch.randn(1, 3, 224, 224, generator=g), torch.rand(1, 128, generator=g)
    with torch.inference_mode():
        maps, pooled, a = model.encode_frames(frames, audio)
        return model.decode_frames(maps, *model.temporal(pooled, a))


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_layout_round_trips(source, official_file):
    loaded = create_model(NAME, official_file)
    assert not loaded.training
    _assert_same_weights(source, loaded)
    assert torch.equal(_run_last_frame(source), _run_last_frame(loaded))


def test_model_container_and_module_prefix_load(source, tmp_path):
    sd = source.state_dict()
    for i, obj in enumerate(({"model": sd, "epoch": 3},
                             {"state_dict": {"module." + k: v for k, v in sd.items()}})):
        path = tmp_path / f"wrapped{i}.pth"
        torch.save(obj, path)
        _assert_same_weights(source, create_model(NAME, path))
        path.unlink()


def test_missing_unexpected_and_wrong_shape_keys_are_counted_and_named():
    sd = dict(_meta_state_dict(NAME))
    for k in ["decoder.tokens.weight", "audio_norm.bias", "BCSM.vis_linear.0.bias"]:
        del sd[k]
    sd["head.weight"] = torch.empty(3, device="meta")
    sd["decoder.layers.0.positional_embedding"] = torch.empty(784, 256, device="meta")
    with pytest.raises(CheckpointMismatchError) as err:
        create_model(NAME, sd)
    msg = str(err.value)
    assert "3 missing keys" in msg and "decoder.tokens.weight" in msg and "audio_norm.bias" in msg
    assert "1 unexpected keys (head.weight)" in msg
    assert "1 keys with the wrong shape" in msg
    assert "decoder.layers.0.positional_embedding: checkpoint [784, 256] vs model [196, 256]" in msg
    assert "matches no registered model" in msg


def test_many_missing_keys_are_elided_with_a_count():
    sd = {k: v for k, v in _meta_state_dict(NAME).items() if not k.startswith("resnet.")}
    with pytest.raises(CheckpointMismatchError, match=r"492 missing keys \(resnet\.conv1\.weight, .*\(487 more\)"):
        create_model(NAME, sd)


@pytest.mark.parametrize("given, expected", [("selm-ms3-r50", "selm-s4-r50"), ("selm-s4-pvt", "selm-ms3-pvt"),
                                             ("vggish", "selm-avss-pvt")])
def test_another_variants_checkpoint_is_named(given, expected):
    hint = re.escape(f"looks like a {given} checkpoint; use --model {given}")
    with pytest.raises(CheckpointMismatchError, match=hint):
        create_model(expected, _meta_state_dict(given))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nope.pth .*pretrained_cfg\(name\)"):
        create_model(NAME, tmp_path / "nope.pth")


NOT_A_CHECKPOINT = "is not a PyTorch checkpoint, or it is corrupt or truncated"


def test_truncated_file(official_file, tmp_path):
    cut = tmp_path / "cut.pth"
    with open(official_file, "rb") as f:
        cut.write_bytes(f.read(1 << 20))
    with pytest.raises(ValueError, match=NOT_A_CHECKPOINT):
        read_checkpoint(cut)


@pytest.mark.parametrize("content", [b"hello", b"", bytes(range(256)) * 16, random.Random(0).randbytes(4096)])
def test_not_a_checkpoint_never_suggests_unsafe_loading(tmp_path, content):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(content)
    with pytest.raises(ValueError, match=NOT_A_CHECKPOINT) as err:
        read_checkpoint(junk)
    assert str(junk) in str(err.value)
    assert "weights_only" not in str(err.value) and "False" not in str(err.value)


def test_non_dict_content(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(ValueError, match="holds a list, not a state_dict"):
        read_checkpoint(path)


def test_non_tensor_values(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"a": torch.zeros(2), "b": 3}, path)
    with pytest.raises(ValueError, match=r"1 entries are not str -> tensor, e.g. 'b'"):
        read_checkpoint(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({"args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ValueError, match=r"holds a pickled argparse.Namespace object besides tensors, which safe "
                                         r"\(weights_only\) loading refuses") as err:
        read_checkpoint(path)
    assert "False" not in str(err.value) and "add_safe_globals" not in str(err.value)


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        read_checkpoint(tmp_path)
