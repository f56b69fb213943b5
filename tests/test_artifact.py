import json
import shutil

import pytest
import torch

from ctrlgan.artifact import (
    BUNDLED_DIR,
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


@pytest.fixture
def digits(tmp_path):
    """A copy of the bundled model (directions and graphs included) to edit."""
    path = tmp_path / "digits"
    shutil.copytree(BUNDLED_DIR / "digits", path)
    return path


def _edit(path, edit):
    data = json.loads((path / MANIFEST).read_text())
    edit(data)
    (path / MANIFEST).write_text(json.dumps(data))


def _cli(*argv):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "ctrlgan.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["directions"].pop(), "alpha"),  # the graphs take 3 alphas
        (lambda d: d.update(directions=[]), "directions.safetensors is listed"),
        (lambda d: d.update(directions=["thickness", "thickness", "size"]), "repeated"),
        (lambda d: d.update(directions=["thickness", "", "size"]), "non-empty"),
        (lambda d: d["classes"].__setitem__(1, "0"), "repeated name"),
        (lambda d: d.update(classes=[str(i) for i in range(11)]), "11 classes"),
        (lambda d: d.update(classes="0123456789"), "classes"),
        (lambda d: d.update(image_shape=[1, 32, 32]), "image_shape"),
        (lambda d: d["generator"].update(z_dim=10**9), "z_dim"),
        (lambda d: d["generator"].update(base_channels=1.5), "base_channels"),
        (lambda d: d.update(provenance=[]), "provenance"),
        (lambda d: d["onnx"]["generator.onnx"]["inputs"][6][2].__setitem__(1, 4), "alpha"),
        (lambda d: d["onnx"]["generator.body.onnx"]["inputs"][0][2].__setitem__(1, 9), "latent"),
    ],
)
def test_an_edited_manifest_that_cannot_sample_does_not_load(digits, edit, message):
    """The manifest carries the checksums of the other files, not of itself: its meaning is
    checked on load, so no edit of it loads as an artifact that then fails to sample."""
    _edit(digits, edit)
    with pytest.raises(ArtifactError, match=message):
        Artifact.open(digits)
    info = _cli("info", str(digits))
    assert info.returncode == 2 and len(info.stderr.strip().splitlines()) == 1
    assert "manifest.json" in info.stderr and "verified" not in info.stdout


def test_a_graph_that_disagrees_with_a_consistent_manifest_is_refused(digits):
    """A manifest edited consistently (4 directions, a 4-row table with its checksum, alpha
    width 4 recorded) still disagrees with the graph itself: the graph's own signature is
    checked where it is loaded, and `ctrlgan info` loads every graph."""
    from safetensors.torch import save_file

    from ctrlgan.artifact import DIRECTIONS, sha256_file

    save_file({"directions": torch.randn(4, 64)}, digits / DIRECTIONS)

    def edit(d):
        d["directions"].append("weight")
        d["files"][DIRECTIONS] = sha256_file(digits / DIRECTIONS)
        for name in ("generator.onnx", "generator.fp16.onnx"):
            d["onnx"][name]["inputs"][6][2][1] = 4

    _edit(digits, edit)
    Artifact.open(digits)  # self-consistent
    with pytest.raises(ArtifactError, match="generator.onnx.*signature"):
        import ctrlgan

        ctrlgan.load(digits, backend="onnxruntime")
    info = _cli("info", str(digits))
    assert info.returncode == 2 and "generator" in info.stderr and "signature" in info.stderr
    sample = _cli("sample", str(digits), "--backend", "onnxruntime", "-o", str(digits / "x.png"))
    assert sample.returncode == 2 and len(sample.stderr.strip().splitlines()) == 1
    assert not (digits / "x.png").exists()


def test_a_table_of_the_wrong_shape_is_refused(digits):
    from safetensors.torch import save_file

    from ctrlgan.artifact import DIRECTIONS, sha256_file

    save_file({"directions": torch.randn(3, 63)}, digits / DIRECTIONS)
    _edit(digits, lambda d: d["files"].update({DIRECTIONS: sha256_file(digits / DIRECTIONS)}))
    with pytest.raises(ArtifactError, match="directions.safetensors.*\\[.F32., 3, 63\\]"):
        Artifact.open(digits)


def test_the_bundled_model_passes_every_check():
    info = _cli("info", "digits")
    assert info.returncode == 0, info.stderr
    assert info.stdout.count("verified; loads and runs in onnxruntime") == 3


def _rewrite_tensors(path, name, change):
    """Rewrite a safetensors file of the artifact (with ``change`` applied to its tensors) and
    record its new checksum, as a hostile but consistent editor would."""
    from safetensors.torch import load_file, save_file

    from ctrlgan.artifact import sha256_file

    tensors = load_file(path / name)
    change(tensors)
    save_file(tensors, path / name)
    _edit(path, lambda d: d["files"].update({name: sha256_file(path / name)}))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["classes"].__setitem__(0, "zero\nline"), "not a name"),
        (lambda d: d["classes"].__setitem__(0, "\ud800"), "not a name"),
        (lambda d: d["classes"].__setitem__(0, "x" * 201), "not a name"),
        (lambda d: d.update(image_shape=[True, 16, 16]), "image_shape"),
        (lambda d: d.update(image_shape=[1.0, 16, 16]), "image_shape"),
        (lambda d: d.update(format_version=True), "format_version"),
        (lambda d: d.update(value_range=["a", 1]), "value_range"),
        (lambda d: d.update(value_range=[1, -1]), "value_range"),
        (lambda d: d["files"].update({"x" * 300: "0" * 64}), "bad file name"),
        (lambda d: d["files"].update({"a\nb": "0" * 64}), "bad file name"),
        (lambda d: d["generator"].update(z_dim=True), "z_dim"),
        (lambda d: d.update(z_dim=64.0), "z_dim"),
    ],
)
def test_manifest_values_of_the_wrong_kind(digits, edit, message):
    _edit(digits, edit)
    with pytest.raises(ArtifactError, match=message):
        Artifact.open(digits)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"z_dim": 1' + "0" * 5000 + "}", "JSON"),
    ],
)
def test_a_manifest_that_json_cannot_hold_is_an_artifact_error(digits, text, message):
    (digits / MANIFEST).write_text(text)
    with pytest.raises(ArtifactError, match=message):
        Artifact.open(digits)


def test_weights_must_fit_the_manifest_and_be_finite(digits):
    """A consistent edit of the class count (generator config, class list, the body graph's
    recorded latent width) no longer fits the weights: refused without torch, from the header."""

    def eleven(d):
        d["classes"].append("ten")
        d["generator"]["n_classes"] = 11
        d["onnx"]["generator.body.onnx"]["inputs"][0][2][1] += 1

    _edit(digits, eleven)
    with pytest.raises(
        ArtifactError,
        match=r"generator.safetensors.*fc.weight: \['F32', 2048, 74\].*"
        r"implies \['F32', 2048, 75\]",
    ):
        Artifact.open(digits)


@pytest.mark.parametrize("name", [GENERATOR_WEIGHTS, "directions.safetensors"])
def test_non_finite_weights_or_directions_are_refused(digits, name):
    def poison(tensors):
        key = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
        tensors[key].view(-1)[3] = float("nan")

    _rewrite_tensors(digits, name, poison)
    with pytest.raises(ArtifactError, match=name.replace(".", "\\.") + ".*(NaN|finite)"):
        Artifact.open(digits)


def test_weight_shapes_are_the_networks():
    from ctrlgan.architecture import weight_shapes
    from ctrlgan.network import ConditionalGenerator, GeneratorConfig

    for config in (
        GeneratorConfig(z_dim=5, n_classes=3, image_size=28, base_channels=8),
        GeneratorConfig(
            z_dim=7,
            n_classes=4,
            image_size=64,
            channels=3,
            base_channels=4,
            embedding="learned",
            embed_dim=5,
        ),
        GeneratorConfig(z_dim=3, n_classes=2, image_size=16),
        GeneratorConfig(z_dim=3, n_classes=2, image_size=32, base_channels=6),
    ):
        state = ConditionalGenerator(config).state_dict()
        assert {k: list(v.shape) for k, v in state.items()} == weight_shapes(config)


def test_a_swapped_graph_that_fails_on_valid_input_is_an_artifact_error(digits):
    """A graph with the right signature and a recorded checksum, but another model's class
    table (2 rows): loading it on onnxruntime runs it once per class, so it is refused as an
    ArtifactError naming the graph (never onnxruntime's own error), and so does `ctrlgan info`."""
    import numpy as np

    import ctrlgan
    from ctrlgan.artifact import GENERATOR_ONNX, sha256_file
    from ctrlgan.export import graph
    from ctrlgan.network import ConditionalGenerator, GeneratorConfig

    other = ConditionalGenerator(GeneratorConfig(z_dim=64, n_classes=2, base_channels=8)).eval()
    model = graph.build_generator_graph(other, torch.randn(3, 64))
    (digits / GENERATOR_ONNX).write_bytes(model.SerializeToString())
    _edit(
        digits, lambda d: d["files"].update({GENERATOR_ONNX: sha256_file(digits / GENERATOR_ONNX)})
    )
    with pytest.raises(ArtifactError, match="generator.onnx: fails to run"):
        ctrlgan.load(digits, backend="onnxruntime")  # a smoke run draws every class
    g = ctrlgan.load(digits, backend="torch")  # the torch backend builds from the weights
    assert np.isfinite(g.sample(classes=7, seeds=[3])).all()
    info = _cli("info", str(digits))
    assert info.returncode == 2 and len(info.stderr.strip().splitlines()) == 1
    assert "generator.onnx: fails to run" in info.stderr
    sample = _cli("sample", str(digits), "--backend", "onnxruntime", "-o", str(digits / "x.png"))
    assert sample.returncode == 2 and len(sample.stderr.strip().splitlines()) == 1, sample.stderr


def test_listed_files_must_be_regular_files_of_the_artifact(digits):
    from ctrlgan.artifact import sha256_file

    (digits / "notes.txt").symlink_to("/etc/hostname")
    _edit(digits, lambda d: d["files"].update({"notes.txt": sha256_file(digits / "notes.txt")}))
    with pytest.raises(ArtifactError, match="notes.txt: is not a regular file"):
        Artifact.open(digits)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.complex64])
def test_weights_of_another_dtype_are_refused(digits, dtype):
    _rewrite_tensors(digits, GENERATOR_WEIGHTS, lambda t: t.update(
        {k: v.to(dtype) for k, v in t.items() if v.is_floating_point()}
    ))  # fmt: skip
    with pytest.raises(ArtifactError, match="generator.safetensors: weights do not match"):
        Artifact.open(digits)


def test_the_report_reads_a_garbled_provenance_without_a_traceback(digits, tmp_path):
    def garble(d):
        d["provenance"].update(config=[1, 2], directions=["boundary"])

    _edit(digits, garble)
    heatmap = tmp_path / "h.png"
    proc = _cli("directions", str(digits), "--report", "--samples", "20", "--heatmap", str(heatmap))
    assert proc.returncode == 0, proc.stderr
    assert heatmap.is_file()
    _edit(digits, lambda d: d["provenance"].update(dataset="shapes", config={"correlate": 3}))
    proc = _cli("directions", str(digits), "--report", "--samples", "20")
    assert proc.returncode == 2 and "provenance.config" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_swapped_graph_that_draws_nan_is_refused_at_load(digits):
    import ctrlgan
    from ctrlgan.artifact import GENERATOR_ONNX, sha256_file
    from ctrlgan.export import graph
    from ctrlgan.network import ConditionalGenerator, GeneratorConfig

    other = ConditionalGenerator(GeneratorConfig(z_dim=64, n_classes=10, base_channels=8)).eval()
    with torch.no_grad():
        other.fc.bias.fill_(float("nan"))
    model = graph.build_generator_graph(other, torch.randn(3, 64))
    (digits / GENERATOR_ONNX).write_bytes(model.SerializeToString())
    _edit(
        digits, lambda d: d["files"].update({GENERATOR_ONNX: sha256_file(digits / GENERATOR_ONNX)})
    )
    with pytest.raises(ArtifactError, match="generator.onnx: does not draw finite images"):
        ctrlgan.load(digits, backend="onnxruntime")
