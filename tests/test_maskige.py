"""COMBO's Maskige (runtime.maskige) and its three sources (runtime.mask_sources), on hand-made masks, real PNG files
and real ONNX models built here and run by ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.mask_sources import (OnnxMaskSource, OversegmentMaskSource, PrecomputedMaskige, maskige_path,
                                  open_mask_source, parse_mask_source)
from runtime.maskige import (ADE20K_PALETTE, MASKIGE_COLORS, colorize_ids, paint_ids, paint_label_ids,
                             paint_maskige, read_maskige)
from runtime.sync import training_timestamps

GREY = (120, 120, 120)  # id 0: no mask


def _boxes(shape, *boxes) -> np.ndarray:
    """One bool mask per (top, left, bottom, right) box."""
    masks = np.zeros((len(boxes), *shape), bool)
    for mask, (top, left, bottom, right) in zip(masks, boxes):
        mask[top:bottom, left:right] = True
    return masks


# -- painting --------------------------------------------------------------------------------------------------------

def test_smaller_masks_win_whatever_the_input_order():
    big, medium, small = (0, 0, 8, 8), (0, 0, 4, 8), (2, 2, 4, 4)  # areas 64, 32, 4
    ids = paint_ids(_boxes((8, 8), big, small, medium), size=8)
    expected = np.full((8, 8), 3, np.uint8)  # the big one, third by area
    expected[0:4, :] = 2
    expected[2:4, 2:4] = 1
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(paint_ids(_boxes((8, 8), medium, big, small), size=8), expected)


def test_equal_areas_keep_input_order_and_uncovered_pixels_are_zero():
    a, b = (0, 0, 2, 3), (0, 1, 2, 4)  # both area 6, overlapping in columns 1-2
    ids = paint_ids(_boxes((4, 4), a, b), size=4)
    assert ids[0].tolist() == [1, 1, 1, 2] and ids[3].tolist() == [0, 0, 0, 0]
    assert paint_ids(_boxes((4, 4), b, a), size=4)[0].tolist() == [2, 1, 1, 1]


def test_empty_masks_take_an_id_and_no_masks_give_id_zero():
    masks = np.concatenate([np.zeros((1, 6, 6), bool), _boxes((6, 6), (0, 0, 3, 3))])
    ids = paint_ids(masks, size=6)
    assert set(np.unique(ids)) == {0, 2}  # the empty mask is smallest: it takes id 1 and paints nothing
    assert (ids[:3, :3] == 2).all()
    empty = paint_maskige(np.zeros((0, 10, 12), bool), size=7)
    assert empty.shape == (7, 7, 3) and (empty == GREY).all()


def test_ids_past_255_wrap_as_the_official_uint8_cast():
    count = 300
    masks = np.zeros((count, count, count), bool)
    for k in range(count):
        masks[k, k, :k + 1] = True  # mask k has area k + 1: rank k, id k + 1
    ids = paint_ids(masks, size=count)
    first_column = ids[:, 0].astype(int)
    np.testing.assert_array_equal(first_column, (np.arange(count) + 1) % 256)
    assert first_column[254] == 255 and first_column[255] == 0 and first_column[256] == 1


def test_nearest_resize_follows_pillows_rule():
    ids = paint_ids(_boxes((3, 3), (0, 0, 1, 1), (1, 1, 3, 3)), size=2)  # Pillow samples rows/columns 0 and 2
    assert ids.tolist() == [[1, 0], [0, 2]]
    up = paint_ids(_boxes((2, 2), (0, 0, 1, 1)), size=4)
    assert up.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_painting_matches_the_official_procedure_with_pillow():
    """The official order of operations, step by step (sort, paint at full size, uint8, Pillow resize) on random
    overlapping masks of odd sizes, equals ours (which samples before painting)."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    for count, height, width in ((7, 301, 170), (60, 97, 411)):
        boxes = [(int(t), int(l), int(t + h), int(l + w)) for t, l, h, w in
                 zip(rng.integers(0, height, count), rng.integers(0, width, count),
                     rng.integers(1, height, count), rng.integers(1, width, count))]
        masks = _boxes((height, width), *boxes)
        order = np.argsort(masks.reshape(count, -1).sum(axis=1), kind="stable")
        painted = np.zeros((height, width), np.int64)
        for rank, k in enumerate(order):
            painted = np.where(painted == 0, masks[k] * (rank + 1), painted)
        official = np.asarray(Image.fromarray(painted.astype(np.uint8)).resize((224, 224), Image.NEAREST))
        np.testing.assert_array_equal(paint_ids(masks), official)


def test_palette_colours_are_the_official_ones():
    maskige = colorize_ids(np.array([[0, 1, 2], [149, 150, 255]], np.uint8))
    assert maskige[0].tolist() == [[120, 120, 120], [180, 120, 120], [6, 230, 230]]
    assert maskige[1].tolist() == [[92, 0, 255], [150, 150, 150], [255, 255, 255]]  # past 150: Pillow 9.2's ramp
    assert ADE20K_PALETTE.shape == (150, 3) and MASKIGE_COLORS.shape == (256, 3)
    np.testing.assert_array_equal(MASKIGE_COLORS[:150], ADE20K_PALETTE)
    assert paint_maskige(_boxes((4, 4), (0, 0, 2, 2)), size=4)[0, 0].tolist() == [180, 120, 120]


def test_label_maps_paint_as_their_masks():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 40, (37, 53)) * 2  # odd labels unused: empty masks that take ids
    masks = labels[None] == np.arange(labels.max() + 1)[:, None, None]
    np.testing.assert_array_equal(paint_label_ids(labels, 50), paint_ids(masks, 50))


@pytest.mark.parametrize("masks, message", [
    (np.zeros((4, 4), bool), r"\[K, H, W\]"),
    (np.full((1, 4, 4), 0.7), "threshold probabilities"),
    (np.zeros((1, 0, 4), bool), "empty side"),
])
def test_bad_masks_are_named(masks, message):
    with pytest.raises(ValueError, match=message):
        paint_maskige(masks)


def test_bad_sizes_and_ids_are_refused():
    with pytest.raises(ValueError, match="size must be positive"):
        paint_ids(np.zeros((1, 4, 4), bool), size=0)
    with pytest.raises(ValueError, match="uint8"):
        colorize_ids(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        paint_label_ids(np.full((2, 2), -1))


# -- (a) precomputed Maskiges ----------------------------------------------------------------------------------------

def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_precomputed_maskiges_are_found_by_frame_index(tmp_path):
    pytest.importorskip("PIL")
    video = tmp_path / "pre_SAM_mask" / "test" / "dog" / "vid_1"
    images = [np.random.default_rng(i).integers(0, 256, (224, 224, 3), dtype=np.uint8) for i in range(3)]
    for n, image in enumerate(images, start=1):
        _write_rgb(video / f"vid_1_{n}_mask_color.png", image)
    frame = np.zeros((50, 60, 3), np.uint8)
    with PrecomputedMaskige(video) as source:
        for i, image in enumerate(images):
            np.testing.assert_array_equal(source.maskige(frame, float(i)), image)
        assert "3 files" in source.describe()
        with pytest.raises(FileNotFoundError, match="vid_1_4_mask_color.png"):
            source.maskige(frame, 3.0)


def test_a_frames_maskige_lasts_until_the_next_frame(tmp_path):
    """Frame i is shown from i / fps to (i + 1) / fps: training timestamps (0.975 s + 0.96 s per frame, what
    Segmenter.segment_clip uses) and live ones in between find their frame's file."""
    pytest.importorskip("PIL")
    images = [np.full((4, 4, 3), 40 * n, np.uint8) for n in range(1, 6)]
    for n, image in enumerate(images, start=1):
        _write_rgb(tmp_path / f"v.mp4_{n}_mask_color.png", image)
    frame = np.zeros((4, 4, 3), np.uint8)
    source = PrecomputedMaskige(tmp_path, size=4)
    for i, t in enumerate(training_timestamps(5)):
        np.testing.assert_array_equal(source.maskige(frame, t), images[i])
    np.testing.assert_array_equal(source.maskige(frame, 2.999), images[2])
    np.testing.assert_array_equal(PrecomputedMaskige(tmp_path, fps=2.0, size=4).maskige(frame, 1.6), images[3])
    np.testing.assert_array_equal(np.stack(source.clip_maskiges([frame] * 3, [0.5, 1.0, 4.2])),
                                  np.stack([images[0], images[1], images[4]]))


def test_precomputed_files_of_another_size_are_resized_nearest(tmp_path):
    pytest.importorskip("PIL")
    small = np.zeros((2, 2, 3), np.uint8)
    small[0, 0] = (255, 0, 0)
    _write_rgb(tmp_path / "0_mask_color.png", small)  # AVSS naming: frames from 0
    out = PrecomputedMaskige(tmp_path, size=4).maskige(np.zeros((4, 4, 3), np.uint8), 0.0)
    assert (out[:2, :2] == (255, 0, 0)).all() and (out[2:] == 0).all() and (out[:, 2:] == 0).all()


def test_published_palette_pngs_read_as_combos_loader_read_them(tmp_path):
    """The official files are palette PNGs with 150 colours; ids past them read as Pillow 9.2.0's grey ramp."""
    Image = pytest.importorskip("PIL.Image")
    ids = np.array([[0, 1, 149], [150, 200, 255], [2, 3, 148]], np.uint8)
    image = Image.fromarray(ids)
    image.putpalette(ADE20K_PALETTE.tobytes())
    image.save(tmp_path / "x_mask_color.png")
    with Image.open(tmp_path / "x_mask_color.png") as saved:
        assert saved.mode == "P" and len(saved.getpalette("RGB")) == 3 * 150  # as the official files
    maskige = read_maskige(tmp_path / "x_mask_color.png", size=3)
    np.testing.assert_array_equal(maskige, colorize_ids(ids))
    assert maskige[1].tolist() == [[150, 150, 150], [200, 200, 200], [255, 255, 255]]
    np.testing.assert_array_equal(read_maskige(tmp_path / "x_mask_color.png", size=6),
                                  colorize_ids(ids).repeat(2, axis=0).repeat(2, axis=1))


def test_precomputed_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PrecomputedMaskige(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="found none"):
        PrecomputedMaskige(tmp_path)
    (tmp_path / "a_1_mask_color.png").write_bytes(b"")
    (tmp_path / "b_1_mask_color.png").write_bytes(b"")
    with pytest.raises(ValueError, match="2 videos"):
        PrecomputedMaskige(tmp_path)
    (tmp_path / "b_1_mask_color.png").unlink()
    (tmp_path / "a_1_mask_color.png").write_bytes(b"not a png")
    pytest.importorskip("PIL")
    with pytest.raises(ValueError, match="cannot decode Maskige"):
        PrecomputedMaskige(tmp_path).maskige(np.zeros((8, 8, 3), np.uint8), 0.0)
    with pytest.raises(ValueError, match="fps must be positive"):
        PrecomputedMaskige(tmp_path, fps=0)


def test_maskige_paths_follow_combos_data_registration():
    s4 = Path("/d/Single-source/s4_data/visual_frames/test/dog/v1/v1_3.png")
    assert maskige_path(s4) == Path("/d/Single-source/s4_data/pre_SAM_mask/test/dog/v1/v1_3_mask_color.png")
    ms3 = Path("/d/Multi-sources/ms3_data/visual_frames/v2/v2.mp4_5.png")
    assert maskige_path(ms3) == Path("/d/Multi-sources/ms3_data/pre_SAM_mask/v2/v2.mp4_5_mask_color.png")
    avss = Path("/d/AVSBench_semantic/v2/uid7/frames/9.jpg")
    assert maskige_path(avss) == Path("/d/AVSBench_semantic/pre_SAM_mask/AVSBench_semantic/v2/uid7/"
                                      "processed_frames/9_mask_color.png")
    with pytest.raises(ValueError, match="not an AVSBench frame path"):
        maskige_path("/tmp/frame.png")


# -- (b) a segment-everything model in ONNX --------------------------------------------------------------------------

def _threshold_model(path: Path, *, dtype: str = "uint8", hw=("H", "W"), scores=None, reshape=None,
                     inputs: int = 1, input_shape=None) -> Path:
    """A real segment-everything stand-in: mask c = channel c > 127 ([3, H, W] bool), optional constant scores;
    ``reshape`` reshapes the masks (e.g. [3, -1, 8] fails at run time when H * W is not a multiple of 8)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    elem = {"uint8": TensorProto.UINT8, "float": TensorProto.FLOAT, "int32": TensorProto.INT32}[dtype]
    shape = input_shape or [1, 3, *hw]
    graph_inputs = [helper.make_tensor_value_info(f"image{i or ''}", elem, shape) for i in range(inputs)]
    inits = [numpy_helper.from_array(np.full((3, 1, 1), 127, np.float32), "threshold"),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("Squeeze", ["x", "axis0"], ["chw"]),
             helper.make_node("Greater", ["chw", "threshold"], ["masks" if reshape is None else "flat"])]
    if reshape is not None:
        inits.append(numpy_helper.from_array(np.array(reshape, np.int64), "new_shape"))
        nodes.append(helper.make_node("Reshape", ["flat", "new_shape"], ["masks"]))
    mask_shape = [3, "h", "w"] if reshape is None else [f"d{i}" for i in range(len(reshape))]
    outputs = [helper.make_tensor_value_info("masks", TensorProto.BOOL, mask_shape)]
    if scores is not None:
        inits.append(numpy_helper.from_array(np.asarray(scores, np.float32), "score_values"))
        nodes.append(helper.make_node("Identity", ["score_values"], ["scores"]))
        outputs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(np.shape(scores))))
    graph = helper.make_graph(nodes, "threshold_masks", graph_inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _expected(frame: np.ndarray, keep=(0, 1, 2), size: int = 224) -> np.ndarray:
    return paint_maskige((frame.transpose(2, 0, 1) > 127)[list(keep)], size)


def _frame(seed: int, height: int = 40, width: int = 56) -> np.ndarray:
    """Blocky random colours, so the three channel masks overlap in many ways."""
    blocks = np.random.default_rng(seed).integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1))


def test_onnx_source_paints_the_models_masks(tmp_path):
    frame = _frame(0)
    with OnnxMaskSource(_threshold_model(tmp_path / "m.onnx")) as source:
        np.testing.assert_array_equal(source.maskige(frame, 0.0), _expected(frame))
        assert source.refreshes == 1 and "at most 1 Hz" in source.describe()
    with OnnxMaskSource(_threshold_model(tmp_path / "f.onnx", dtype="float", scores=[0.9, 0.2, 0.7])) as source:
        np.testing.assert_array_equal(source.maskige(frame, 0.0), _expected(frame, keep=(0, 2)))


def test_onnx_source_resizes_frames_to_a_static_input(tmp_path):
    frame = _frame(1, 64, 96)
    resized = cv2.resize(frame, (24, 16), interpolation=cv2.INTER_LINEAR)
    with OnnxMaskSource(_threshold_model(tmp_path / "s.onnx", hw=(16, 24)), size=32) as source:
        assert source.masks(frame).shape == (3, 16, 24)
        np.testing.assert_array_equal(source.maskige(frame, 0.0), _expected(resized, size=32))
        assert "16x24 uint8" in source.describe()


def test_onnx_source_reuses_the_last_maskige_between_refreshes(tmp_path):
    a, b = _frame(2), _frame(3)
    with OnnxMaskSource(_threshold_model(tmp_path / "m.onnx"), rate_hz=1.0) as source:
        first = source.maskige(a, 0.0)
        np.testing.assert_array_equal(first, _expected(a))
        np.testing.assert_array_equal(source.maskige(b, 0.5), first)  # not due: no refresh started
        assert source.wait(10) and source.refreshes == 1
        np.testing.assert_array_equal(source.maskige(b, 1.0), first)  # due: starts a refresh, returns the last one
        assert source.wait(10) and source.refreshes == 2
        np.testing.assert_array_equal(source.maskige(b, 1.1), _expected(b))
        for i in range(20):  # t = 2.0 .. 3.9 s: due at 2.0 and 3.0 only
            source.maskige(a, (20 + i) / 10)
            assert source.wait(10)
        assert source.refreshes == 4
        source.maskige(b, 0.0)  # time went back: a new stream, refreshed at once
        assert source.wait(10) and source.refreshes == 5


def test_onnx_source_paints_a_recorded_clip_at_its_rate_in_the_callers_thread(tmp_path):
    frames = [_frame(seed) for seed in range(5)]
    with OnnxMaskSource(_threshold_model(tmp_path / "m.onnx"), rate_hz=1.0, size=32) as source:
        maskiges = source.clip_maskiges(frames, [0.0, 0.5, 1.0, 1.7, 2.2])
        again = source.clip_maskiges(frames, [0.0, 0.5, 1.0, 1.7, 2.2])
        assert source.refreshes == 0  # the live state is left alone
    for got, refreshed_from in zip(maskiges, (0, 0, 2, 2, 4)):  # refreshes when 1 s has passed since the last
        np.testing.assert_array_equal(got, _expected(frames[refreshed_from], size=32))
    for a, b in zip(maskiges, again):
        np.testing.assert_array_equal(a, b)


def test_onnx_source_never_waits_for_a_running_refresh(tmp_path):
    with OnnxMaskSource(_threshold_model(tmp_path / "m.onnx"), rate_hz=2.0) as source:
        first = source.maskige(_frame(4), 0.0)
        big = np.full((3000, 3000, 3), 200, np.uint8)  # a refresh of some 0.1 s or more
        np.testing.assert_array_equal(source.maskige(big, 1.0), first)
        assert not source.wait(0)  # still refreshing when maskige() returned
        np.testing.assert_array_equal(source.maskige(big, 1.1), first)
        assert source.wait(30)
        np.testing.assert_array_equal(source.maskige(big, 1.2), _expected(big))


def test_a_failed_refresh_is_raised_by_the_next_call(tmp_path):
    with OnnxMaskSource(_threshold_model(tmp_path / "t.onnx", reshape=[3, -1, 8])) as source:
        source.maskige(_frame(5, 16, 16), 0.0)
        source.maskige(np.full((15, 15, 3), 200, np.uint8), 1.0)  # the Reshape to [3, -1, 8] fails in the worker
        assert source.wait(10)
        with pytest.raises(RuntimeError, match="refreshing the Maskige with t.onnx failed"):
            source.maskige(_frame(5, 16, 16), 1.5)
        source.maskige(_frame(5, 16, 16), 2.0)  # goes on
        assert source.wait(10) and source.refreshes == 2
    with pytest.raises(RuntimeError, match="closed"):
        source.maskige(_frame(5, 16, 16), 3.0)


def test_a_score_count_mismatch_is_named(tmp_path):
    with OnnxMaskSource(_threshold_model(tmp_path / "m.onnx", scores=[0.9, 0.9])) as source:
        with pytest.raises(ValueError, match="2 scores for 3 masks"):
            source.maskige(_frame(6), 0.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(inputs=2), "has 2 inputs"),
    (dict(input_shape=[1, "H", "W", 3]), r"expected \[1, 3, H, W\] RGB"),
    (dict(dtype="int32"), "expected uint8, float or float16"),
    (dict(reshape=[3, -1]), r"expected masks \[K, H, W\]"),
    (dict(scores=[[[0.5]]]), r"expected scores \[K\]"),
])
def test_onnx_models_outside_the_contract_are_refused_at_open(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        OnnxMaskSource(_threshold_model(tmp_path / "m.onnx", **kwargs))


def test_onnx_source_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxMaskSource(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load"):
        OnnxMaskSource(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="rate_hz"):
        OnnxMaskSource(tmp_path / "junk.onnx", rate_hz=0)
    with OnnxMaskSource(_threshold_model(tmp_path / "m.onnx")) as source:
        with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
            source.maskige(np.zeros((8, 8), np.uint8), 0.0)


# -- (c) the built-in fallback ---------------------------------------------------------------------------------------

def test_oversegmentation_paints_flat_regions_by_area():
    pytest.importorskip("skimage")
    frame = np.zeros((448, 448, 3), np.uint8)  # halved to 224 without blending across the edge
    frame[:, :112] = (250, 20, 20)  # the smaller region: id 1
    frame[:, 112:] = (20, 20, 250)  # id 2
    with OversegmentMaskSource() as source:
        maskige = source.maskige(frame, 0.0)
        assert "FALLBACK" in source.describe() and "no segment-everything model" in source.describe()
    assert maskige.shape == (224, 224, 3) and maskige.dtype == np.uint8
    assert (maskige[:, :56] == ADE20K_PALETTE[1]).all() and (maskige[:, 56:] == ADE20K_PALETTE[2]).all()


def test_oversegmentation_of_a_synthetic_frame_is_a_deterministic_maskige():
    pytest.importorskip("skimage")
    from runtime.datasets.synth import plan_clip, render_frame

    frame, _ = render_frame(plan_clip(np.random.default_rng(0), "s4", "test", "x"), 1.0)
    source = OversegmentMaskSource()
    labels = source.labels(frame)
    assert 5 <= labels.max() + 1 <= 255
    maskige = source.maskige(frame, 0.0)
    np.testing.assert_array_equal(maskige, source.maskige(frame, 1.0))
    np.testing.assert_array_equal(maskige, paint_maskige(labels[None] == np.arange(labels.max() + 1)[:, None, None]))


# -- the command-line value ------------------------------------------------------------------------------------------

def test_open_mask_source_parses_every_form(tmp_path):
    model = _threshold_model(tmp_path / "m.onnx")
    with open_mask_source(f"onnx:{model}@2.5") as source:
        assert isinstance(source, OnnxMaskSource) and source.rate_hz == 2.5
    with open_mask_source(f"onnx:{model}", size=112) as source:
        assert source.rate_hz == 1.0 and source.size == 112
    (tmp_path / "v_1_mask_color.png").write_bytes(b"")
    assert isinstance(open_mask_source(f"precomputed:{tmp_path}"), PrecomputedMaskige)
    pytest.importorskip("skimage")
    assert isinstance(open_mask_source("overseg"), OversegmentMaskSource)


@pytest.mark.parametrize("spec, message", [
    ("sam", "unknown mask source 'sam': use precomputed:DIR"),
    ("onnx:", "unknown mask source"),
    ("onnx:model.onnx@fast", "'fast' after '@' is not a rate"),
])
def test_open_mask_source_explains_bad_values(spec, message):
    with pytest.raises(ValueError, match=message):
        open_mask_source(spec)


def test_mask_source_values_are_checked_without_opening_anything(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not a model: parsing does not load it")
    assert parse_mask_source("overseg") == ("overseg", None, None)
    assert parse_mask_source(f"precomputed:{tmp_path}") == ("precomputed", tmp_path, None)
    assert parse_mask_source(f"onnx:{model}") == ("onnx", model, 1.0)
    assert parse_mask_source(f"onnx:{model}@0.5") == ("onnx", model, 0.5)
    with pytest.raises(FileNotFoundError, match="Maskige folder .*nowhere does not exist"):
        parse_mask_source(f"precomputed:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError, match="segment-everything model .*absent.onnx does not exist"):
        parse_mask_source(f"onnx:{tmp_path / 'absent.onnx'}@2")
    with pytest.raises(ValueError, match="the rate must be a positive number"):
        parse_mask_source(f"onnx:{model}@-1")
