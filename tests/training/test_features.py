import numpy as np
import pytest
import torch

from ctrlgan.errors import InvalidRequest
from ctrlgan.training.features import FEATURES, feature_fn, measure


def blank(size=16, batch=1):
    return -torch.ones(batch, 1, size, size)


def bar(width: int, shear: float = 0.0, x0: int = 7, size: int = 16) -> torch.Tensor:
    """A vertical bar of ``width`` columns from row 2 to 13, sheared: at row r its left edge
    is at x0 + shear * (center - r) (positive shear: the top leans right)."""
    x = blank(size)
    for r in range(2, 14):
        left = round(x0 + shear * (7.5 - r))
        x[0, 0, r, left : left + width] = 1.0
    return x


def reference(image: np.ndarray) -> dict[str, float]:
    """The module docstring's formulas, one image, written out with loops."""
    w = ((image + 1) / 2).clip(0, 1).mean(axis=0)
    h, wd = w.shape
    m = cx = cy = 0.0
    for i in range(h):
        for j in range(wd):
            m += w[i, j]
            cx += w[i, j] * j / (wd - 1)
            cy += w[i, j] * i / (h - 1)
    cx, cy = cx / m, cy / m
    mu20 = mu02 = mu11 = 0.0
    for i in range(h):
        for j in range(wd):
            u, v = j / (wd - 1) - cx, i / (h - 1) - cy
            mu20 += w[i, j] * u * u / m
            mu02 += w[i, j] * v * v / m
            mu11 += w[i, j] * u * v / m
    return {
        "thickness": m / (h * wd),
        "slant": -mu11 / mu02,
        "size": np.sqrt(mu20 + mu02),
        "pos_x": cx,
        "pos_y": cy,
    }


@pytest.mark.parametrize("shape", [(3, 1, 16, 16), (2, 3, 9, 12)])
def test_measure_matches_the_written_out_formulas(shape):
    x = torch.rand(shape) * 2 - 1
    got = measure(x)
    assert list(got) == list(FEATURES)
    for b in range(shape[0]):
        want = reference(x[b].double().numpy())
        for name in FEATURES:
            assert got[name][b].item() == pytest.approx(want[name], rel=1e-4, abs=1e-5), name


def test_thicker_stroke_has_larger_thickness():
    t = [measure(bar(w), ["thickness"])["thickness"].item() for w in (1, 2, 3)]
    assert t[0] < t[1] < t[2]


def test_sheared_bar_has_the_expected_slant_sign():
    upright, right, left = (measure(bar(2, s), ["slant"])["slant"].item() for s in (0, 0.5, -0.5))
    assert abs(upright) < 1e-3
    assert right > 0.2 and left < -0.2
    assert right == pytest.approx(-left, rel=1e-3)


def test_shifted_blob_moves_the_centroid():
    def blob(r, c):
        x = blank()
        x[0, 0, r : r + 3, c : c + 3] = 1.0
        return measure(x, ["pos_x", "pos_y"])

    a, b, c = blob(6, 2), blob(6, 10), blob(11, 2)
    assert b["pos_x"] > a["pos_x"] and b["pos_y"] == pytest.approx(a["pos_y"].item())
    assert c["pos_y"] > a["pos_y"] and c["pos_x"] == pytest.approx(a["pos_x"].item())
    assert a["pos_x"].item() == pytest.approx(3 / 15)  # centre column 3 of 0..15


def test_bigger_square_has_larger_size():
    small, big = blank(), blank()
    small[0, 0, 6:10, 6:10] = 1.0
    big[0, 0, 3:13, 3:13] = 1.0
    assert measure(big, ["size"])["size"] > measure(small, ["size"])["size"]


def test_blank_image_and_numpy_input():
    values = measure(blank(batch=2).numpy())
    assert all(torch.isfinite(v).all() for v in values.values())
    assert values["thickness"].tolist() == [0.0, 0.0]
    fn = feature_fn("slant,thickness")
    assert list(fn(blank())) == ["slant", "thickness"]


def test_bad_input_names_the_field():
    with pytest.raises(InvalidRequest) as e:
        measure(blank(), ["thickness", "beard"])
    assert e.value.field == "features" and "beard" in str(e.value)
    with pytest.raises(InvalidRequest, match="features"):
        feature_fn([])
    with pytest.raises(InvalidRequest) as e:
        measure(torch.zeros(16, 16))
    assert e.value.field == "images"
