import shutil

import numpy as np
import pytest
import torch

import ctrlgan
from ctrlgan.artifact import DIRECTIONS, Artifact
from ctrlgan.cli import main
from ctrlgan.errors import InvalidRequest
from ctrlgan.export import onnx as export
from ctrlgan.training import directions as D
from ctrlgan.training.features import feature_fn


@pytest.fixture
def model(tiny_model, tmp_path):
    """A private copy of the tiny model: the session fixture must keep no direction table."""
    path = tmp_path / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    return path


@pytest.fixture(scope="module")
def net(tiny_model):
    return Artifact.open(tiny_model.artifact.path).build_generator()


def snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_closed_form_is_the_sorted_eigenbasis_with_fixed_signs(net):
    found = D.closed_form_directions(net, 5)
    assert found.names == [f"factor_{i}" for i in range(5)]
    table = found.table.double()
    assert table.shape == (5, 12)
    torch.testing.assert_close(
        table @ table.T, torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0
    )
    w = net.fc.weight.detach()[:, :12].double().numpy()
    values, vectors = np.linalg.eigh(w.T @ w)
    values, vectors = values[::-1][:5], vectors[:, ::-1][:, :5].T
    np.testing.assert_allclose(found.eigenvalues, values, rtol=1e-6)
    assert all(a >= b for a, b in zip(found.eigenvalues, found.eigenvalues[1:], strict=False))
    for row, want in zip(table.numpy(), vectors, strict=True):
        assert row[np.abs(row).argmax()] > 0  # the sign rule
        np.testing.assert_allclose(np.abs(row), np.abs(want), atol=1e-5)
        assert abs(abs(row @ want) - 1) < 1e-6
    with pytest.raises(InvalidRequest) as e:
        D.closed_form_directions(net, 13)
    assert e.value.field == "k"


def test_project_off_leaves_a_unit_direction_orthogonal_to_the_others():
    g = torch.Generator().manual_seed(0)
    n, others = torch.randn(12, generator=g), torch.randn(3, 12, generator=g)
    p = D.project_off(n, others).double()
    assert p.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert (others.double() @ p).abs().max() < 1e-5
    assert (p @ n.double()) > 0  # still points the same way
    with pytest.raises(InvalidRequest, match="others"):
        D.project_off(n, torch.stack([others[0], 2 * others[0]]))
    with pytest.raises(InvalidRequest, match="direction"):
        D.project_off(others[0], others)


def test_boundary_directions_are_written_and_steer(model, net):
    measure = feature_fn(["thickness", "slant"])
    found = D.boundary_directions(net, measure, n=400, seed=0)
    assert found.names == ["thickness", "slant"] and found.table.shape == (2, 12)
    torch.testing.assert_close(found.table.norm(dim=1), torch.ones(2))
    assert all(0 <= a <= 1 for a in found.accuracy.values())
    names, effect = D.effect_matrix(net, found.table, measure, n=50)
    assert names == ["thickness", "slant"] and effect.shape == (2, 2)
    shares = D.monotonic_share(net, found.names, found.table, measure, n=20)
    assert set(shares) == {"thickness", "slant"}

    D.write_directions(model, found.names, found.table, info={"method": "boundary"})
    artifact = Artifact.open(model)
    assert artifact.manifest.directions == ["thickness", "slant"]
    assert artifact.manifest.provenance["directions"] == {"method": "boundary"}
    torch.testing.assert_close(artifact.load_tensors(DIRECTIONS)["directions"], found.table)
    g = ctrlgan.load(model, backend="torch")
    assert g.features == ["thickness", "slant"]
    plain = g.sample(classes=3, seeds=[1, 2])
    steered = g.sample(classes=3, seeds=[1, 2], steer={"thickness": 2.0})
    assert np.abs(steered - plain).max() > 1e-3
    strip = g.traverse(seed=1, cls=3, feature="slant", alphas=[-1, 0, 1])
    np.testing.assert_allclose(strip[1], plain[0], atol=1e-6)


def test_writing_reexports_onnx_graphs_that_bake_the_table_in(model):
    export.export(model)
    table = D.closed_form_directions(Artifact.open(model).build_generator(), 3).table
    artifact = D.write_directions(model, ["factor_0", "factor_1", "factor_2"], table)
    fresh = export.build(artifact)
    for name in export.ONNX_FILES:
        assert export.verify_signature(artifact, name).SerializeToString() == (
            fresh[name].SerializeToString()
        )
    g = ctrlgan.load(model, backend="onnxruntime")
    x = g.sample(classes=[0, 1], seeds=[3, 4], steer={"factor_1": 1.5})
    want = ctrlgan.load(model, backend="torch").sample(
        classes=[0, 1], seeds=[3, 4], steer={"factor_1": 1.5}
    )
    np.testing.assert_allclose(x, want, atol=1e-4)


@pytest.mark.parametrize(
    "names, table, field, words",
    [
        (["thickness"], torch.randn(1, 5), "table", "z_dim"),
        (["thickness", "slant"], torch.randn(1, 12), "table", "names"),
        (["beard"], torch.randn(1, 12), "names", "beard"),
        (["size", "size"], torch.randn(2, 12), "names", "repeat"),
        ("size", torch.randn(1, 12), "names", "list"),
        (["size"], torch.full((1, 12), float("nan")), "table", "finite"),
        (["size"], torch.zeros(1, 12), "table", "zero"),
        (["size"], torch.randn(3, 1, 12), "table", "classes"),
        (["size"], torch.randn(12), "table", "[K, Z]"),
    ],
)
def test_refused_writes_name_the_field_and_leave_the_artifact_alone(
    model, names, table, field, words
):
    export.export(model)
    before = snapshot(model)
    with pytest.raises(InvalidRequest) as e:
        D.write_directions(model, names, table)
    assert e.value.field == field and words in str(e.value)
    assert snapshot(model) == before


def test_per_class_table_is_accepted(model):
    table = torch.nn.functional.normalize(torch.randn(10, 2, 12), dim=-1)
    D.write_directions(model, ["pos_x", "factor_7"], table)
    g = ctrlgan.load(model, backend="torch")
    assert g.features == ["pos_x", "factor_7"]
    assert (
        np.abs(
            g.sample(classes=2, seeds=[0], steer={"pos_x": 1.0}) - g.sample(classes=2, seeds=[0])
        ).max()
        > 1e-3
    )


def test_directions_command(model, capsys):
    code = main(["directions", str(model), "--features", "thickness,size", "--samples", "200"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "thickness" in out and "val acc" in out and "wrote 2 boundary" in out
    assert Artifact.open(model).manifest.directions == ["thickness", "size"]
    code = main(["directions", str(model), "--method", "closed-form", "--k", "2"])
    out, _ = capsys.readouterr()
    assert code == 0 and "factor_1" in out
    info = Artifact.open(model).manifest.provenance["directions"]
    assert info["method"] == "closed-form" and len(info["eigenvalues"]) == 2
    before = snapshot(model)
    for argv, word in [
        (["--features", "thickness,beard"], "beard"),
        (["--method", "closed-form", "--k", "0"], "k"),
        (["--samples", "3"], "samples"),
    ]:
        code = main(["directions", str(model), *argv])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and word in err, err
    assert snapshot(model) == before
