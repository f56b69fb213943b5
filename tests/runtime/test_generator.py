import math

import numpy as np
import pytest
import torch

import ctrlgan
from ctrlgan.errors import BackendUnavailable, InvalidRequest
from ctrlgan.kernels.reference import noise as ref_noise


@pytest.fixture(scope="module")
def g(tiny_model):
    return ctrlgan.load(tiny_model.artifact.path, backend="torch")


def _expected(g, classes, seeds):
    """The sample defined directly: Philox noise, one-hot concat, generator."""
    net = g.artifact.build_generator()
    z = ref_noise(torch.tensor(seeds), g.z_dim)
    with torch.no_grad():
        return net(z, torch.tensor(classes)).numpy()


def test_metadata(g):
    assert g.classes == [str(i) for i in range(10)]
    assert g.z_dim == 12 and g.image_shape == (1, 16, 16)
    assert g.backend == "torch" and g.features == []


def test_sample_matches_the_definition(g):
    seeds = [int(s) for s in np.random.default_rng().integers(0, 2**62, size=5)]
    classes = [3, 3, 7, 0, 9]
    x = g.sample(classes=classes, seeds=seeds)
    assert x.dtype == np.float32 and x.shape == (5, 1, 16, 16)
    np.testing.assert_allclose(x, _expected(g, classes, seeds), rtol=0, atol=1e-6)


def test_seeds_from_n_and_seed(g):
    a = g.sample(classes=3, n=16, seed=0)
    b = g.sample(classes=[3] * 16, seeds=range(16))
    assert a.shape == (16, 1, 16, 16)
    np.testing.assert_array_equal(a, b)
    one = g.sample(classes=3, seeds=[5])
    assert np.array_equal(one[0], a[5])  # batch 1 is bit-identical to its row in a batch


def test_class_names_and_mixes(g):
    by_name = g.sample(classes=["3", "7"], seeds=[1, 2])
    by_index = g.sample(classes=[3, 7], seeds=[1, 2])
    np.testing.assert_array_equal(by_name, by_index)
    ends = g.sample(classes=[(3, 8, 0.0), (3, 8, 1.0)], seeds=[5, 5])
    np.testing.assert_allclose(ends[0], g.sample(classes=3, seeds=[5])[0], atol=1e-6)
    np.testing.assert_allclose(ends[1], g.sample(classes=8, seeds=[5])[0], atol=1e-6)
    mid = g.sample(classes=[(3, 8, 0.5)], seeds=[5])
    assert not np.allclose(mid, ends[0]) and not np.allclose(mid, ends[1])


def test_truncation_changes_only_large_noise(g):
    x = g.sample(classes=[1, 2, 3], seeds=[1, 2, 3], truncation=1.5)
    expected_z = ref_noise(torch.tensor([1, 2, 3]), g.z_dim, truncation=1.5)
    net = g.artifact.build_generator()
    with torch.no_grad():
        expected = net(expected_z, torch.tensor([1, 2, 3])).numpy()
    np.testing.assert_allclose(x, expected, atol=1e-6)
    loose = g.sample(classes=1, seeds=[1], truncation=100.0)  # nothing to truncate
    np.testing.assert_array_equal(loose, g.sample(classes=1, seeds=[1]))


def test_large_request_is_chunked_identically(g):
    seeds = list(range(1030))  # more than one chunk, not a power of two
    x = g.sample(classes=[s % 10 for s in seeds], seeds=seeds)
    tail = g.sample(classes=[s % 10 for s in seeds[1020:]], seeds=seeds[1020:])
    assert np.array_equal(x[1020:], tail)


def test_noise_api():
    z = ctrlgan.noise([0, 1, 2**64 - 1], z_dim=7)
    assert z.dtype == np.float32 and z.shape == (3, 7)
    np.testing.assert_allclose(z, ref_noise(torch.tensor([0, 1, -1]), 7).numpy(), atol=1e-6)
    with pytest.raises(InvalidRequest, match="z_dim"):
        ctrlgan.noise([0], z_dim=0)
    with pytest.raises(InvalidRequest, match="seeds"):
        ctrlgan.noise([-1], z_dim=4)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"classes": 10, "seeds": [0]}, "classes"),
        ({"classes": "ten", "seeds": [0]}, "classes"),
        ({"classes": [], "seeds": []}, "classes"),
        ({"classes": None, "n": 2}, "classes"),
        ({"classes": 1.5, "seeds": [0]}, "classes"),
        ({"classes": [(1, 2, math.nan)], "seeds": [0]}, "classes"),
        ({"classes": [(1, 2, 1.5)], "seeds": [0]}, "classes"),
        ({"classes": [(1, 2)], "seeds": [0]}, "classes"),
        ({"classes": [1, 2], "seeds": [0]}, "seeds"),
        ({"classes": 1, "seeds": [-1]}, "seeds"),
        ({"classes": 1, "seeds": [2**64]}, "seeds"),
        ({"classes": 1, "seeds": [1.0]}, "seeds"),
        ({"classes": 1, "seeds": [0], "n": 3}, "n"),
        ({"classes": 1, "n": 0}, "n"),
        ({"classes": 1, "n": 2, "seed": -5}, "seed"),
        ({"classes": 1, "seeds": [0], "truncation": math.inf}, "truncation"),
        ({"classes": 1, "seeds": [0], "truncation": 0}, "truncation"),
        ({"classes": 1, "seeds": [0], "steer": {"thickness": 1.0}}, "steer"),
    ],
)
def test_bad_requests_name_the_field(g, kwargs, field):
    with pytest.raises(InvalidRequest) as e:
        g.sample(**kwargs)
    assert e.value.field == field
    assert str(e.value).startswith(field)


def test_batch_limit(tiny_model):
    g = ctrlgan.load(tiny_model.artifact.path, max_batch=4)
    assert g.sample(classes=1, n=4).shape[0] == 4
    with pytest.raises(InvalidRequest, match="batch limit"):
        g.sample(classes=1, n=5)
    with pytest.raises(InvalidRequest, match="batch limit"):
        g.sample(classes=1, seeds=range(5))
    # refused before any array is built: a huge request fails at once, not after allocating
    with pytest.raises(InvalidRequest, match="batch limit") as e:
        g.sample(classes=1, n=10**12)
    assert e.value.field == "n"


def test_bad_backend_and_device(tiny_model):
    with pytest.raises(InvalidRequest, match="backend"):
        ctrlgan.load(tiny_model.artifact.path, backend="tensorflow")
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable):
            ctrlgan.load(tiny_model.artifact.path, device="cuda")


def test_images_helpers(tmp_path):
    from PIL import Image

    x = np.random.default_rng().uniform(-1, 1, size=(5, 1, 3, 4)).astype(np.float32)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -1.0, 1.0
    u = ctrlgan.to_uint8(x)
    assert u.shape == (5, 3, 4, 1) and u.dtype == np.uint8
    assert u[0, 0, 0, 0] == 0 and u[0, 0, 1, 0] == 255
    np.testing.assert_array_equal(u[..., 0], np.round((x[:, 0] + 1) * 127.5).astype(np.uint8))
    path = ctrlgan.save_grid(x, tmp_path / "g.png", nrow=2, scale=3)
    img = np.asarray(Image.open(path))
    assert img.shape == (3 * (3 * (3 + 2) + 2), 3 * (2 * (4 + 2) + 2))  # 3 rows, 2 columns, padded
    with pytest.raises(InvalidRequest, match="output"):
        ctrlgan.save_grid(x, tmp_path / "missing" / "g.png")
