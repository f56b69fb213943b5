import json
import shutil

import pytest
import torch

from ctrlgan.artifact import (
    GENERATOR_WEIGHTS,
    MANIFEST,
    Artifact,
    Manifest,
    resolve,
    write_artifact,
)
from ctrlgan.errors import ArtifactError, InvalidRequest
from ctrlgan.training.feature_net import FEATURE_NET


@pytest.fixture
def model(tiny_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    return path


def test_written_artifact_round_trips(model):
    a = Artifact.open(model)
    m = a.manifest
    assert m.format_version == 1
    assert m.z_dim == 12 and len(m.classes) == 10 and m.image_shape == [1, 16, 16]
    assert set(m.files) == {GENERATOR_WEIGHTS, FEATURE_NET}  # the tiny model ships a network
    p = m.provenance
    assert p["dataset"] == "digits" and p["steps"] == 6 and p["seed"] == 0
    assert p["command"] == "test" and "conditional_accuracy" in p["metrics"]
    g = a.build_generator()
    assert not g.training
    z = torch.randn(2, 12)
    assert g(z, torch.tensor([1, 2])).shape == (2, 1, 16, 16)


def test_tampered_weights_are_detected(model):
    data = bytearray((model / GENERATOR_WEIGHTS).read_bytes())
    data[-5] ^= 0x01
    (model / GENERATOR_WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"generator\.safetensors.*checksum"):
        Artifact.open(model)


def test_truncated_and_missing_files_are_detected(model):
    data = (model / GENERATOR_WEIGHTS).read_bytes()
    (model / GENERATOR_WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="generator.safetensors"):
        Artifact.open(model)
    (model / GENERATOR_WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match="generator.safetensors.*missing"):
        Artifact.open(model)


def _edit_manifest(model, **changes):
    data = json.loads((model / MANIFEST).read_text())
    data.update(changes)
    (model / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format_version": 99}, "format_version 99"),
        ({"z_dim": 13}, "z_dim"),
        ({"bogus": 1}, "unknown field"),
        ({"image_shape": [3, 16, 16]}, "image_shape"),
    ],
)
def test_bad_manifests_are_rejected(model, changes, message):
    _edit_manifest(model, **changes)
    with pytest.raises(ArtifactError, match=message):
        Artifact.open(model)


def test_missing_field_and_broken_json(model):
    data = json.loads((model / MANIFEST).read_text())
    del data["classes"]
    (model / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="missing field.*classes"):
        Artifact.open(model)
    (model / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json.*JSON"):
        Artifact.open(model)


def test_weights_that_do_not_match_the_manifest(model):
    data = json.loads((model / MANIFEST).read_text())
    data["generator"]["base_channels"] = 16  # checksums still fine, architecture is not
    (model / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="generator.safetensors.*do not match"):
        Artifact.open(model).build_generator()


def test_resolve_errors(tmp_path):
    with pytest.raises(InvalidRequest, match="model"):
        resolve("no-such-model")
    with pytest.raises(ArtifactError, match="not a ctrlgan model"):
        resolve(tmp_path)


def test_failed_write_leaves_the_old_artifact(model):
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    manifest = Artifact.open(model).manifest
    bad = {GENERATOR_WEIGHTS: {"w": torch.randn(3)}}
    manifest.z_dim = 999  # fails the manifest check after the files are written
    with pytest.raises(ArtifactError):
        write_artifact(model, manifest, bad)
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert [p.name for p in model.parent.iterdir() if p.name.startswith(".")] == []


def test_rewrite_keeps_listed_files_and_updates_checksums(model):
    a = Artifact.open(model)
    state = a.load_tensors(GENERATOR_WEIGHTS)
    extra = b"extra bytes"
    a.manifest.files["notes.txt"] = "0" * 64  # listed, so it is part of the artifact
    write_artifact(model, a.manifest, {GENERATOR_WEIGHTS: state}, files={"notes.txt": extra})
    again = write_artifact(model, Artifact.open(model).manifest, {GENERATOR_WEIGHTS: state})
    assert (again.path / "notes.txt").read_bytes() == extra
    assert set(again.manifest.files) == {GENERATOR_WEIGHTS, FEATURE_NET, "notes.txt"}


def test_manifest_json_round_trip():
    m = Manifest(
        z_dim=4,
        classes=["a", "b"],
        image_shape=[1, 16, 16],
        generator={"z_dim": 4, "n_classes": 2},
    )
    again = Manifest.from_json(m.to_json())
    assert again == m


def test_written_files_have_ordinary_permissions(tiny_model):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    path = tiny_model.artifact.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    written = [*path.iterdir(), path.parent / "checkpoint.safetensors"]
    written += list((path.parent / "samples").iterdir())
    for f in written:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


def test_directories_are_exchanged_in_one_step(tmp_path):
    from ctrlgan.artifact import _exchange

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_text("new")
    (tmp_path / "b" / "f").write_text("old")
    assert _exchange(tmp_path / "a", tmp_path / "b")  # Linux: renameat2(RENAME_EXCHANGE)
    assert (tmp_path / "b" / "f").read_text() == "new"
    assert (tmp_path / "a" / "f").read_text() == "old"


def test_a_malformed_onnx_field_is_an_artifact_error(tmp_path, tiny_model):
    path = tmp_path / "m"
    shutil.copytree(tiny_model.artifact.path, path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["onnx"] = 5
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="onnx"):
        Artifact.open(path)
