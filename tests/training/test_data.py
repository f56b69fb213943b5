"""Data sets: digits, procedural shapes with ground truth, and user data (folder, npz, IDX)."""

import gzip
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from ctrlgan.errors import DataError
from ctrlgan.training import data as D
from ctrlgan.training.data import (
    Dataset,
    load_dataset,
    load_digits,
    load_idx,
    load_image_folder,
    load_npz,
    make_shapes,
    resize_images,
)

# digits ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def _check_contract(ds: Dataset):
    assert ds.images.dtype == torch.float32 and ds.images.is_contiguous()
    assert ds.images.ndim == 4 and ds.images.shape[2] == ds.images.shape[3]
    assert ds.labels.dtype == torch.int64 and ds.labels.shape == (len(ds),)
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    assert ds.labels.min() >= 0 and ds.labels.max() < len(ds.classes)
    assert ds.image_shape == tuple(ds.images.shape[1:])


def test_digits_shape_range_and_labels(digits):
    _check_contract(digits)
    assert digits.images.shape == (1797, 1, 16, 16) and digits.name == "digits"
    assert digits.classes == [str(i) for i in range(10)]
    assert digits.images.min() == -1 and digits.images.max() > 0.99
    counts = torch.bincount(digits.labels, minlength=10)
    assert counts.min() >= 170 and counts.max() <= 190


def test_digits_at_native_size_are_the_scaled_originals():
    from sklearn.datasets import load_digits as sk_digits

    ds = load_digits(size=8)
    expected = torch.tensor(sk_digits().images, dtype=torch.float32)[:, None] / 8 - 1
    assert torch.equal(ds.images, expected)


@pytest.mark.parametrize("size", [7, 0, 16.0, "16", True, None])
def test_digits_bad_size(size):
    with pytest.raises(DataError) as e:
        load_digits(size)
    assert e.value.field == "size"


def test_resize_images_is_antialiased_and_clamped():
    x = torch.full((2, 3, 8, 8), -1.0)
    x[:, :, ::2] = 1.0  # stripes average out when downscaled with antialiasing
    out = resize_images(x, 4)
    assert out.shape == (2, 3, 4, 4) and out.is_contiguous()
    assert out.abs().max() < 0.5
    up = resize_images(torch.rand(1, 1, 5, 5) * 2 - 1, 17)
    assert up.shape == (1, 1, 17, 17) and up.min() >= -1 and up.max() <= 1


# shapes ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(n=800, size=32, seed=3)


def test_shapes_contract_and_factor_ranges(shapes):
    _check_contract(shapes)
    assert shapes.images.shape == (800, 1, 32, 32) and shapes.name == "shapes"
    assert shapes.classes == ["square", "ellipse", "heart", "triangle"]
    assert shapes.factor_names == ["scale", "orientation", "pos_x", "pos_y"]
    f = shapes.factors
    assert f.dtype == torch.float32 and f.shape == (800, 4)
    assert f[:, 0].min() >= 0.5 and f[:, 0].max() <= 1.0
    assert f[:, 1].min() >= 0 and f[:, 1].max() < 2 * math.pi
    assert f[:, 2:].min() >= 0.25 and f[:, 2:].max() <= 0.75
    # The ranges are used, not a corner of them, and every class appears.
    assert f[:, 0].min() < 0.52 and f[:, 0].max() > 0.98 and f[:, 1].max() > 6.0
    assert torch.bincount(shapes.labels, minlength=4).min() > 150
    # White on black: the background is exactly -1 and the interior exactly 1.
    assert (shapes.images == -1).float().mean() > 0.5
    assert (shapes.images == 1).any(dim=(1, 2, 3)).all()


def test_shapes_are_deterministic_by_seed():
    a, b = make_shapes(50, 16, seed=7), make_shapes(50, 16, seed=7)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.factors, b.factors)
    c = make_shapes(50, 16, seed=8)
    assert not torch.equal(a.factors, c.factors) and not torch.equal(a.images, c.images)


def _ink(ds):
    return (ds.images[:, 0].double().numpy() + 1) / 2


def test_shape_centroid_is_its_position(shapes):
    ink, f, size = _ink(shapes), shapes.factors.double().numpy(), 32
    centres = np.arange(size) + 0.5  # pixel centres
    mass = ink.sum(axis=(1, 2))
    cx = (ink.sum(axis=1) * centres).sum(axis=1) / mass
    cy = (ink.sum(axis=2) * centres).sum(axis=1) / mass
    for cls in range(4):
        sel = shapes.labels.numpy() == cls
        assert sel.sum() > 150
        assert np.abs(cx[sel] - f[sel, 2] * size).max() < 1.0, shapes.classes[cls]
        assert np.abs(cy[sel] - f[sel, 3] * size).max() < 1.0, shapes.classes[cls]
    # Tighter on average: the centre is the area centroid, not e.g. a bounding-box centre.
    assert np.abs(cx - f[:, 2] * size).mean() < 0.1
    assert np.abs(cy - f[:, 3] * size).mean() < 0.1


def test_shapes_fit_within_their_radius(shapes):
    ink, f, size = _ink(shapes), shapes.factors.double().numpy(), 32
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    dist = np.hypot(xx - f[:, 2, None, None] * size, yy - f[:, 3, None, None] * size)
    radius = f[:, 0] * size / 4
    # Any inked pixel's centre is within R plus half a pixel diagonal of the shape's centre.
    assert (np.where(ink > 0, dist, 0) <= radius[:, None, None] + math.sqrt(0.5)).all()
    # And the shapes do reach out towards R (they are not drawn much smaller).
    reach = np.where(ink > 0.5, dist, 0).max(axis=(1, 2)) / radius
    assert reach.min() > 0.5 and np.median(reach) > 0.85


def test_shapes_are_antialiased(shapes):
    x = shapes.images
    edge = (x > -1) & (x < 1)
    assert edge.any(dim=(1, 2, 3)).all()
    assert len(torch.unique(x[edge])) >= 10  # many coverage levels, not a threshold


def test_ink_area_grows_with_scale(shapes):
    area = _ink(shapes).sum(axis=(1, 2))
    scale = shapes.factors[:, 0].numpy()
    for cls in range(4):
        sel = shapes.labels.numpy() == cls
        assert np.corrcoef(scale[sel], area[sel])[0, 1] > 0.9
        # Area goes as scale^2: 0.5 -> 1.0 is about 4x.
        small, large = area[sel & (scale < 0.55)], area[sel & (scale > 0.95)]
        assert 3.0 < large.mean() / small.mean() < 5.0


@pytest.mark.parametrize("cls", [0, 1, 2, 3])
def test_orientation_turns_the_shape_counter_clockwise(cls):
    # Centred on a pixel corner, the sample grid is symmetric under quarter turns.
    def render(theta):
        args = [np.array([v], dtype=np.float32) for v in (0.9, theta, 0.5, 0.5)]
        return D._render(np.array([cls]), *args, 32)[0]

    base, turned = render(0.3), render(0.3 + math.pi / 2)
    # np.rot90 turns an array counter-clockwise as displayed (row 0 at the top).
    assert np.abs(turned - np.rot90(base)).mean() < 2e-3
    if cls in (2, 3):  # heart and triangle have no quarter-turn symmetry
        assert np.abs(turned - base).mean() > 0.02
        assert np.abs(render(1.3) - base).mean() > 0.02


def test_heart_points_down_and_triangle_points_up_at_orientation_zero():
    def render(cls):
        args = [np.array([v], dtype=np.float32) for v in (1.0, 0.0, 0.5, 0.5)]
        return D._render(np.array([cls]), *args, 32)[0]

    heart, triangle = render(2), render(3)
    assert heart[10:16].sum() > heart[16:22].sum()  # lobes above the centroid
    assert triangle[10:16].sum() < triangle[16:22].sum()  # wide base below


def test_correlated_factors():
    ds = make_shapes(5000, 16, seed=1, correlate=[("scale", "pos_y", 0.8)])
    f = ds.factors.double().numpy()
    r = np.corrcoef(f.T)
    assert abs(r[0, 3] - 0.8) < 0.05
    for i, j in [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]:
        assert abs(r[i, j]) < 0.06, (i, j)
    # The marginals stay uniform over their ranges.
    assert f[:, 0].min() < 0.51 and f[:, 0].max() > 0.99
    assert abs(f[:, 3].mean() - 0.5) < 0.01 and abs(f[:, 3].std() - 0.5 / math.sqrt(12)) < 0.01
    # Exactly rho, not the latent normals' correlation (0.786 for 0.8, -0.483 for -0.5).
    pairs = [("scale", "pos_y", 0.8), ("orientation", "pos_x", -0.5)]
    big = make_shapes(40000, 16, seed=0, correlate=pairs).factors.double().numpy()
    assert abs(np.corrcoef(big[:, 0], big[:, 3])[0, 1] - 0.8) < 0.006
    assert abs(np.corrcoef(big[:, 1], big[:, 2])[0, 1] + 0.5) < 0.012
    # Labels are drawn the same way whatever the correlation.
    assert torch.equal(ds.labels[:2000], make_shapes(2000, 16, seed=1).labels)


@pytest.mark.parametrize(
    "correlate",
    [
        [("scale", "colour", 0.5)],
        [("shape", "scale", 0.5)],
        [("scale", "scale", 0.5)],
        [("scale", "pos_y", 1.0)],
        [("scale", "pos_y", -1.2)],
        [("scale", "pos_y", float("nan"))],
        [("scale", "pos_y", "0.5")],
        [("scale", "pos_y")],
        [("scale", "pos_y", 0.5), ("pos_y", "scale", 0.2)],
        [("scale", "pos_x", 0.9), ("scale", "pos_y", 0.9), ("pos_x", "pos_y", -0.9)],
        "scale",
        42,
    ],
)
def test_bad_correlate(correlate):
    with pytest.raises(DataError) as e:
        make_shapes(10, 16, correlate=correlate)
    assert e.value.field == "correlate"


def test_bad_correlate_messages():
    with pytest.raises(DataError, match="scale, orientation, pos_x, pos_y"):
        make_shapes(10, 16, correlate=[("colour", "scale", 0.5)])
    with pytest.raises(DataError, match="categorical"):
        make_shapes(10, 16, correlate=[("shape", "scale", 0.5)])


@pytest.mark.parametrize(("kwargs", "name"), [({"n": 0}, "n"), ({"size": 15}, "size")])
def test_shapes_bad_arguments(kwargs, name):
    with pytest.raises(DataError) as e:
        make_shapes(**{"n": 5, "size": 16, **kwargs})
    assert e.value.field == name


# image folders -----------------------------------------------------------------------------


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _gray(seed, size=6):
    a = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    a[0, 0], a[0, 1] = 0, 255
    return a


def test_image_folder_grayscale_round_trip(tmp_path):
    imgs = {"cat": [_gray(0), _gray(1)], "ant": [_gray(2)]}
    for cls, arrays in imgs.items():
        for i, a in enumerate(arrays):
            _save(tmp_path / cls / f"{i}.PNG", a)
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path)
    _check_contract(ds)
    assert ds.classes == ["ant", "cat"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.image_shape == (1, 6, 6) and ds.name == str(tmp_path)
    expected = np.stack([imgs["ant"][0], imgs["cat"][0], imgs["cat"][1]])[:, None] / 255 * 2 - 1
    np.testing.assert_allclose(ds.images.numpy(), expected, atol=1e-6)
    assert ds.images[0, 0, 0, 0] == -1.0 and ds.images[0, 0, 0, 1] == 1.0


def test_image_folder_channels(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    _save(tmp_path / "a" / "x.png", _gray(0))
    _save(tmp_path / "b" / "y.jpg", rgb)
    _save(tmp_path / "b" / "z.bmp", rgb)
    ds = load_image_folder(tmp_path)  # one colour image makes it RGB
    assert ds.image_shape == (3, 6, 6)
    gray = ds.images[0].numpy()
    np.testing.assert_allclose(gray, (_gray(0)[None].repeat(3, 0) / 255) * 2 - 1, atol=1e-6)
    expected = rgb.transpose(2, 0, 1) / 255 * 2 - 1
    np.testing.assert_allclose(ds.images[2].numpy(), expected, atol=1e-6)  # bmp is lossless
    forced = load_image_folder(tmp_path, channels=1)
    assert forced.image_shape == (1, 6, 6)
    luma = np.asarray(Image.fromarray(rgb).convert("L")) / 255 * 2 - 1
    np.testing.assert_allclose(forced.images[2, 0].numpy(), luma, atol=1e-6)
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path, channels=2)
    assert e.value.field == "channels"


def test_image_folder_sixteen_bit(tmp_path):
    a = (np.arange(16).reshape(4, 4) * 4369).astype(np.uint16)  # 0 .. 65535
    _save(tmp_path / "a" / "x.png", a)
    ds = load_image_folder(tmp_path)
    assert ds.image_shape == (1, 4, 4)
    np.testing.assert_allclose(ds.images[0, 0].numpy(), a / 65535 * 2 - 1, atol=1e-6)


def test_image_folder_sizes(tmp_path):
    _save(tmp_path / "a" / "0.png", _gray(0, 8))
    _save(tmp_path / "a" / "1.png", _gray(1, 8))
    _save(tmp_path / "b" / "2.png", _gray(2, 12))
    with pytest.raises(DataError, match="size=") as e:
        load_image_folder(tmp_path)
    assert e.value.field == str(tmp_path / "b" / "2.png")
    ds = load_image_folder(tmp_path, size=8)
    assert ds.images.shape == (3, 1, 8, 8)
    # Images already at the size are untouched; the others are resized.
    np.testing.assert_allclose(ds.images[0, 0].numpy(), _gray(0, 8) / 255 * 2 - 1, atol=1e-6)
    big = torch.tensor(_gray(2, 12) / 255 * 2 - 1, dtype=torch.float32)[None, None]
    np.testing.assert_allclose(ds.images[2], resize_images(big, 8)[0], atol=1e-5)


def test_image_folder_non_square(tmp_path):
    _save(tmp_path / "a" / "0.png", np.zeros((4, 6), np.uint8))
    with pytest.raises(DataError, match="square") as e:
        load_image_folder(tmp_path)
    assert e.value.field == str(tmp_path / "a" / "0.png")
    assert load_image_folder(tmp_path, size=5).image_shape == (1, 5, 5)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_image_folder(tmp_path / "nope")
    assert e.value.field == str(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        load_image_folder(tmp_path / "file.txt")
    with pytest.raises(DataError, match="sub-folders") as e:
        load_image_folder(tmp_path)
    assert e.value.field == str(tmp_path)

    _save(tmp_path / "full" / "0.png", _gray(0))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(DataError, match="'empty'") as e:
        load_image_folder(tmp_path)
    assert e.value.field == str(tmp_path / "empty")

    (tmp_path / "empty" / "x.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="unreadable") as e:
        load_image_folder(tmp_path)
    assert e.value.field == str(tmp_path / "empty" / "x.png")

    png = (tmp_path / "full" / "0.png").read_bytes()
    (tmp_path / "empty" / "x.png").write_bytes(png[: len(png) // 2])  # truncated
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    assert e.value.field == str(tmp_path / "empty" / "x.png")


def test_single_class_folder(tmp_path):
    _save(tmp_path / "only" / "0.png", _gray(0))
    ds = load_image_folder(tmp_path)
    assert ds.classes == ["only"] and ds.labels.tolist() == [0]


# npz ---------------------------------------------------------------------------------------


def _npz(path, **arrays):
    with open(path, "wb") as f:  # a file object: savez would append .npz to "d.NPZ"
        np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("layout", ["NHW", "NHWC1", "NHWC3", "NCHW1", "NCHW3"])
def test_npz_uint8_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    c = 3 if layout.endswith("3") else 1
    nchw = rng.integers(0, 256, (5, c, 7, 7), dtype=np.uint8)
    nchw[0, 0, 0, :2] = 0, 255
    stored = {"NHW": nchw[:, 0], "NCHW1": nchw, "NCHW3": nchw}.get(
        layout, nchw.transpose(0, 2, 3, 1)
    )
    labels = np.array([0, 2, 1, 2, 0])
    ds = load_npz(_npz(tmp_path / "d.npz", images=stored, labels=labels))
    _check_contract(ds)
    assert ds.image_shape == (c, 7, 7) and ds.classes == ["0", "1", "2"]
    assert ds.labels.tolist() == labels.tolist() and ds.name == str(tmp_path / "d.npz")
    np.testing.assert_allclose(ds.images.numpy(), nchw / 255 * 2 - 1, atol=1e-6)
    assert ds.images[0, 0, 0, 0] == -1.0 and ds.images[0, 0, 0, 1] == 1.0


def test_npz_float_classes_and_resize(tmp_path):
    x = np.random.default_rng(0).random((4, 8, 8, 3))
    path = _npz(tmp_path / "d.npz", images=x, labels=np.array([1, 0, 1, 1]), classes=["a", "b"])
    ds = load_npz(path)
    assert ds.classes == ["a", "b"] and ds.image_shape == (3, 8, 8)
    np.testing.assert_allclose(ds.images.numpy(), x.transpose(0, 3, 1, 2) * 2 - 1, atol=1e-6)
    assert load_npz(path, size=4).image_shape == (3, 4, 4)
    # More class names than labels in use is fine.
    path = _npz(tmp_path / "e.npz", images=x, labels=np.zeros(4, int), classes=["a", "b", "c"])
    assert load_npz(path).classes == ["a", "b", "c"]


_GOOD = {"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, 1, 0])}


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"images": None}, "'images'"),
        ({"labels": None}, "'labels'"),
        ({"labels": np.array([0, 1])}, "3 images but 2 labels"),
        ({"labels": np.array([0, -1, 0])}, "labels"),
        ({"labels": np.array([0, 1, 2]), "classes": np.array(["a", "b"])}, "labels"),
        ({"labels": np.array([0.0, 1.0, 0.0])}, "labels"),
        ({"labels": np.array([[0, 1, 0]])}, "labels"),
        ({"images": np.full((3, 4, 4), 1.5)}, r"\[0, 1\]"),
        ({"images": np.full((3, 4, 4), np.nan)}, "finite"),
        ({"images": np.zeros((3, 4, 4), np.int32)}, "uint8 or float"),
        ({"images": np.zeros((3, 16), np.uint8)}, "images"),
        ({"images": np.zeros((3, 5, 4, 4), np.uint8)}, "images"),
        ({"images": np.zeros((3, 4, 6), np.uint8)}, "square"),
        ({"images": np.zeros((0, 4, 4), np.uint8), "labels": np.zeros(0, int)}, "no images"),
        ({"classes": np.array(["a", "a"])}, "duplicate"),
        ({"classes": np.array([1, 2])}, "classes"),
        ({"classes": np.array([{"a": 1}], dtype=object)}, "classes"),
    ],
)
def test_npz_errors(tmp_path, change, match):
    arrays = {k: v for k, v in {**_GOOD, **change}.items() if v is not None}
    path = _npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=match) as e:
        load_npz(path)
    assert e.value.field == str(path)


def test_npz_unreadable(tmp_path):
    for name, content in [("garbage.npz", b"not a zip at all"), ("empty.npz", b"")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as e:
            load_npz(tmp_path / name)
        assert e.value.field == str(tmp_path / name)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(DataError, match="not an .npz"):
        load_npz(tmp_path / "single.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(DataError) as e:
        load_npz(_npz(tmp_path / "d.npz", **_GOOD), size=2)
    assert e.value.field == "size"


# IDX ---------------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


@pytest.fixture
def idx_arrays():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 5, 5), dtype=np.uint8)
    images[0, 0, :2] = 0, 255
    return images, np.array([3, 0, 1, 3, 2, 0], np.uint8)


def _write_idx(folder, images, labels, compress=False, prefix="train"):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, array, magic in [("images-idx3", images, 0x803), ("labels-idx1", labels, 0x801)]:
        raw = _idx_bytes(array, magic)
        path = folder / f"{prefix}-{name}-ubyte{'.gz' if compress else ''}"
        path.write_bytes(gzip.compress(raw) if compress else raw)
        out.append(path)
    return out


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, idx_arrays, compress):
    images, labels = idx_arrays
    ip, lp = _write_idx(tmp_path, images, labels, compress)
    ds = load_idx(ip, lp)
    _check_contract(ds)
    assert ds.image_shape == (1, 5, 5) and ds.classes == ["0", "1", "2", "3"]
    assert ds.labels.tolist() == labels.tolist()
    np.testing.assert_allclose(ds.images[:, 0].numpy(), images / 255 * 2 - 1, atol=1e-6)
    assert ds.images[0, 0, 0, 0] == -1.0 and ds.images[0, 0, 0, 1] == 1.0
    assert load_idx(ip, lp, size=10).image_shape == (1, 10, 10)


def test_idx_gzip_detected_by_magic_not_extension(tmp_path, idx_arrays):
    images, labels = idx_arrays
    ip, lp = _write_idx(tmp_path, images, labels, compress=True)
    ip.rename(tmp_path / "imgs.bin")
    ds = load_idx(tmp_path / "imgs.bin", lp)
    assert len(ds) == 6


def test_idx_errors(tmp_path, idx_arrays):
    images, labels = idx_arrays
    ip, lp = _write_idx(tmp_path, images, labels)
    with pytest.raises(DataError, match="magic") as e:
        load_idx(lp, ip)  # swapped
    assert e.value.field == str(lp)
    raw = ip.read_bytes()
    ip.write_bytes(raw[:-1])
    with pytest.raises(DataError, match="header") as e:
        load_idx(ip, lp)
    assert e.value.field == str(ip)
    ip.write_bytes(raw + b"\0")
    with pytest.raises(DataError, match="header"):
        load_idx(ip, lp)
    ip.write_bytes(raw[:10])  # the header itself is cut
    with pytest.raises(DataError, match="truncated"):
        load_idx(ip, lp)
    ip.write_bytes(gzip.compress(raw)[:-12])  # broken gzip stream
    with pytest.raises(DataError) as e:
        load_idx(ip, lp)
    assert e.value.field == str(ip)
    ip.write_bytes(raw)
    lp.write_bytes(_idx_bytes(labels[:5], 0x801))
    with pytest.raises(DataError, match="5 labels for 6 images") as e:
        load_idx(ip, lp)
    assert e.value.field == str(lp)
    with pytest.raises(DataError, match="does not exist"):
        load_idx(tmp_path / "missing", lp)


# load_dataset ------------------------------------------------------------------------------


def test_load_dataset_builtin(digits):
    ds = load_dataset("digits")
    assert torch.equal(ds.images, digits.images)
    assert load_dataset("digits", size=8).image_shape == (1, 8, 8)
    s = load_dataset("shapes", size=16, n=12, seed=4, correlate=[("scale", "pos_x", 0.5)])
    assert len(s) == 12 and s.image_shape == (1, 16, 16)
    assert torch.equal(s.images, make_shapes(12, 16, 4, [("scale", "pos_x", 0.5)]).images)


def test_load_dataset_shapes_defaults(monkeypatch):
    calls = []
    monkeypatch.setattr(D, "make_shapes", lambda *a: calls.append(a))
    load_dataset("shapes")
    assert calls == [(20000, 32, 0, ())]


def test_load_dataset_user_data(tmp_path, idx_arrays):
    path = _npz(tmp_path / "d.NPZ", **_GOOD)
    assert load_dataset(str(path)).name == str(path)
    assert load_dataset(path, size=8).image_shape == (1, 8, 8)

    images, labels = idx_arrays
    _write_idx(tmp_path / "mnist", images, labels, compress=True)
    ds = load_dataset(str(tmp_path / "mnist"), n=3, seed=5)  # n and seed are for shapes
    assert len(ds) == 6 and ds.classes == ["0", "1", "2", "3"]
    _write_idx(tmp_path / "mnist", images, labels, prefix="t10k")
    with pytest.raises(DataError, match="exactly one"):
        load_dataset(str(tmp_path / "mnist"))

    _save(tmp_path / "folder" / "a" / "0.png", _gray(0))
    _save(tmp_path / "folder" / "b" / "0.png", _gray(1))
    ds = load_dataset(str(tmp_path / "folder"))
    assert ds.classes == ["a", "b"] and len(ds) == 2


@pytest.mark.parametrize("spec", ["mnst", "Digits", "", "missing.npz", "image.png"])
def test_load_dataset_unknown(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    _save(tmp_path / "image.png", _gray(0))
    with pytest.raises(DataError, match="unknown data set") as e:
        load_dataset(spec)
    assert e.value.field == "data"


def test_load_dataset_correlate_only_for_shapes(tmp_path):
    path = _npz(tmp_path / "d.npz", **_GOOD)
    for spec in ["digits", str(path)]:
        with pytest.raises(DataError) as e:
            load_dataset(spec, correlate=[("scale", "pos_y", 0.5)])
        assert e.value.field == "correlate"
