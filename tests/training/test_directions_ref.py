"""The reference implementations' conventions: InterFaceGAN's top/bottom labelling
(``chosen_ratio``) for boundaries and SeFa's per-unit normalisation (``normalize``) for the closed
form; benchmarks/check_references.py measures the agreement with the references themselves."""

import shutil

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from ctrlgan.architecture import GeneratorConfig
from ctrlgan.artifact import DIRECTIONS, Artifact
from ctrlgan.cli import main
from ctrlgan.errors import InvalidRequest
from ctrlgan.network import ConditionalGenerator
from ctrlgan.training import directions as D
from ctrlgan.training import feature_net
from tests.test_cli import assert_one_line_error, run

BAD_RATIOS = [0, 0.0, -0.1, 0.51, 1, 1.0, float("nan"), float("inf"), True, "0.1", [0.1]]


def planted(n=1500, z_dim=9, n_classes=3, seed=None):
    """z [n, Z], classes (uneven counts), scores = z . normal + 4 * class (+ small noise) and
    the unit normal."""
    g = np.random.default_rng(seed)
    z = g.standard_normal((n, z_dim))
    labels = g.integers(0, n_classes, n)
    normal = g.standard_normal(z_dim)
    normal /= np.linalg.norm(normal)
    scores = z @ normal + 4.0 * labels + 0.05 * g.standard_normal(n)
    return torch.from_numpy(z), torch.from_numpy(scores), torch.from_numpy(labels), normal


def extremes(scores, labels, ratio):
    """The expected labelled rows, computed independently: per class, the int(n_c ratio)
    lowest and highest scores."""
    top, bottom = [], []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        order = rows[np.argsort(scores[rows], kind="stable")]
        k = int(len(rows) * ratio)
        bottom += list(order[:k])
        top += list(order[len(order) - k :])
    return np.array(sorted(top)), np.array(sorted(bottom))


def test_chosen_ratio_fits_exactly_the_top_and_bottom_of_each_class():
    z, scores, labels, _ = planted()
    ratio, n = 0.1, len(z)
    normal, accuracy, labelled = D.fit_boundary(z, scores, labels, chosen_ratio=ratio)
    top, bottom = extremes(scores.numpy(), labels.numpy(), ratio)
    assert (
        labelled
        == len(top) + len(bottom)
        == 2 * sum(int((labels == c).sum() * ratio) for c in range(3))
    )
    # the class offset (4 per class) would put every global top score in class 2: the labels
    # are per class, so every class contributes to both sides
    assert set(labels.numpy()[top]) == set(labels.numpy()[bottom]) == {0, 1, 2}
    # the same fit on exactly those rows (the last 20% held out) gives the same normal
    rows = np.sort(np.concatenate([top, bottom]))  # in sample order, as fit_boundary takes them
    y = np.isin(rows, top)
    n_train = n - round(0.2 * n)
    train, val = rows[rows < n_train], rows[rows >= n_train]
    clf = LogisticRegression(C=1.0, max_iter=1000).fit(z.numpy()[train], y[rows < n_train])
    want = clf.coef_[0] / np.linalg.norm(clf.coef_[0])
    np.testing.assert_allclose(normal.numpy(), want, atol=1e-12)
    assert accuracy == pytest.approx(clf.score(z.numpy()[val], y[rows >= n_train]))
    # the default labels every sample (class median)
    _, _, everyone = D.fit_boundary(z, scores, labels)
    assert everyone == n


def test_chosen_ratio_recovers_the_planted_normal_and_ignores_the_middle():
    z, scores, labels, normal = planted()
    found, accuracy, _ = D.fit_boundary(z, scores, labels, chosen_ratio=0.05)
    assert float(found.numpy() @ normal) > 0.98
    assert accuracy > 0.9
    # the middle of each class: fresh noise rows and scores shuffled within the middle's range
    top, bottom = extremes(scores.numpy(), labels.numpy(), 0.05)
    middle = np.setdiff1d(np.arange(len(z)), np.concatenate([top, bottom]))
    g = torch.Generator().manual_seed(1)
    z2, s2 = z.clone(), scores.clone()
    z2[middle] = torch.randn(len(middle), z.shape[1], generator=g, dtype=z.dtype)
    for c in range(3):
        rows = middle[labels.numpy()[middle] == c]
        s2[rows] = s2[rows][torch.randperm(len(rows), generator=g)]
    again, acc2, _ = D.fit_boundary(z2, s2, labels, chosen_ratio=0.05)
    assert torch.equal(again, found) and acc2 == accuracy
    # ... while one labelled row moved does change it (the check above can fail)
    z3 = z.clone()
    z3[top[0]] += 3.0
    moved, _, _ = D.fit_boundary(z3, scores, labels, chosen_ratio=0.05)
    assert not torch.equal(moved, found)
    # and the default (every sample labelled) does depend on the middle
    plain, _, _ = D.fit_boundary(z, scores, labels)
    plain2, _, _ = D.fit_boundary(z2, s2, labels)
    assert not torch.equal(plain, plain2)


@pytest.mark.parametrize("ratio", BAD_RATIOS)
def test_bad_chosen_ratio_names_the_field(ratio):
    z, scores, labels, _ = planted(n=200)
    with pytest.raises(InvalidRequest) as e:
        D.fit_boundary(z, scores, labels, chosen_ratio=ratio)
    assert e.value.field == "chosen_ratio"


def test_too_few_labelled_samples_name_chosen_ratio(net):
    z, scores, labels, _ = planted(n=200)
    # class sizes near 67: 0.01 labels none of a class
    with pytest.raises(InvalidRequest, match="labels none") as e:
        D.fit_boundary(z, scores, labels, chosen_ratio=0.01)
    assert e.value.field == "chosen_ratio"
    # one class of 30: one sample a side, too few to train on
    with pytest.raises(InvalidRequest, match="too few") as e:
        D.fit_boundary(z[:30], scores[:30], torch.zeros(30, dtype=torch.long), chosen_ratio=0.05)
    assert e.value.field == "chosen_ratio"
    # through the generator: 100 samples of 10 classes, 0.05 of 10 is none
    for ratio in (0.05, 0.7):
        with pytest.raises(InvalidRequest) as e:
            D.boundary_directions(net, _moments(), n=100, chosen_ratio=ratio)
        assert e.value.field == "chosen_ratio"


def test_constant_or_nan_scores_are_refused():
    z, scores, labels, _ = planted(n=200)
    for ratio in (None, 0.1):
        with pytest.raises(InvalidRequest, match="does not vary"):
            D.fit_boundary(z, torch.ones(200, dtype=torch.float64), labels, chosen_ratio=ratio)
        bad = scores.clone()
        bad[3] = float("nan")
        with pytest.raises(InvalidRequest, match="finite"):
            D.fit_boundary(z, bad, labels, chosen_ratio=ratio)


# SeFa ----------------------------------------------------------------------------------------


def sefa(weight_zt: np.ndarray):
    """SeFa's factorize_weight (genforce/sefa utils.py) on a [Z, out] weight, sorted by
    eigenvalue (SeFa keeps np.linalg.eig's order; eig does not promise one)."""
    weight = weight_zt / np.linalg.norm(weight_zt, axis=0, keepdims=True)
    values, vectors = np.linalg.eig(weight.dot(weight.T))
    values, vectors = np.real(values), np.real(vectors.T)
    order = np.argsort(-values)
    return vectors[order], values[order]


@pytest.fixture
def odd_generator():
    """A generator with z_dim 13 and fresh random first-layer weights whose rows have very
    different gains (so that normalising them matters)."""
    g = ConditionalGenerator(GeneratorConfig(z_dim=13, n_classes=3, base_channels=8))
    with torch.no_grad():
        w = torch.randn_like(g.fc.weight)
        g.fc.weight.copy_(w * torch.exp(2 * torch.randn(len(w), 1)))
    return g


def test_normalize_matches_sefa(odd_generator):
    w = odd_generator.fc.weight.detach().double().numpy()
    z_dim = 13
    want, values = sefa(w[:, :z_dim].T)
    found = D.closed_form_directions(odd_generator, 5, normalize=True)
    assert found.settings == {"normalize": True}
    np.testing.assert_allclose(found.eigenvalues, values[:5], rtol=1e-6)
    ours = found.table.double().numpy()
    for row, ref in zip(ours, want[:5], strict=True):
        assert abs(row @ ref) == pytest.approx(1.0, abs=1e-5)
        assert row[np.abs(row).argmax()] > 0  # ctrlgan's sign rule still holds
    # without normalize it is the plain W_z^T W_z basis, which SeFa's is not here
    plain = D.closed_form_directions(odd_generator, 5).table.double().numpy()
    assert np.abs((plain * want[:5]).sum(1)).min() < 0.99
    assert D.closed_form_directions(odd_generator, 5).settings == {"normalize": False}


def test_normalize_uses_the_z_columns_only_and_skips_dead_units(odd_generator):
    found = D.closed_form_directions(odd_generator, 4, normalize=True).table
    with torch.no_grad():
        odd_generator.fc.weight[:, 13:] *= 100.0  # class columns: not part of z
        odd_generator.fc.weight[0, :13] = 0.0  # a unit with no weight on z
    w = odd_generator.fc.weight.detach().double().numpy()[1:, :13]
    want, _ = sefa(w.T)
    again = D.closed_form_directions(odd_generator, 4, normalize=True).table.double().numpy()
    assert np.isfinite(again).all()
    for row, ref in zip(again, want[:4], strict=True):
        assert abs(row @ ref) == pytest.approx(1.0, abs=1e-5)
    assert not torch.equal(found, torch.from_numpy(again).float())  # the dead unit did count
    with pytest.raises(InvalidRequest) as e:
        D.closed_form_directions(odd_generator, 2, normalize="yes")
    assert e.value.field == "normalize"


# CLI -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net(tiny_model):
    return Artifact.open(tiny_model.artifact.path).build_generator()


def _moments():
    from ctrlgan.training.features import feature_fn

    return feature_fn(["thickness"])


@pytest.fixture
def model(tiny_model, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_model.artifact.path, path)
    return path


def snapshot(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_cli_options_reach_the_methods_and_the_provenance(model, net, capsys):
    argv = ["directions", str(model), "--features", "thickness", "--samples", "200"]
    assert main([*argv, "--chosen-ratio", "0.25"]) == 0
    artifact = Artifact.open(model)
    info = artifact.manifest.provenance["directions"]
    assert info["chosen_ratio"] == 0.25 and info["labelled"] == {"thickness": 100}
    fset, _ = feature_net.feature_sets(artifact)
    want = D.boundary_directions(net, fset.fn(["thickness"]), n=200, seed=0, chosen_ratio=0.25)
    assert torch.equal(artifact.load_tensors(DIRECTIONS)["directions"], want.table)

    argv_cf = ["directions", str(model), "--method", "closed-form", "--k", "2", "--normalize"]
    assert main(argv_cf) == 0
    artifact = Artifact.open(model)
    assert artifact.manifest.provenance["directions"]["normalize"] is True
    want = D.closed_form_directions(net, 2, normalize=True).table
    assert torch.equal(artifact.load_tensors(DIRECTIONS)["directions"], want)
    capsys.readouterr()

    before = snapshot(model)
    for extra, words in [
        (["--chosen-ratio", "0"], ["chosen_ratio"]),
        (["--chosen-ratio", "0.6"], ["chosen_ratio", "0.5"]),
        (["--chosen-ratio", "nan"], ["chosen_ratio"]),
        (["--chosen-ratio", "abc"], ["chosen-ratio"]),
        (["--chosen-ratio", "0.02"], ["chosen_ratio", "labels none"]),  # 20 a class
        (["--method", "gradient", "--chosen-ratio", "0.1"], ["chosen_ratio", "boundary"]),
        (["--normalize"], ["normalize", "closed-form"]),
        (["--report", "--normalize"], ["report", "--normalize"]),
    ]:
        code, _, err = run(capsys, *argv, *extra)
        assert_one_line_error(code, err, *words)
    assert snapshot(model) == before
