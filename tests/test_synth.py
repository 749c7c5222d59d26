"""avs-synth: the AVSBench layout, determinism, ground truth = sounding objects, audible class signatures."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import wave
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime.audio import waveform_to_examples
from runtime.datasets import synth
from runtime.datasets.torch_pickle import load_log_mel

REPO = Path(__file__).resolve().parents[1]
# Where each class's sound has most of its energy (Hz) and the background little.
SIGNATURE_HZ = {"bell": (1000, 1250), "drum": (100, 200), "engine": (120, 1500), "siren": (500, 900),
                "chirp": (2200, 3900), "steam": (5000, 7400)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """10 S4 clips (8 train, 1 val, 1 test; SNR 8 dB) and 5 MS3 val clips in one folder."""
    root = tmp_path_factory.mktemp("synth")
    synth.write_dataset(root, "s4", 10, seed=3, snr_db=(8.0, 8.0), progress=False)
    synth.write_dataset(root, "ms3", 5, seed=3, split="val", progress=False)
    return root


def _rows(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def _clips(root: Path, folder: str) -> dict:
    lines = (root / folder / "synth_clips.jsonl").read_text().splitlines()
    return {c["name"]: c for c in map(json.loads, lines)}


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as f:
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2").reshape(-1, f.getnchannels())
        return pcm, f.getframerate()


def test_s4_layout_is_avsbench(dataset):
    header, rows = _rows(dataset / "Single-source" / "s4_meta_data.csv")
    assert header == ["name", "start_time", "category", "split"]
    assert [r["split"] for r in rows].count("train") == 8 and {r["split"] for r in rows} == {"train", "val", "test"}
    data = dataset / "Single-source" / "s4_data"
    expected = set()
    for r in rows:
        name, cat, split = r["name"], r["category"], r["split"]
        assert cat in {c.name for c in synth.CLASSES}
        frames = [data / "visual_frames" / split / cat / name / f"{name}_{k}.png" for k in range(1, 6)]
        masks = [data / "gt_masks" / split / cat / name / f"{name}_{k}.png" for k in range(1, 6)]
        masks = masks[:1] if split == "train" else masks  # AVSBench's S4 train split ships the first mask only
        wav = data / "audio_wav" / split / cat / f"{name}.wav"
        pkl = data / "audio_log_mel" / split / cat / f"{name}.pkl"
        expected |= set(frames) | set(masks) | {wav, pkl}
        for frame in frames:
            image = cv2.imread(str(frame), cv2.IMREAD_UNCHANGED)
            assert image.shape == (224, 224, 3) and image.dtype == np.uint8
        for mask in masks:
            values = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
            assert values.shape == (224, 224) and set(np.unique(values)) <= {0, 255}
        pcm, rate = _read_wav(wav)
        log_mel = load_log_mel(pkl)
        assert log_mel.shape == (5, 1, 96, 64) and log_mel.dtype == np.float32
        np.testing.assert_array_equal(log_mel, waveform_to_examples(pcm, rate)[:5])
    assert {p for p in data.rglob("*") if p.is_file()} == expected


def test_ms3_layout_is_avsbench(dataset):
    header, rows = _rows(dataset / "Multi-sources" / "ms3_meta_data.csv")
    assert header == ["name", "split"] and len(rows) == 5
    data = dataset / "Multi-sources" / "ms3_data"
    expected = set()
    for r in rows:
        name, split = r["name"], r["split"]
        expected |= {data / "visual_frames" / name / f"{name}.mp4_{k}.png" for k in range(1, 6)}
        expected |= {data / "gt_masks" / split / name / f"{name}_{k}.png" for k in range(1, 6)}
        expected |= {data / "audio_wav" / split / f"{name}.wav", data / "audio_log_mel" / split / f"{name}.pkl"}
    assert {p for p in data.rglob("*") if p.is_file()} == expected


def test_same_seed_same_bytes_other_seed_other_clips(tmp_path):
    for run in ("a", "b", "c"):
        synth.write_dataset(tmp_path / run, "ms3", 2, seed=7 if run != "c" else 8, split="test", progress=False)
    files = {run: {p.relative_to(tmp_path / run): p.read_bytes() for p in (tmp_path / run).rglob("*") if p.is_file()}
             for run in ("a", "b", "c")}
    assert files["a"] == files["b"] and len(files["a"]) == 2 * 12 + 2
    other = {p.name.replace("_8_", "_7_"): b for p, b in files["c"].items() if p.suffix == ".wav"}
    assert all(other[p.name] != b for p, b in files["a"].items() if p.suffix == ".wav")


def _hue_distance(rgb: np.ndarray, hue: float) -> np.ndarray:
    hsv = cv2.cvtColor(rgb.reshape(-1, 1, 3).astype(np.uint8), cv2.COLOR_RGB2HSV).reshape(-1, 3)
    d = np.abs(hsv[:, 0].astype(float) * 2 - hue) % 360
    return np.minimum(d, 360 - d)


def test_masks_are_the_sounding_objects_pixels(dataset):
    data = dataset / "Multi-sources" / "ms3_data"
    silent_seconds = two_sources = 0
    for name, clip in _clips(dataset, "Multi-sources").items():
        for k, sounding in enumerate(clip["sounding"]):
            frame = cv2.cvtColor(cv2.imread(str(data / "visual_frames" / name / f"{name}.mp4_{k + 1}.png")),
                                 cv2.COLOR_BGR2RGB)
            mask = cv2.imread(str(data / "gt_masks" / "val" / name / f"{name}_{k + 1}.png"), cv2.IMREAD_GRAYSCALE) > 0
            if not sounding:
                silent_seconds += 1
                assert not mask.any(), f"{name} second {k}: nothing sounds but the mask is not empty"
                continue
            two_sources += len(sounding) == 2
            hues = [c.hue for c in synth.CLASSES if c.name in sounding]
            near = np.min([_hue_distance(frame[mask], h) for h in hues], axis=0)
            assert mask.mean() > 0.02 and np.mean(near < 20) > 0.97  # the sounding classes' colours, nothing else
    assert silent_seconds and two_sources


def test_ground_truth_is_the_visible_part_of_each_sounding_shape():
    for index in range(8):
        plan = synth.plan_clip(np.random.default_rng([11, 1, 2, index]), "ms3", "test", "x")
        distractors = [o for o in plan.objects if o.label is None]
        heard = {c for second in plan.sounding for c in second}
        assert 1 <= len(distractors) <= 2 and 2 <= len(plan.objects) - len(distractors) <= 4
        labels = [o.label for o in plan.objects if o.label is not None]
        assert len(set(labels)) == len(labels) and heard <= set(labels)
        # A distractor looks like a sounding class in shape or colour, and like no class in both.
        looks = [(synth.CLASSES[c].shape, synth.CLASSES[c].hue) for c in heard]
        assert not heard or any(d.shape == s or _hue_distance(np.array([d.rgb]), h)[0] < 15
                                for d in distractors for s, h in looks)
        assert all(d.shape != c.shape or _hue_distance(np.array([d.rgb]), c.hue)[0] > 15
                   for d in distractors for c in synth.CLASSES)
        background = synth._background(plan.seed, synth.SIZE)
        for k in range(5):
            _, label_map = synth.render_frame(plan, float(k), background=background)
            expected = np.zeros((224, 224), bool)
            for obj in plan.objects:  # painter's order: a later object hides what it covers
                shape = synth._shape_mask(obj, float(k), synth.SIZE)
                expected = (expected & ~shape) | (shape if obj.label in plan.sounding[k] else False)
            np.testing.assert_array_equal(synth.ground_truth(plan, label_map, k) > 0, expected)
            assert expected.any() == bool(plan.sounding[k])


def test_s4_sounding_seconds_carry_the_class_signature(dataset):
    data = dataset / "Single-source" / "s4_data"
    compared = 0
    for name, clip in _clips(dataset, "Single-source").items():
        pcm, rate = _read_wav(data / "audio_wav" / clip["split"] / clip["category"] / f"{name}.wav")
        lo, hi = SIGNATURE_HZ[clip["category"]]
        energy = []
        for k in range(5):
            piece = pcm[int((0.96 * k + synth.SLOT_START) * rate):int((0.96 * k + synth.SLOT_END) * rate)].mean(1)
            spectrum = np.abs(np.fft.rfft(piece)) ** 2
            f = np.fft.rfftfreq(piece.size, 1 / rate)
            energy.append(spectrum[(f >= lo) & (f <= hi)].sum())
        sounding = [bool(s) for s in clip["sounding"]]
        assert all(s == [clip["category"]] for s in clip["sounding"] if s)
        if all(sounding):
            continue
        quietest_sound = min(e for e, s in zip(energy, sounding) if s)
        loudest_silence = max(e for e, s in zip(energy, sounding) if not s)
        assert quietest_sound > 4 * loudest_silence, (name, clip["category"], energy, sounding)
        compared += 1
    assert compared >= 3


def test_sample_rates_vary_and_log_mel_is_still_five_examples(tmp_path):
    plans = [synth.plan_clip(np.random.default_rng([2, 0, 0, i]), "s4", "train", "x") for i in range(30)]
    rates = [p.sample_rate for p in plans]
    assert rates.count(16000) > 15 and {44100, 48000} <= set(rates)
    plan = next(p for p in plans if p.sample_rate != 16000)
    synth.write_clip(tmp_path, plan)
    paths = synth.clip_paths(tmp_path, "s4", "train", plan.category, "x")
    pcm, rate = _read_wav(paths["wav"])
    assert rate == plan.sample_rate and pcm.shape == (5 * rate, plan.channels)
    assert load_log_mel(paths["log_mel"]).shape == (5, 1, 96, 64)


def test_cli_writes_splits_into_one_data_set(tmp_path, capsys):
    from runtime.synth_cli import main

    done = subprocess.run([sys.executable, "-m", "runtime.synth_cli", "--out", str(tmp_path), "--clips", "2",
                           "--split", "train", "--seed", "1", "--quiet"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0 and "wrote 2 s4 clips (2 train)" in done.stdout, done.stderr
    assert main(["--out", str(tmp_path), "--clips", "1", "--split", "test", "--snr-db", "12", "--quiet"]) == 0
    _, rows = _rows(tmp_path / "Single-source" / "s4_meta_data.csv")
    assert [r["split"] for r in rows] == ["train", "train", "test"]
    with pytest.raises(SystemExit) as bad:
        main(["--out", str(tmp_path), "--snr-db", "10", "5"])
    assert bad.value.code == 2 and "LOW <= HIGH" in capsys.readouterr().err
    (tmp_path / "Multi-sources").mkdir()
    (tmp_path / "Multi-sources" / "ms3_meta_data.csv").write_text("video,label\n")
    assert main(["--out", str(tmp_path), "--task", "ms3", "--clips", "1", "--split", "val", "--quiet"]) == 2
    assert "choose another --out" in capsys.readouterr().err


def test_help_teaches_classes_and_layout():
    text = synth_help()
    assert all(c.name in text and c.shape in text for c in synth.CLASSES)
    assert "s4_meta_data.csv" in text and "--snr-db" in text


def synth_help() -> str:
    from runtime.synth_cli import build_parser
    return build_parser().format_help()


def test_demo_clip_has_sound_and_a_silent_look_alike(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "demo.mp4"
    plan = synth.render_demo_clip(path, seed=1, fps=4.0, size=224)
    sounding = next(o for o in plan.objects if o.label is not None)
    silent = next(o for o in plan.objects if o.label is None)
    assert silent.shape == sounding.shape and silent.rgb != sounding.rgb
    assert any(plan.sounding) and not all(plan.sounding)
    with av.open(str(path)) as container:
        assert container.streams.video and container.streams.audio
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == 20
