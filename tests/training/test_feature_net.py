"""Feature networks and the exact readers (training/feature_net.py)."""

import math

import numpy as np
import pytest
import torch

from ctrlgan.artifact import Artifact
from ctrlgan.errors import InvalidRequest
from ctrlgan.training import feature_net, metrics
from ctrlgan.training.data import load_digits, make_shapes
from ctrlgan.training.features import FEATURES, MOMENTS, measure
from ctrlgan.training.train import TrainConfig, train


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(3000, 16, seed=3, correlate=[("scale", "pos_y", 0.8)])


@pytest.fixture(scope="module")
def fitted(shapes):
    torch.set_num_threads(2)
    return feature_net.fit(
        shapes.images, shapes.labels, shapes.classes, shapes.factors, steps=300, batch_size=128
    )


def test_fit_reads_the_true_factors_of_held_out_shapes(fitted, shapes):
    net, quality = fitted
    # quality is measured on the last tenth, which fit never trained on
    assert quality["r2_pos_x"] > 0.9 and quality["r2_pos_y"] > 0.9
    assert quality["r2_scale"] > 0.6
    assert quality["class_accuracy"] > 0.4  # chance: 0.25
    fresh = make_shapes(500, 16, seed=11)  # different seed: shapes fit never saw
    true = fresh.factors[:, [0, 2, 3]]
    again = feature_net.evaluate(net, fresh.images, fresh.labels, true, fresh.factors)
    assert again["r2_pos_y"] > 0.9
    values = net.features(fresh.images)
    assert list(values) == list(feature_net.NAMES)
    err = (values["pos_y"] - fresh.factors[:, 3]).abs().mean()
    assert err < 0.03  # positions lie in [0.25, 0.75]
    k = net.order[net(fresh.images)[0].argmax(1)]
    assert (values["orientation"].abs() <= math.pi / k + 1e-6).all()


def test_exact_readers_recover_the_true_factors(fitted):
    _, quality = fitted
    assert quality["exact_r2_pos_x"] > 0.999 and quality["exact_r2_pos_y"] > 0.999
    assert quality["exact_r2_scale"] > 0.995  # one gain per class, fitted on real shapes
    fresh = make_shapes(400, 32, seed=12)  # another size too: the readers have no weights
    mass, cx, cy = metrics.ink_moments(fresh.images)
    np.testing.assert_allclose(cx.numpy(), fresh.factors[:, 2].numpy(), atol=3e-3)
    np.testing.assert_allclose(cy.numpy(), fresh.factors[:, 3].numpy(), atol=3e-3)
    # area = class constant x scale^2: sqrt(mass) / scale is constant within each class
    ratio = mass.sqrt().numpy() / fresh.factors[:, 0].numpy()
    for c in range(4):
        r = ratio[fresh.labels.numpy() == c]
        assert r.std() / r.mean() < 0.01


def test_features_are_differentiable_in_the_images(fitted, shapes):
    net, _ = fitted
    x = shapes.images[:5].clone().requires_grad_(True)
    values = net.features(x, ("scale", "pos_y"))
    (g,) = torch.autograd.grad(values["scale"].sum() + values["pos_y"].sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_bad_feature_networks_are_refused(shapes):
    with pytest.raises(InvalidRequest, match="classes"):
        feature_net.FeatureNetwork(["0", "1"], "shapes")
    with pytest.raises(InvalidRequest, match="kind"):
        feature_net.FeatureNetwork(["0", "1"], "faces")
    with pytest.raises(InvalidRequest, match="data"):
        feature_net.fit(shapes.images[:8], shapes.labels[:8], shapes.classes, shapes.factors[:8])
    with pytest.raises(InvalidRequest, match="true factors"):
        feature_net.fit(shapes.images, shapes.labels, shapes.classes, shapes.factors[:, :3])


def test_a_digits_network_learns_the_image_moments():
    digits = load_digits(16)
    net, quality = feature_net.fit(
        digits.images, digits.labels, digits.classes, steps=150, batch_size=128
    )
    assert net.kind == "moments" and net.names == FEATURES
    # held out: the last 10% of the digits, which fit never trained on
    assert quality["class_accuracy"] > 0.5  # chance: 0.1
    for name in ("thickness", "size", "pos_x", "pos_y"):
        assert quality[f"r2_{name}"] > 0.3, (name, quality)
    assert "exact_r2_pos_y" not in quality and "orientation_circular_corr" not in quality
    want = measure(digits.images[-180:])
    got = net.features(digits.images[-180:])
    assert torch.corrcoef(torch.stack([got["pos_y"], want["pos_y"]]))[0, 1] > 0.7


def test_a_digits_model_finds_with_its_network_and_measures_with_moments(tiny_model):
    artifact = Artifact.open(tiny_model.artifact.path)
    assert artifact.manifest.provenance["features"]["kind"] == "moments"
    discover, meter = feature_net.feature_sets(artifact)
    assert meter is MOMENTS and discover.names == FEATURES
    assert discover.defaults == MOMENTS.defaults == ("thickness", "slant", "size")
    images = load_digits(16).images[:5]
    net = feature_net.load(artifact)
    got = discover.measure(images, ("slant",))["slant"]
    assert torch.equal(got, net.features(images, ("slant",))["slant"])


def test_training_on_shapes_ships_the_feature_network(tmp_path):
    config = TrainConfig(
        data="shapes",
        n_data=1200,
        image_size=16,
        z_dim=8,
        g_channels=8,
        d_channels=8,
        steps=2,
        batch_size=8,
        eval_per_class=0,
        feature_steps=30,
        out=str(tmp_path / "run"),
    )
    artifact = Artifact.open(train(config, progress=False).artifact.path)
    assert feature_net.FEATURE_NET in artifact.manifest.files
    entry = artifact.manifest.provenance["features"]
    assert entry["names"] == list(feature_net.NAMES) and "r2_pos_y" in entry["held_out"]
    discover, meter = feature_net.feature_sets(artifact)
    assert discover.names == meter.names == feature_net.NAMES
    seven = make_shapes(7, 16, seed=5)  # batch 7: not a power of two
    images = seven.images
    net = feature_net.load(artifact)
    got = discover.measure(images, ("pos_x", "scale"))
    want = net.features(images, ("pos_x", "scale"))
    for name in ("pos_x", "scale"):
        assert torch.equal(got[name], want[name]) and not got[name].requires_grad
    exact = meter.measure(images, ("scale", "pos_y"), labels=seven.labels)
    assert torch.equal(exact["pos_y"], net.exact(images, seven.labels, ["pos_y"])["pos_y"])
    # the centroid is the position by construction: exact whatever the network learned
    torch.testing.assert_close(exact["pos_y"], seven.factors[:, 3], atol=5e-3, rtol=0)
    with pytest.raises(InvalidRequest, match="labels"):
        meter.measure(images, ("scale",))  # scale's gain is per class
    for reader in (discover, meter):
        with pytest.raises(InvalidRequest, match="images"):
            reader.measure(torch.rand(3, 1, 32, 32) * 2 - 1)  # the network reads 16x16
        with pytest.raises(InvalidRequest, match="thickness"):
            reader.fn("thickness")  # a digits feature: not measured here
    # without the network (feature_steps 0) the model falls back to image moments
    config.out, config.feature_steps = str(tmp_path / "plain"), 0
    plain = Artifact.open(train(config, progress=False).artifact.path)
    assert feature_net.FEATURE_NET not in plain.manifest.files
    assert feature_net.feature_sets(plain) == (MOMENTS, MOMENTS)


def test_feature_steps_is_validated(tmp_path):
    with pytest.raises(InvalidRequest, match="feature_steps"):
        train(TrainConfig(feature_steps=-1, out=str(tmp_path / "x")), progress=False)


def test_too_few_images_for_a_network_are_refused_before_training(tmp_path):
    config = TrainConfig(
        data="shapes", n_data=8, image_size=16, steps=1, feature_steps=10, out=str(tmp_path / "t")
    )
    with pytest.raises(InvalidRequest, match="--feature-steps 0") as e:
        train(config, progress=False)
    assert e.value.field == "feature_steps"
    assert not (tmp_path / "t" / "checkpoint.safetensors").exists()  # refused before step 1
