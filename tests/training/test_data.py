import gzip
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ctrlgan.errors import DataError
from ctrlgan.training.data import (
    SHAPE_FACTORS,
    SHAPES,
    load_dataset,
    load_digits,
    load_idx,
    load_image_folder,
    load_npz,
    make_shapes,
)


def centroids(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intensity centroid (x, y) in continuous pixel coordinates (pixel centres at i + 0.5)."""
    x = (images[:, 0] + 1) / 2
    c = torch.arange(x.shape[-1], dtype=torch.float32) + 0.5
    mass = x.sum(dim=(1, 2))
    return (x.sum(1) * c).sum(1) / mass, (x.sum(2) * c).sum(1) / mass


# digits -------------------------------------------------------------------------------------


def test_digits():
    d = load_digits()
    assert d.images.shape == (1797, 1, 16, 16) and d.images.dtype == torch.float32
    assert d.labels.dtype == torch.int64 and d.classes == [str(i) for i in range(10)]
    assert d.images.min() >= -1 and d.images.max() <= 1
    assert d.images.min() < -0.99 and d.images.max() > 0.9
    counts = torch.bincount(d.labels, minlength=10)
    assert counts.min() >= 170
    from sklearn.datasets import load_digits as sk

    raw = torch.tensor(sk().images, dtype=torch.float32)[:, None] / 8 - 1
    assert torch.equal(load_digits(8).images, raw)  # size 8 is the original, scaled
    with pytest.raises(DataError) as e:
        load_digits(4)
    assert e.value.field == "size"


# shapes -------------------------------------------------------------------------------------


def test_shapes_determinism_and_layout():
    a, b = make_shapes(40, seed=3), make_shapes(40, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.images, make_shapes(40, seed=4).images)
    assert a.images.shape == (40, 1, 32, 32) and a.factors.shape == (40, 4)
    assert a.classes == SHAPES and a.factor_names == SHAPE_FACTORS
    for name, (lo, hi) in {
        "scale": (0.5, 1),
        "orientation": (0, 2 * math.pi),
        "pos_x": (0.25, 0.75),
        "pos_y": (0.25, 0.75),
    }.items():
        f = a.factors[:, SHAPE_FACTORS.index(name)]
        assert f.min() >= lo and f.max() <= hi


def test_shape_centroid_is_its_position_within_a_pixel():
    d = make_shapes(400, size=32, seed=int(np.random.default_rng().integers(1 << 30)))
    cx, cy = centroids(d.images)
    ex, ey = d.factors[:, 2] * 32, d.factors[:, 3] * 32
    for k in range(4):
        sel = d.labels == k
        assert sel.sum() > 50
        assert (cx - ex)[sel].abs().max() < 1.0, SHAPES[k]
        assert (cy - ey)[sel].abs().max() < 1.0, SHAPES[k]


def test_shapes_are_antialiased_and_scale_sets_area():
    d = make_shapes(300, size=32, seed=1)
    x = (d.images + 1) / 2
    assert ((x > 0.05) & (x < 0.95)).sum() > 1000  # edge pixels between fore- and background
    area = x.sum(dim=(1, 2, 3))
    for k in range(4):
        sel = d.labels == k
        r = np.corrcoef(d.factors[sel, 0] ** 2, area[sel])[0, 1]
        assert r > 0.95, SHAPES[k]


@pytest.mark.parametrize("shape", ["heart", "triangle", "ellipse"])
def test_orientation_changes_the_image(shape):
    d = make_shapes(400, size=32, seed=2)
    k = SHAPES.index(shape)
    sel = (d.labels == k).nonzero().flatten()
    # the two most differently oriented samples of this class, centred on one another
    o = d.factors[sel, 1]
    i, j = sel[o.argmin()], sel[o.argmax()]
    assert (d.images[i] != d.images[j]).any()
    rendered = make_shapes(400, size=32, seed=2)
    assert torch.equal(rendered.images[i], d.images[i])


def test_correlated_factors():
    d = make_shapes(5000, size=16, seed=0, correlate=[("scale", "pos_y", 0.8)])
    f = d.factors.numpy()
    rho = np.corrcoef(f[:, 0], f[:, 3])[0, 1]
    assert abs(rho - 0.8) <= 0.05
    assert abs(np.corrcoef(f[:, 0], f[:, 2])[0, 1]) < 0.05
    assert abs(np.corrcoef(f[:, 1], f[:, 3])[0, 1]) < 0.05
    negative = make_shapes(5000, size=16, correlate=[("pos_x", "pos_y", -0.5)]).factors.numpy()
    assert abs(np.corrcoef(negative[:, 2], negative[:, 3])[0, 1] + 0.5) <= 0.05


@pytest.mark.parametrize(
    "correlate",
    [
        [("scale", "size", 0.5)],
        [("shape", "scale", 0.5)],
        [("scale", "scale", 0.5)],
        [("scale", "pos_y", 1.0)],
        [("scale", "pos_y", math.nan)],
        [("scale", "pos_y")],
        [("scale", "pos_x", 0.95), ("scale", "pos_y", 0.95), ("pos_x", "pos_y", -0.95)],
    ],
)
def test_bad_correlations(correlate):
    with pytest.raises(DataError) as e:
        make_shapes(10, correlate=correlate)
    assert e.value.field == "correlate"


def test_bad_shape_arguments():
    with pytest.raises(DataError) as e:
        make_shapes(0)
    assert e.value.field == "n"
    with pytest.raises(DataError) as e:
        make_shapes(5, size=8)
    assert e.value.field == "size"


# image folders ------------------------------------------------------------------------------


def _write(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def test_image_folder_grayscale_round_trip(tmp_path):
    rng = np.random.default_rng()
    a = rng.integers(0, 256, size=(12, 12), dtype=np.uint8)
    a[0, 0], a[0, 1] = 0, 255
    _write(tmp_path / "cat" / "1.png", a)
    _write(tmp_path / "cat" / "2.png", 255 - a)
    _write(tmp_path / "dog" / "x.png", a.T.copy())
    d = load_image_folder(tmp_path)
    assert d.classes == ["cat", "dog"] and d.labels.tolist() == [0, 0, 1]
    assert d.images.shape == (3, 1, 12, 12)
    expected = torch.from_numpy(a.astype(np.float32) / 255 * 2 - 1)
    torch.testing.assert_close(d.images[0, 0], expected)
    assert d.images[0, 0, 0, 0] == -1 and d.images[0, 0, 0, 1] == 1
    assert load_dataset(str(tmp_path)).labels.tolist() == [0, 0, 1]


def test_image_folder_rgb_channels_and_resize(tmp_path):
    rng = np.random.default_rng()
    _write(tmp_path / "a" / "1.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    _write(tmp_path / "b" / "1.png", rng.integers(0, 256, (10, 10), dtype=np.uint8))
    assert load_image_folder(tmp_path).images.shape == (2, 3, 10, 10)
    assert load_image_folder(tmp_path, channels=1).images.shape == (2, 1, 10, 10)
    _write(tmp_path / "b" / "2.png", rng.integers(0, 256, (14, 9), dtype=np.uint8))
    with pytest.raises(DataError, match="2.png.*size="):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=16).images.shape == (3, 3, 16, 16)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty.*no images"):
        load_image_folder(tmp_path)
    (tmp_path / "empty" / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="bad.png.*unreadable"):
        load_image_folder(tmp_path)


# npz ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["NHW", "NHWC", "NCHW"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng()
    base = rng.integers(0, 256, size=(5, 3, 8, 8), dtype=np.uint8)  # N C H W
    images = {"NHW": base[:, 0], "NHWC": base.transpose(0, 2, 3, 1), "NCHW": base}[layout]
    labels = np.array([0, 1, 2, 1, 0])
    np.savez(tmp_path / "d.npz", images=images, labels=labels, classes=np.array(["a", "b", "c"]))
    d = load_npz(tmp_path / "d.npz")
    expected = base[:, :1] if layout == "NHW" else base
    torch.testing.assert_close(d.images, torch.from_numpy(expected / 255 * 2 - 1).float())
    assert d.classes == ["a", "b", "c"] and d.labels.tolist() == labels.tolist()


def test_npz_float_and_default_classes(tmp_path):
    images = np.random.default_rng().uniform(0, 1, size=(4, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "f.npz", images=images, labels=np.array([0, 3, 1, 3]))
    d = load_dataset(str(tmp_path / "f.npz"), size=16)
    assert d.classes == ["0", "1", "2", "3"] and d.images.shape == (4, 1, 16, 16)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"labels": np.zeros(2, int)}, "images.*missing"),
        ({"images": np.zeros((2, 4, 4), np.uint8)}, "labels.*missing"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(2, int)}, "3 images but 2"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -1])}, "labels"),
        ({"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0.0, 1.0])}, "labels"),
        ({"images": np.full((2, 4, 4), 2.0), "labels": np.zeros(2, int)}, "within"),
        ({"images": np.full((2, 4, 4), np.nan), "labels": np.zeros(2, int)}, "finite"),
        ({"images": np.zeros((2, 4, 5), np.uint8), "labels": np.zeros(2, int)}, "square"),
        ({"images": np.zeros((2, 4), np.uint8), "labels": np.zeros(2, int)}, "images"),
        (
            {
                "images": np.zeros((2, 4, 4), np.uint8),
                "labels": np.array([0, 2]),
                "classes": np.array(["a", "b"]),
            },
            "labels",
        ),
    ],
)
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_npz_not_a_zip(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="x.npz"):
        load_npz(tmp_path / "x.npz")


# IDX ----------------------------------------------------------------------------------------


def _idx(path, array, magic, compress=False):
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng()
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7).astype(np.uint8)
    labels[0] = 9
    _idx(tmp_path / "train-images-idx3-ubyte.gz", images, 0x803, compress)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, 0x801, compress)
    d = load_dataset(str(tmp_path))
    assert d.images.shape == (7, 1, 28, 28) and d.classes == [str(i) for i in range(10)]
    torch.testing.assert_close(d.images[:, 0], torch.from_numpy(images / 255 * 2 - 1).float())
    assert d.labels.tolist() == labels.tolist()


def test_idx_errors(tmp_path):
    images = np.zeros((3, 4, 4), np.uint8)
    _idx(tmp_path / "i", images, 0x803)
    _idx(tmp_path / "l", np.zeros(2, np.uint8), 0x801)
    with pytest.raises(DataError, match="2 labels for 3 images"):
        load_idx(tmp_path / "i", tmp_path / "l")
    with pytest.raises(DataError, match="magic"):
        load_idx(tmp_path / "l", tmp_path / "i")
    (tmp_path / "t").write_bytes((tmp_path / "i").read_bytes()[:-3])
    with pytest.raises(DataError, match="header says"):
        load_idx(tmp_path / "t", tmp_path / "l")
    with pytest.raises(DataError, match="does not exist"):
        load_idx(tmp_path / "missing", tmp_path / "l")


def test_unknown_spec():
    with pytest.raises(DataError) as e:
        load_dataset("imagenet")
    assert e.value.field == "data"
    with pytest.raises(DataError) as e:
        load_dataset("digits", correlate=[("scale", "pos_y", 0.5)])
    assert e.value.field == "correlate"
