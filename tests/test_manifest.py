"""runtime.manifest: the schema round-trips, every broken artifact directory gets an error naming the fix, and
nothing outside the directory or changed since export is ever used."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from runtime import integrity

from runtime.manifest import (SCHEMA_VERSION, AudioSpec, EngineStatus, GraphSpec, Manifest, ManifestError, ModelInfo,
                              OutputSpec, StreamingSpec, TensorSpec, ValidationRecord, VideoSpec, load_manifest,
                              manifest_from_dict, write_manifest)

FILES = {"full": "model.onnx", "encoder": "encoder.onnx", "temporal": "temporal.onnx", "decoder": "decoder.onnx"}


def _record(graph: str, passed: bool = True) -> ValidationRecord:
    return ValidationRecord(graph=graph, candidate="onnxruntime", reference="pytorch", max_abs_diff=2e-6,
                            mean_abs_diff=1e-7, mask_agreement=1.0 if graph in ("full", "decoder") else None,
                            atol=1e-3, rtol=1e-3, passed=passed, seed=0)


def sample_manifest(directory, passed: bool = True) -> Manifest:
    """A complete manifest whose graph files exist (as placeholder bytes) in ``directory``."""
    graphs = {}
    for role, file in FILES.items():
        (directory / file).write_bytes(b"onnx")
        (directory / f"{file}.data").write_bytes(b"weights")
        graphs[role] = GraphSpec(role=role, file=file, sha256="0" * 64,
                                 inputs=[TensorSpec("frames", [5, 3, 224, 224], "float32")],
                                 outputs=[TensorSpec("logits", [5, 1, "T"], "float32")], external_data=f"{file}.data")
    return Manifest(
        schema_version=SCHEMA_VERSION,
        model=ModelInfo(name="selm-s4-r50", family="selm", setting="s4", backbone="r50", checkpoint=None,
                        vggish_checkpoint=None, random_weights=True, weights_seed=0, gumbel="none"),
        opset=18, scan="lowered", precision="fp32", tools={"onnx": "1.23"}, graphs=graphs,
        video=VideoSpec(224, "RGB", "bilinear", 1 / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], "NCHW", 5,
                        1.0),
        audio=AudioSpec(16000, "mean of channels", 1 / 32768, 400, 160, 512, "periodic_hann", "magnitude", False, 64,
                        125.0, 7500.0, "htk", 0.01, 96, 96, 0.96, "[examples, 1, 96, 64]"),
        output=OutputSpec("binary", 1, "sigmoid", 0.5, [224, 224], ["background", "sounding object"],
                          [[0, 0, 0], [255, 255, 255]]),
        streaming=StreamingSpec(5, 1, 1, 4, ["pooled", "audio"], 1.0),
        validation=[_record(role) for role in FILES] + [_record("streaming", passed)],
        fp16=None, engine=EngineStatus(built=False, reason="no GPU"), created_utc="2025-01-01T00:00:00+00:00")


@pytest.fixture(autouse=True)
def _private_digest_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AVS_EDGE_CACHE", str(tmp_path_factory.mktemp("cache")))


def test_round_trip(tmp_path):
    manifest = sample_manifest(tmp_path)
    path = write_manifest(manifest, tmp_path)
    assert path == tmp_path / "manifest.json"
    loaded = load_manifest(tmp_path)
    assert loaded.files == {name: integrity.file_sha256(tmp_path / name)
                            for file in FILES.values() for name in (file, f"{file}.data")}
    assert loaded == dataclasses.replace(manifest, files=loaded.files)
    assert load_manifest(path) == loaded                          # the file itself is accepted too
    assert loaded.graph("decoder").input("frames").shape == [5, 3, 224, 224]
    assert loaded.graph("full").output("logits").shape == [5, 1, "T"]   # named dims survive
    assert loaded.validated
    assert json.loads(path.read_text())["schema_version"] == SCHEMA_VERSION


def test_unknown_graph_role_and_tensor_name(tmp_path):
    manifest = load_manifest(write_manifest(sample_manifest(tmp_path), tmp_path).parent)
    with pytest.raises(ManifestError, match="no 'depth' graph"):
        manifest.graph("depth")
    with pytest.raises(ManifestError, match="no graph 'full' input named 'audio'"):
        manifest.graph("full").input("audio")


def test_missing_directory_names_build_command(tmp_path):
    with pytest.raises(ManifestError, match=r"does not exist; build it with: python -m export.build_engine"):
        load_manifest(tmp_path / "nowhere")


def test_missing_manifest_names_build_command(tmp_path):
    with pytest.raises(ManifestError, match=rf"no manifest.json in {tmp_path}; build it with: "
                                            r"python -m export.build_engine --model selm --out"):
        load_manifest(tmp_path)


def test_other_schema_version_names_rebuild_command(tmp_path):
    data = sample_manifest(tmp_path).to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path)
    message = str(info.value)
    assert f"schema_version is {SCHEMA_VERSION + 1}; this avs-edge reads {SCHEMA_VERSION}" in message
    assert f"python -m export.build_engine --model selm-s4-r50 --out {tmp_path}" in message


def test_invalid_json(tmp_path):
    (tmp_path / "manifest.json").write_text("{ not json")
    with pytest.raises(ManifestError, match="cannot read .*manifest.json.*rebuild it with"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("edit, where", [
    (lambda d: d["video"].pop("mean"), "video.mean: required field missing"),
    (lambda d: d["graphs"]["full"]["inputs"][0].update(shape="5x3"), r"graphs.full.inputs\[0\].shape: expected a list"),
    (lambda d: d["streaming"].update(window="five"), "streaming.window: expected int"),
    (lambda d: d["output"].update(threshold=True), "output.threshold"),
    (lambda d: d["graphs"].update(depth=d["graphs"]["full"]), "graphs.depth: unknown graph role"),
])
def test_schema_errors_name_the_field(tmp_path, edit, where):
    data = sample_manifest(tmp_path).to_dict()
    edit(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=where):
        load_manifest(tmp_path)


def test_missing_graph_file(tmp_path):
    write_manifest(sample_manifest(tmp_path), tmp_path)
    (tmp_path / "temporal.onnx.data").unlink()
    with pytest.raises(ManifestError, match=r"lists temporal.onnx.data \(temporal graph\) but .* is missing"):
        load_manifest(tmp_path)


def test_failed_validation_is_refused_unless_asked(tmp_path):
    write_manifest(sample_manifest(tmp_path, passed=False), tmp_path)
    with pytest.raises(ManifestError, match=r"failed validation against PyTorch \(streaming\)"):
        load_manifest(tmp_path)
    manifest = load_manifest(tmp_path, allow_unvalidated=True)
    assert not manifest.validated


def test_write_refuses_an_invalid_manifest(tmp_path):
    bad = dataclasses.replace(sample_manifest(tmp_path), schema_version=0)
    with pytest.raises(ManifestError, match="schema_version is 0"):
        write_manifest(bad, tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def test_from_dict_requires_a_mapping():
    with pytest.raises(ManifestError, match="schema_version is None"):
        manifest_from_dict([])


@pytest.mark.parametrize("name", ["decoder.onnx", "temporal.onnx.data"])
def test_a_tampered_file_of_the_same_size_is_refused(tmp_path, name):
    write_manifest(sample_manifest(tmp_path), tmp_path)
    load_manifest(tmp_path)                                       # verified once: its digest is cached
    target = tmp_path / name
    stat = target.stat()
    target.write_bytes(os.urandom(stat.st_size))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))    # same size and mtime: the ctime still differs
    with pytest.raises(ManifestError, match=rf"{name} \(graphs\.\w+\.\w+\) does not match the sha256"):
        load_manifest(tmp_path)


def test_unchanged_files_are_hashed_once(tmp_path, monkeypatch):
    write_manifest(sample_manifest(tmp_path), tmp_path)
    calls = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda path: calls.append(path) or real(path))
    load_manifest(tmp_path)
    assert calls == []                                            # write_manifest cached every digest
    (tmp_path / "decoder.onnx").write_bytes(b"ONNX")
    with pytest.raises(ManifestError, match="does not match"):
        load_manifest(tmp_path)
    assert [os.path.basename(p) for p in calls] == ["decoder.onnx"]


def test_a_file_without_a_recorded_digest_is_refused(tmp_path):
    write_manifest(sample_manifest(tmp_path), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    del data["files"]["encoder.onnx.data"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"records no sha256 for encoder.onnx.data \(graphs.encoder.external_da"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("path, problem", [
    ("../../outside/decoder.onnx", "climbs out"),
    ("/etc/passwd", "is absolute"),
    ("sub\\..\\..\\x.onnx", "backslash"),
    ("./decoder.onnx", "normal form"),
    ("", "is empty"),
])
def test_paths_must_stay_inside_the_artifact(tmp_path, path, problem):
    write_manifest(sample_manifest(tmp_path), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["graphs"]["decoder"]["file"] = path
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=rf"graphs.decoder.file: path .* {problem}"):
        load_manifest(tmp_path)


def test_a_symlink_out_of_the_artifact_is_refused(tmp_path):
    artifact, outside = tmp_path / "artifact", tmp_path / "outside"
    artifact.mkdir()
    outside.mkdir()
    write_manifest(sample_manifest(artifact), artifact)
    (outside / "decoder.onnx").write_bytes(b"onnx")
    (artifact / "decoder.onnx").unlink()
    (artifact / "decoder.onnx").symlink_to(outside / "decoder.onnx")   # same bytes, same digest: still refused
    with pytest.raises(ManifestError, match="graphs.decoder.file: .* outside the artifact directory"):
        load_manifest(artifact)


def test_files_entries_are_confined_too(tmp_path):
    write_manifest(sample_manifest(tmp_path), tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["files"]["../secret"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"files\['../secret'\]: path .* climbs out"):
        load_manifest(tmp_path)


def test_write_refuses_paths_outside_the_directory(tmp_path):
    manifest = sample_manifest(tmp_path)
    graphs = dict(manifest.graphs, decoder=dataclasses.replace(manifest.graphs["decoder"], file="/etc/passwd"))
    with pytest.raises(ManifestError, match="is absolute"):
        write_manifest(dataclasses.replace(manifest, graphs=graphs), tmp_path)
    assert not (tmp_path / "manifest.json").exists()
