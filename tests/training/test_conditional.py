"""Conditional manipulation (--hold) and directions on a shapes model with a feature network."""

import json
import shutil

import numpy as np
import pytest
import torch

from ctrlgan.artifact import DIRECTIONS, Artifact
from ctrlgan.cli import main
from ctrlgan.errors import InvalidRequest
from ctrlgan.training import directions as D
from ctrlgan.training.train import TrainConfig, train


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    config = TrainConfig(
        data="shapes",
        n_data=1500,
        image_size=16,
        correlate=[["scale", "pos_y", 0.8]],
        z_dim=12,
        g_channels=8,
        d_channels=8,
        steps=3,
        batch_size=16,
        eval_per_class=0,
        feature_steps=60,
        out=str(out / "run"),
    )
    return train(config, progress=False).artifact.path


def snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_hold_fixed_projects_every_other_row_off_the_held_ones():
    gen = torch.Generator().manual_seed(4)
    table = torch.randn(4, 9, generator=gen)
    table = table / table.norm(dim=1, keepdim=True)
    found = D.Directions("boundary", ["a", "b", "c", "d"], table)
    held = D.hold_fixed(found, ["b", "d"])
    assert held.held == ["b", "d"] and held.names == found.names
    assert torch.equal(held.table[[1, 3]], table[[1, 3]])  # held rows untouched
    for k in (0, 2):
        assert held.table[k] @ table[1] == pytest.approx(0, abs=1e-6)
        assert held.table[k] @ table[3] == pytest.approx(0, abs=1e-6)
        assert held.table[k].norm() == pytest.approx(1, abs=1e-6)
        assert torch.allclose(held.table[k], D.project_off(table[k], table[[1, 3]]))
    # a per-class [C, K, Z] table is conditioned class by class
    per_class = torch.randn(3, 2, 5, generator=gen)
    held = D.hold_fixed(D.Directions("gradient", ["a", "b"], per_class), ["b"])
    for c in range(3):
        assert held.table[c, 0] @ per_class[c, 1] == pytest.approx(0, abs=1e-6)
        assert torch.equal(held.table[c, 1], per_class[c, 1])


@pytest.mark.parametrize(
    "hold, word", [(["x"], "'x'"), (["a", "a"], "repeat"), (["a", "b"], "every direction")]
)
def test_hold_fixed_refuses(hold, word):
    found = D.Directions("boundary", ["a", "b"], torch.eye(2, 3))
    with pytest.raises(InvalidRequest, match=word) as e:
        D.hold_fixed(found, hold)
    assert e.value.field == "hold"


def test_hold_fixed_names_the_hold_when_the_projection_fails():
    table = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    found = D.Directions("boundary", ["a", "b", "c"], table)
    with pytest.raises(InvalidRequest, match="linearly dependent") as e:
        D.hold_fixed(found, ["b", "c"])  # b and c are the same direction
    assert e.value.field == "hold"
    with pytest.raises(InvalidRequest, match="span") as e:
        D.hold_fixed(found, ["b"])  # c lies in b's span: nothing is left of it
    assert e.value.field == "hold"


def test_directions_on_shapes_measure_the_true_factors_and_hold(shapes_model, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(shapes_model, model)
    argv = ["directions", str(model), "--features", "scale,pos_y", "--hold", "pos_y"]
    assert main([*argv, "--samples", "300"]) == 0
    out = capsys.readouterr().out
    assert "found with feature network (learned), measured with exact moment readers" in out
    assert "before holding pos_y fixed:" in out and "projected off pos_y" in out
    artifact = Artifact.open(model)
    info = artifact.manifest.provenance["directions"]
    assert info["held"] == ["pos_y"] and info["features"] == ["scale", "pos_y"]
    assert info["feature_source"] == "feature network (learned)"
    assert info["measured_by"].startswith("exact moment readers")
    assert np.array(info["effect_before_hold"]).shape == (2, 2)
    table = artifact.load_tensors(DIRECTIONS)["directions"]
    assert artifact.manifest.directions == ["scale", "pos_y"]
    assert float(table[0] @ table[1]) == pytest.approx(0, abs=1e-5)
    # the default features of a shapes model are its linear true factors
    assert main(["directions", str(model), "--samples", "300"]) == 0
    assert Artifact.open(model).manifest.directions == ["scale", "pos_x", "pos_y"]


def test_shapes_report_correlates_the_true_factors(shapes_model, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(shapes_model, model)
    assert main(["directions", str(model), "--samples", "100"]) == 0
    before = snapshot(model)
    capsys.readouterr()
    assert main(["directions", str(model), "--report", "--samples", "50"]) == 0
    out = capsys.readouterr().out
    assert "true factor correlation on shapes (5000 images)" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("true factor correlation"))
    header = lines[start + 1].split()
    rows = {line.split()[0]: line.split()[1:] for line in lines[start + 2 : start + 6]}
    corr = float(rows["scale"][header.index("pos_y") - 1])
    assert corr == pytest.approx(0.8, abs=0.03)  # what the model was trained with
    assert float(rows["scale"][header.index("pos_x") - 1]) == pytest.approx(0, abs=0.05)
    assert snapshot(model) == before


@pytest.mark.parametrize(
    "extra, word",
    [
        (["--features", "scale", "--hold", "pos_y"], "hold"),
        (["--features", "thickness"], "thickness"),
        (["--hold", "pos_y,"], "hold"),
        (["--report", "--method", "gradient"], "--method"),
        (["--report", "--hold", "pos_y"], "--hold"),
        (["--method", "gradient", "--lambda", "inf"], "lambda"),
        (["--features", "scale,pos_y", "--hold", "pos_y,pos_y"], "repeat"),
        (["--features", "scale,pos_y", "--hold", "pos_y,scale"], "every direction"),
        (["--report", "--data", "digits"], "data"),  # 10 digit classes, not 4 shapes
        (["--method", "gradient", "--step-size", "nan"], "step-size"),
    ],
)
def test_bad_directions_requests_leave_the_model_alone(shapes_model, capsys, extra, word):
    before = snapshot(shapes_model)
    assert main(["directions", str(shapes_model), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]
    assert snapshot(shapes_model) == before
    assert json.loads((shapes_model / "manifest.json").read_text())["directions"] == []


@pytest.mark.parametrize("kind", ["shapes-regressor", None])
def test_networks_written_by_earlier_versions_still_load(shapes_model, tiny_model, tmp_path, kind):
    from ctrlgan.training import feature_net

    for source, names in ((shapes_model, feature_net.NAMES), (tiny_model.artifact.path, None)):
        model = tmp_path / source.name
        shutil.rmtree(model, ignore_errors=True)
        shutil.copytree(source, model)
        manifest = json.loads((model / "manifest.json").read_text())
        entry = manifest["provenance"]["features"]
        if kind is None:
            del entry["kind"]
        elif names is not None:
            entry["kind"] = kind
        (model / "manifest.json").write_text(json.dumps(manifest))
        discover, _ = feature_net.feature_sets(Artifact.open(model))
        assert discover.names == (names or feature_net.FEATURES)


def test_a_feature_network_that_does_not_load_is_a_clear_error(shapes_model, tmp_path):
    from ctrlgan.training import feature_net

    model = tmp_path / "m"
    shutil.copytree(shapes_model, model)
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["provenance"]["features"]["base_channels"] = 7  # not the shapes of the weights
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidRequest, match="feature network does not load") as e:
        feature_net.feature_sets(Artifact.open(model))
    assert e.value.field == "model"
