"""Classifier-gradient directions, the entanglement report and `ctrlgan traverse`."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ctrlgan.artifact import DIRECTIONS, Artifact
from ctrlgan.cli import main
from ctrlgan.errors import InvalidRequest
from ctrlgan.training import directions as D
from ctrlgan.training.features import FEATURES, feature_fn, measure

NAMES = ["thickness", "slant", "size"]


@pytest.fixture(scope="module")
def net(tiny_model):
    return Artifact.open(tiny_model.artifact.path).build_generator()


@pytest.fixture(scope="module")
def steered(tiny_model, tmp_path_factory):
    """A private copy of the tiny model with per-class gradient directions written by the CLI
    (read-only for the tests that use it)."""
    path = tmp_path_factory.mktemp("steered") / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    argv = ["directions", str(path), "--method", "gradient", "--per-class", "--samples", "100"]
    assert main([*argv, "--grad-steps", "5", "--step-size", "0.3"]) == 0
    return path


def snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def one_line_error(capsys, argv, word):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and word in err, (argv, err)


def test_differentiable_features_equal_measure_and_carry_gradients(net):
    z, labels = D.sample_latents(net, 16, 3)
    z.requires_grad_(True)
    images = net(z, labels)
    values = D.differentiable_features()(images)
    reference = measure(images.detach())
    for name in FEATURES:
        torch.testing.assert_close(values[name], reference[name], atol=1e-6, rtol=1e-5)
    (grad,) = torch.autograd.grad(sum(v.sum() for v in values.values()), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_gradient_directions_are_unit_and_raise_their_feature(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = [p.requires_grad for p in net.parameters()]
    found = D.gradient_directions(
        net, D.differentiable_features(NAMES), NAMES, n=100, steps=5, step_size=0.3
    )
    assert found.method == "gradient" and found.names == NAMES
    assert found.table.shape == (3, 12) and found.table.dtype == torch.float32
    torch.testing.assert_close(found.table.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    # the generator stayed frozen and unchanged
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [p.requires_grad for p in net.parameters()] == flags
    # on fresh samples, steering along d raises d's feature on average
    columns, effect = D.effect_matrix(net, found.table, feature_fn(NAMES), n=200, seed=7)
    assert columns == NAMES
    assert (effect.diagonal() > 0).all(), effect


def test_per_class_gradient_directions(net):
    found = D.gradient_directions(
        net,
        D.differentiable_features(NAMES),
        NAMES,
        n=100,
        steps=5,
        step_size=0.3,
        per_class=True,
    )
    assert found.table.shape == (10, 3, 12)
    torch.testing.assert_close(found.table.norm(dim=-1), torch.ones(10, 3), atol=1e-5, rtol=0)
    _, effect = D.effect_matrix(net, found.table, feature_fn(NAMES), n=200, seed=7)
    assert (effect.diagonal() > 0).all(), effect


def test_gradient_directions_refuse_bad_arguments(net):
    fn = D.differentiable_features(NAMES)
    for kwargs, field in [
        ({"names": ["pos_x"]}, "names"),
        ({"names": []}, "names"),
        ({"step_size": 0.0}, "step_size"),
        ({"lam": -1.0}, "lambda"),
        ({"steps": 0}, "steps"),
        ({"n": 5, "per_class": True}, "samples"),
    ]:
        with pytest.raises(InvalidRequest) as e:
            D.gradient_directions(net, fn, **({"names": NAMES} | kwargs))
        assert e.value.field == field


def test_gradient_command_writes_a_per_class_table_with_its_effects(steered):
    artifact = Artifact.open(steered)
    assert artifact.manifest.directions == NAMES
    info = artifact.manifest.provenance["directions"]
    assert info["method"] == "gradient" and info["per_class"] is True
    assert info["features"] == NAMES and info["steps"] == 5
    tensors = artifact.load_tensors(DIRECTIONS)
    assert tensors["directions"].shape == (10, 3, 12)
    assert tensors["effects"].shape == (3, 3)
    np.testing.assert_allclose(tensors["effects"].numpy(), info["effect"], atol=1e-5)


def test_report_prints_both_matrices_draws_a_heatmap_and_changes_nothing(steered, tmp_path, capsys):
    before = snapshot(steered)
    png = tmp_path / "heat.png"
    assert main(["directions", str(steered), "--report", "--heatmap", str(png)]) == 0
    out = capsys.readouterr().out
    assert "effect matrix" in out and "per-class table" in out
    assert "feature correlation on digits (1797 images)" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("feature correlation"))
    rows = [line.split() for line in lines[start + 2 : start + 2 + len(FEATURES)]]
    corr = np.array([[float(v) for v in row[1:]] for row in rows])
    np.testing.assert_allclose(np.diag(corr), 1.0, atol=1e-3)
    np.testing.assert_allclose(corr, corr.T, atol=1e-3)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 200
    assert snapshot(steered) == before


def test_report_refuses_bad_inputs_in_one_line(steered, tiny_model, tmp_path, capsys):
    before = snapshot(steered)
    model = str(steered)
    for argv, word in [
        ([model, "--report", "--heatmap", str(tmp_path / "heat.jpg")], "heatmap"),
        ([model, "--report", "--heatmap", str(tmp_path / "missing" / "h.png")], "heatmap"),
        ([model, "--report", "--data", str(tmp_path / "nothing")], "nothing"),
        ([model, "--report", "--features", "beard"], "beard"),
        ([model, "--report", "--samples", "3"], "samples"),
        ([model, "--heatmap", str(tmp_path / "h.png")], "--report"),
        ([model, "--per-class"], "per-class"),
        ([str(tiny_model.artifact.path), "--report"], "no direction table"),
    ]:
        one_line_error(capsys, ["directions", *argv], word)
    assert snapshot(steered) == before
    assert not list(tmp_path.iterdir())


def test_traverse_writes_one_row_per_feature(steered, tmp_path, capsys):
    out = tmp_path / "strip.png"
    argv = ["traverse", str(steered), "--class", "3", "--feature", "slant", "--feature", "size"]
    assert main([*argv, "--seed", "5", "--alphas", "-2,0,2", "--scale", "1", "-o", str(out)]) == 0
    assert "one row per feature: slant, size" in capsys.readouterr().out
    with Image.open(out) as im:
        # 3 columns x 2 rows of 16-pixel images, 2 pixels of padding
        assert im.size == (3 * 16 + 4 * 2, 2 * 16 + 3 * 2)
    assert main(["traverse", str(steered), "-o", str(out)]) == 0  # every feature, class 0


def test_traverse_refuses_bad_inputs_in_one_line(steered, tiny_model, tmp_path, capsys):
    model = str(steered)
    out = str(tmp_path / "strip.png")
    for argv, word in [
        ([model, "--feature", "beard"], "beard"),
        ([model, "--feature", "slant", "--alphas", "a,b"], "alphas"),
        ([model, "--feature", "slant", "--alphas", "0,nan"], "alphas"),
        ([model, "--feature", "slant", "--alphas", ""], "alphas"),
        ([model, "--feature", "slant", "--class", "10"], "class"),
        ([model, "--feature", "slant", "--class", "0-2"], "class"),
        ([str(tiny_model.artifact.path)], "no direction table"),
    ]:
        one_line_error(capsys, ["traverse", *argv, "-o", out], word)
    one_line_error(capsys, ["traverse", model, "-o", str(tmp_path / "strip.jpg")], "png")
    assert not list(tmp_path.iterdir())
