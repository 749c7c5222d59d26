"""runtime.datasets: the safe log-mel pickle codec and the AVSBench readers on trees written here, in each layout."""
import io
import json
import pickle
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.audio import waveform_to_examples
from runtime.datasets.avsbench import (AVSBench, DatasetError, avss_palette, detect_task, normalize_frames,
                                       pil_resize)
from runtime.datasets.torch_pickle import UnsafePickleError, dump_log_mel, load_log_mel

# -- trees in the official layouts (also used by test_eval.py) ------------------------------------------------------


def _frame(rng, h=224, w=224):
    base = cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(base.astype(int) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def _mask(rng, frame_index, empty=False):
    m = np.zeros((224, 224), np.uint8)
    if not empty:
        y, x = rng.integers(20, 120, 2)
        m[y:y + 60 + 10 * frame_index, x:x + 80] = 255
    return m


def _write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")


def write_s4_tree(root, clips, seed=0):
    """``clips``: (name, category, split). Returns {name: {"frames": [...], "log_mel": ..., "masks": [...]}}."""
    rng, truth = np.random.default_rng(seed), {}
    base = Path(root) / "Single-source"
    _write_csv(base / "s4_meta_data.csv", ("name", "start_time", "category", "split"),
               [(n, "0", c, s) for n, c, s in clips])
    for name, cat, split in clips:
        rel = Path(split, cat, name)
        frames = [_frame(rng) for _ in range(5)]
        masks = [_mask(rng, i, empty=(name.endswith("quiet") and i > 2)) for i in range(5 if split != "train" else 1)]
        log_mel = rng.normal(size=(5, 1, 96, 64)).astype(np.float32)
        for i, f in enumerate(frames, 1):
            (base / "s4_data/visual_frames" / rel).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(base / "s4_data/visual_frames" / rel / f"{name}_{i}.png"), f)
        for i, m in enumerate(masks, 1):
            (base / "s4_data/gt_masks" / rel).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(base / "s4_data/gt_masks" / rel / f"{name}_{i}.png"), m)
        (base / "s4_data/audio_log_mel" / split / cat).mkdir(parents=True, exist_ok=True)
        with open(base / "s4_data/audio_log_mel" / split / cat / f"{name}.pkl", "wb") as f:
            dump_log_mel(log_mel, f)
        truth[name] = {"frames": frames, "log_mel": log_mel, "masks": masks}
    return truth


def write_ms3_tree(root, clips, seed=1):
    """``clips``: (name, split)."""
    rng, truth = np.random.default_rng(seed), {}
    base = Path(root) / "Multi-sources"
    _write_csv(base / "ms3_meta_data.csv", ("name", "split"), clips)
    for name, split in clips:
        frames = [_frame(rng) for _ in range(5)]
        masks = [_mask(rng, i) for i in range(5)]
        log_mel = rng.normal(size=(5, 1, 96, 64)).astype(np.float32)
        (base / "ms3_data/visual_frames" / name).mkdir(parents=True, exist_ok=True)
        (base / "ms3_data/gt_masks" / split / name).mkdir(parents=True, exist_ok=True)
        for i, (f, m) in enumerate(zip(frames, masks), 1):
            cv2.imwrite(str(base / "ms3_data/visual_frames" / name / f"{name}.mp4_{i}.png"), f)
            cv2.imwrite(str(base / "ms3_data/gt_masks" / split / name / f"{name}_{i}.png"), m)
        (base / "ms3_data/audio_log_mel" / split).mkdir(parents=True, exist_ok=True)
        with open(base / "ms3_data/audio_log_mel" / split / f"{name}.pkl", "wb") as f:
            dump_log_mel(log_mel, f)
        truth[name] = {"frames": frames, "log_mel": log_mel, "masks": masks}
    return truth


def _write_wav(path, samples, rate=16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def write_avss_tree(root, clips, seed=2, size=(96, 128)):
    """``clips``: (uid, label, split); frames are ``size`` (h, w) JPGs, label maps PNG colour maps."""
    rng, truth = np.random.default_rng(seed), {}
    base = Path(root) / "AVSBench_semantic"
    _write_csv(base / "metadata.csv", ("vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"),
               [(u, u, "0", "0", "x", s, lab) for u, lab, s in clips])
    base.joinpath("label2idx.json").write_text(json.dumps({f"class{i}": i for i in range(71)}))
    palette = avss_palette()
    for uid, label, split in clips:
        n = 10 if label == "v2" else 5
        clip_dir = base / label / uid
        (clip_dir / "frames").mkdir(parents=True)
        (clip_dir / "labels_rgb").mkdir()
        frames, labels = [], []
        for i in range(n):
            f = _frame(rng, *size)
            cv2.imwrite(str(clip_dir / "frames" / f"{i}.jpg"), f)
            frames.append(cv2.imread(str(clip_dir / "frames" / f"{i}.jpg")))
            lab = np.zeros(size, np.int64)
            lab[10:50, 20 + 5 * i:70] = rng.integers(1, 71)
            lab[60:90, 80:120] = rng.integers(1, 71)
            labels.append(lab)
            cv2.imwrite(str(clip_dir / "labels_rgb" / f"{i}.png"), palette[lab].astype(np.uint8)[:, :, ::-1])
        samples = (rng.normal(scale=3000, size=16000 * n)).astype(np.int16)
        _write_wav(clip_dir / "audio.wav", samples)
        truth[uid] = {"frames": frames, "labels": labels, "samples": samples}
    return truth


# -- the pickle codec ------------------------------------------------------------------------------------------------

def test_reads_a_pickle_written_by_torch():
    torch = pytest.importorskip("torch")
    x = torch.randn(5, 1, 96, 64)
    assert np.array_equal(load_log_mel(io.BytesIO(pickle.dumps(x))), x.numpy())
    view = torch.randn(4, 6).t()                                          # a non-contiguous view of its storage
    assert np.array_equal(load_log_mel(io.BytesIO(pickle.dumps(view))), view.numpy())


def test_our_writer_loads_in_torch_equal():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).normal(size=(5, 1, 96, 64)).astype(np.float32)
    f = io.BytesIO()
    dump_log_mel(x, f)
    f.seek(0)
    loaded = pickle.load(f)
    assert isinstance(loaded, torch.Tensor) and loaded.dtype == torch.float32
    assert torch.equal(loaded, torch.from_numpy(x))
    f.seek(0)
    assert np.array_equal(load_log_mel(f), x)


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("func, name", [(print, "builtins.print"), (eval, "builtins.eval"),
                                        (Path, "pathlib")])
def test_refuses_any_other_global(tmp_path, func, name):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Evil(func, "x")))
    with pytest.raises(UnsafePickleError, match=name) as info:
        load_log_mel(path)
    assert str(path) in str(info.value)


def test_refuses_os_system_without_running_it(tmp_path):
    import os

    marker = tmp_path / "ran"
    data = pickle.dumps(_Evil(os.system, f"touch {marker}"))
    with pytest.raises(UnsafePickleError, match="system"):
        load_log_mel(io.BytesIO(data))
    assert not marker.exists()


def test_truncated_pickle_is_a_clear_error(tmp_path):
    f = io.BytesIO()
    dump_log_mel(np.ones((5, 1, 96, 64)), f)
    path = tmp_path / "cut.pkl"
    path.write_bytes(f.getvalue()[:-100])
    with pytest.raises(ValueError, match="cut.pkl"):
        load_log_mel(path)


# -- image helpers ----------------------------------------------------------------------------------------------------

def test_pil_resize_matches_pillow_golden():
    # values produced by Pillow 13's Image.resize(BILINEAR) on this input (Pillow is not a dependency)
    img = (np.arange(6 * 9 * 3).reshape(6, 9, 3) * 37 % 256).astype(np.uint8)
    down = pil_resize(img, 4)
    assert down[..., 0].tolist() == [[118, 133, 101, 111], [143, 102, 148, 145], [106, 103, 149, 108],
                                     [140, 150, 118, 133]]
    assert down[..., 1].tolist() == [[88, 127, 131, 107], [148, 135, 108, 145], [143, 100, 114, 145],
                                     [108, 136, 153, 110]]
    assert pil_resize(img[:3, :3], 5)[..., 2].tolist() == [[74, 118, 185, 98, 40], [64, 108, 175, 88, 30],
                                                           [49, 93, 160, 73, 15], [34, 78, 145, 150, 154],
                                                           [24, 68, 135, 202, 246]]


def test_normalize_frames_is_totensor_then_normalize():
    frame = np.zeros((2, 2, 3), np.uint8)
    frame[..., 2] = 255                                                   # BGR: pure red
    x = normalize_frames([frame])
    assert x.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(x[0, :, 0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225], rtol=1e-6)


# -- readers ------------------------------------------------------------------------------------------------------------

def test_s4_test_and_train_splits(tmp_path):
    truth = write_s4_tree(tmp_path, [("a1", "dog", "test"), ("b2", "car", "train"), ("c3", "dog", "test")])
    assert detect_task(tmp_path) == "s4"
    data = AVSBench(tmp_path, split="test")
    assert data.task == "s4" and [r["name"] for r in data.rows] == ["a1", "c3"]
    clip = data[0]
    assert clip.category == "dog" and clip.num_frames == 5
    assert all(np.array_equal(a, b) for a, b in zip(clip.frames, truth["a1"]["frames"]))
    assert np.array_equal(clip.log_mel, truth["a1"]["log_mel"])
    assert clip.masks.shape == (5, 224, 224) and set(np.unique(clip.masks)) <= {0.0, 1.0}
    assert np.array_equal(clip.masks[2], truth["a1"]["masks"][2] / 255)
    assert clip.valid.all() and clip.supervised.all()
    train = AVSBench(tmp_path / "Single-source", "s4", "train")[0]
    assert train.masks.shape == (1, 224, 224)
    assert train.supervised.tolist() == [True, False, False, False, False]


def test_s4_frames_for_448_models_are_pillow_resized(tmp_path):
    truth = write_s4_tree(tmp_path, [("a1", "dog", "test")])
    clip = AVSBench(tmp_path, "s4", "test", resolution=448)[0]
    assert clip.frames[0].shape == (448, 448, 3)
    assert np.array_equal(clip.frames[0], pil_resize(truth["a1"]["frames"][0], 448))


def test_ms3_layout(tmp_path):
    truth = write_ms3_tree(tmp_path, [("m1", "test"), ("m2", "val")])
    data = AVSBench(tmp_path, split="test")
    assert data.task == "ms3" and len(data) == 1
    clip = data[0]
    assert clip.category == "" and np.array_equal(clip.frames[4], truth["m1"]["frames"][4])
    assert np.array_equal(clip.masks[4], truth["m1"]["masks"][4].astype(np.float32) / 255)
    assert np.array_equal(clip.log_mel, truth["m1"]["log_mel"])


def test_avss_padding_flags_labels_and_audio(tmp_path):
    truth = write_avss_tree(tmp_path, [("u1", "v1s", "test"), ("u2", "v2", "test"), ("u3", "v1m", "train")])
    data = AVSBench(tmp_path, split="test")
    assert data.task == "avss" and len(data.class_names) == 71
    short, full = data[0], data[1]
    assert short.num_frames == 5 and short.valid.tolist() == [True] * 5 + [False] * 5
    assert short.supervised.tolist() == [True] + [False] * 9
    assert full.num_frames == 10 and full.valid.all() and full.supervised.all()
    assert short.frames[0].shape == (224, 224, 3)
    assert np.array_equal(short.frames[1], pil_resize(truth["u1"]["frames"][1], 224))
    assert short.masks.shape == (10, 224, 224) and not short.masks[5:].any()
    expected = cv2.resize(truth["u1"]["labels"][3], (224, 224), interpolation=cv2.INTER_NEAREST_EXACT)
    assert np.array_equal(short.masks[3], expected)
    examples = waveform_to_examples(truth["u1"]["samples"], 16000)
    assert np.array_equal(short.log_mel[:len(examples)], examples) and not short.log_mel[5:].any()
    assert AVSBench(tmp_path, "avss", "train")[0].supervised.tolist() == [True] * 5 + [False] * 5


def test_avss_colour_outside_the_palette_reads_as_background(tmp_path):
    write_avss_tree(tmp_path, [("u1", "v1s", "test")])
    path = tmp_path / "AVSBench_semantic/v1s/u1/labels_rgb/0.png"
    image = cv2.imread(str(path))
    image[:] = (1, 2, 3)
    cv2.imwrite(str(path), image)
    assert not AVSBench(tmp_path, "avss")[0].masks[0].any()


# -- bad data names the file ---------------------------------------------------------------------------------------

def test_missing_frame_names_it(tmp_path):
    write_s4_tree(tmp_path, [("a1", "dog", "test")])
    victim = tmp_path / "Single-source/s4_data/visual_frames/test/dog/a1/a1_3.png"
    victim.unlink()
    with pytest.raises(DatasetError, match="a1_3.png"):
        AVSBench(tmp_path)[0]


def test_missing_or_hostile_log_mel_names_it(tmp_path):
    write_s4_tree(tmp_path, [("a1", "dog", "test")])
    pkl = tmp_path / "Single-source/s4_data/audio_log_mel/test/dog/a1.pkl"
    pkl.write_bytes(pickle.dumps(_Evil(print, "hi")))
    with pytest.raises(DatasetError, match=r"a1\.pkl.*builtins\.print"):
        AVSBench(tmp_path)[0]
    pkl.unlink()
    with pytest.raises(DatasetError, match=r"missing audio log-mel .*a1\.pkl"):
        AVSBench(tmp_path)[0]


def test_wrong_log_mel_shape_names_it(tmp_path):
    write_s4_tree(tmp_path, [("a1", "dog", "test")])
    pkl = tmp_path / "Single-source/s4_data/audio_log_mel/test/dog/a1.pkl"
    with open(pkl, "wb") as f:
        dump_log_mel(np.zeros((3, 1, 96, 64)), f)
    with pytest.raises(DatasetError, match=r"a1\.pkl has shape \[3, 1, 96, 64\]"):
        AVSBench(tmp_path)[0]


def test_mask_of_the_wrong_size_names_it(tmp_path):
    write_ms3_tree(tmp_path, [("m1", "test")])
    victim = tmp_path / "Multi-sources/ms3_data/gt_masks/test/m1/m1_2.png"
    cv2.imwrite(str(victim), np.zeros((100, 224), np.uint8))
    with pytest.raises(DatasetError, match=r"m1_2\.png is 224x100"):
        AVSBench(tmp_path)[0]


def test_malformed_csv_names_it(tmp_path):
    write_s4_tree(tmp_path, [("a1", "dog", "test")])
    csv_path = tmp_path / "Single-source/s4_meta_data.csv"
    csv_path.write_text("name,start_time,category,split\na1,0,dog\n")
    with pytest.raises(DatasetError, match=r"s4_meta_data\.csv line 2"):
        AVSBench(tmp_path)
    csv_path.write_text("name,category\na1,dog\n")
    with pytest.raises(DatasetError, match=r"s4_meta_data\.csv has no header with a 'split'"):
        AVSBench(tmp_path)
    csv_path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="s4_meta_data.csv"):
        AVSBench(tmp_path)


def test_not_an_avsbench_folder(tmp_path):
    with pytest.raises(DatasetError, match="no s4_meta_data.csv or ms3_meta_data.csv or metadata.csv"):
        AVSBench(tmp_path)


def test_avss_missing_wav_and_label_index(tmp_path):
    write_avss_tree(tmp_path, [("u1", "v1s", "test")])
    (tmp_path / "AVSBench_semantic/v1s/u1/audio.wav").unlink()
    with pytest.raises(DatasetError, match=r"missing audio file .*u1/audio\.wav"):
        AVSBench(tmp_path)[0]
    (tmp_path / "AVSBench_semantic/label2idx.json").unlink()
    with pytest.raises(DatasetError, match="label2idx.json"):
        AVSBench(tmp_path)
