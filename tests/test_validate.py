"""The validation layer: every hostile input of the hardening audit is an InvalidRequest naming
its field, raised before any work; every limit is enforced before anything is allocated."""

import os

import numpy as np
import pytest

import ctrlgan
from ctrlgan import validate
from ctrlgan.errors import InvalidRequest


@pytest.fixture(scope="module")
def g():
    return ctrlgan.load("digits", backend="onnxruntime", max_batch=64)


def refused(field, call, *args, **kwargs):
    with pytest.raises(InvalidRequest) as info:
        call(*args, **kwargs)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(field)
    return str(info.value)


@pytest.mark.parametrize(
    "value", [1j, {}, object(), ("abc",), [1, [2]], "2", b"\x02", np.complex128(1), [1j] * 3]
)
def test_steer_values_of_the_wrong_kind(g, value):
    refused("steer.thickness", g.sample, classes=3, seeds=[1, 2, 3], steer={"thickness": value})


@pytest.mark.parametrize("huge", [10**400, -(10**400)])
def test_huge_ints_are_out_of_range_not_overflow(g, huge):
    refused("steer.thickness", g.sample, classes=3, seeds=[1], steer={"thickness": huge})
    refused("truncation", g.sample, classes=3, seeds=[1], truncation=huge)
    refused("classes", g.sample, classes=[(3, 8, huge)], seeds=[1])
    refused("truncation", g.interpolate, (1, 3), (2, 4), truncation=huge)
    refused("truncation", ctrlgan.noise, [0], 4, truncation=huge)
    refused("alphas", g.traverse, 1, 3, "thickness", alphas=[huge])


def test_complex_numbers_are_refused_everywhere(g):
    refused("truncation", g.sample, classes=3, seeds=[1], truncation=np.complex128(1))
    refused("truncation", g.sample, classes=3, seeds=[1], truncation=1 + 0j)
    refused("classes", g.sample, classes=[(3, 8, 0.5j)], seeds=[1])
    refused("alphas", g.traverse, 1, 3, "thickness", alphas=np.array([1j]))


@pytest.mark.parametrize(
    "verb, field", [("output", "output"), ("method", "method"), ("vary", "vary")]
)
def test_arrays_where_a_string_is_expected(g, verb, field):
    array = np.array(["float32", "uint8"])
    if verb == "output":
        refused(field, g.sample, classes=3, seeds=[1], output=array)
    else:
        refused(field, g.interpolate, (1, 3), (2, 4), **{verb: array})
    refused("backend", ctrlgan.load, "digits", backend=np.array(["torch"]))
    refused("device", ctrlgan.load, "digits", device=np.array(["cpu"]))


def test_noise_arguments():
    refused("seeds", ctrlgan.noise, seeds=None, z_dim=2)
    refused("z_dim", ctrlgan.noise, [0], 2**64)
    refused("z_dim", ctrlgan.noise, [0], 2**40)
    refused("z_dim", ctrlgan.noise, [0], 0)
    refused("z_dim", ctrlgan.noise, [0], 2.0)
    refused("seeds", ctrlgan.noise, range(10**9), 64)  # 64e9 values: refused before any
    refused("seeds", ctrlgan.noise, range(2**70), 4)  # len() itself would overflow
    refused("seeds", ctrlgan.noise, b"\x01\x02", 4)
    refused("seeds", ctrlgan.noise, np.array([0.5, 1.5]), 4)
    ok = ctrlgan.noise(range(validate.MAX_NOISE_VALUES // 4096), 4096)  # at the limit: fine
    assert ok.shape == (validate.MAX_NOISE_VALUES // 4096, 4096)


def test_bytes_are_not_lists_of_ints(g):
    refused("classes", g.sample, classes=b"\x03", seeds=[1])
    refused("seeds", g.sample, classes=3, seeds=b"\x01\x02")
    refused("classes", g.sample, classes=bytearray(b"\x03"), seeds=[1])


def test_seed_is_checked_even_when_seeds_are_given(g):
    refused("seed", g.sample, classes=3, seeds=[1], seed="garbage")
    refused("seed", g.sample, classes=3, seeds=[1], seed=-1)


def test_traverse_and_load_arguments(g):
    refused("alphas", g.traverse, 1, 3, "thickness", alphas=[1, [2]])
    refused("alphas", g.traverse, 1, 3, "thickness", alphas=[])
    refused("alphas", g.traverse, 1, 3, "thickness", alphas=range(10**12))
    refused("feature", g.traverse, 1, 3, np.array(["thickness"]))
    refused("seed", g.traverse, -1, 3, "thickness")
    refused("model", ctrlgan.load, 123)
    refused("model", ctrlgan.load, None)
    refused("model", ctrlgan.load, "")
    refused("model", ctrlgan.load, "a\0b")
    refused("model", ctrlgan.load, "x" * 5000)


def test_thread_limits():
    cores = os.cpu_count()
    refused("threads", ctrlgan.load, "digits", backend="onnxruntime", threads=-1)
    message = refused("threads", ctrlgan.load, "digits", backend="onnxruntime", threads=100000)
    assert f"1..{cores}" in message
    refused("threads", ctrlgan.load, "digits", backend="onnxruntime", threads=cores + 1)
    refused("threads", ctrlgan.load, "digits", backend="onnxruntime", threads=2.0)
    refused("max_batch", ctrlgan.load, "digits", max_batch=validate.MAX_BATCH + 1)
    g = ctrlgan.load("digits", backend="onnxruntime", threads=cores)
    assert g.sample(3, seeds=[1]).shape == (1, 1, 16, 16)


def test_limits_are_checked_before_anything_is_built(g):
    refused("seeds", g.sample, classes=3, seeds=range(2**70))
    refused("n", g.sample, classes=3, n=10**30)
    refused("classes", g.sample, classes=[3] * 65, seeds=list(range(65)))
    refused("steps", g.interpolate, (1, 3), (2, 4), steps=65)
    refused("alphas", g.traverse, 1, 3, "thickness", alphas=[0.0] * 65)


def test_primitives():
    assert validate.real(np.float32(0.5), "x", 0, 1) == 0.5
    assert validate.real(3, "x") == 3.0
    assert validate.integer(np.uint64(2**63), "x") == 2**63
    for bad in (True, np.bool_(True), 1j, "1", b"1", None, [1]):
        with pytest.raises(InvalidRequest, match="^x"):
            validate.real(bad, "x")
    for bad in (True, 1.0, "1", None, np.float64(1)):
        with pytest.raises(InvalidRequest, match="^x"):
            validate.integer(bad, "x")
    with pytest.raises(InvalidRequest, match="x: must lie in \\[0, 1\\]"):
        validate.real(1.5, "x", 0, 1)
    with pytest.raises(InvalidRequest, match="finite"):
        validate.real(float("nan"), "x")
    with pytest.raises(InvalidRequest, match="one of a, b"):
        validate.choice(np.array(["a"]), "x", ("a", "b"))
    assert validate.reals(np.arange(3), "x", bound=5).tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(InvalidRequest, match="1-D"):
        validate.reals(np.zeros((2, 2)), "x", bound=5)
    with pytest.raises(InvalidRequest, match="empty"):
        validate.items([], "x")
    with pytest.raises(InvalidRequest, match="more than 2\\*\\*63"):
        validate.items(range(2**70), "x", limit=10)


def test_valid_requests_still_work(g):
    """The strict types still take what users pass: numpy scalars and arrays of ints, floats
    and strings, ranges, tuples, seed strings."""
    a = g.sample(classes=np.array([3, 4]), seeds=np.array([1, 2], dtype=np.uint64))
    b = g.sample(classes=[np.int64(3), "4"], seeds=range(1, 3))
    c = g.sample(classes=np.array(["3", "4"]), seeds="1-2", truncation=np.float32(100))
    assert np.array_equal(a, b) and np.array_equal(a, c)
    d = g.sample(classes=3, seeds=[1, 2], steer={"thickness": np.array([0.0, 0.0])})
    assert np.array_equal(d[:1], a[:1])
    e = g.sample(classes=[(3, 8, np.float32(0.25))], seeds=(5,), steer={"slant": np.float64(1)})
    assert e.shape == (1, 1, 16, 16)
    f = g.traverse(np.uint64(5), np.int64(3), "size", alphas=np.linspace(-1, 1, 3))
    assert f.shape == (3, 1, 16, 16)


def test_image_helpers_refuse_what_they_cannot_draw(tmp_path, g):
    x = g.sample(classes=3, seeds=[1, 2])
    for bad in ("images", None, [[1]], np.array(["a"]), np.zeros((2, 2))):
        with pytest.raises(InvalidRequest, match="^images"):
            ctrlgan.to_uint8(bad)
    for kwargs, field in (({"nrow": 0}, "nrow"), ({"nrow": "8"}, "nrow"), ({"scale": 2.0}, "scale"),
                          ({"scale": 0}, "scale"), ({"padding": -1}, "padding")):  # fmt: skip
        refused(field, ctrlgan.save_grid, x, tmp_path / "g.png", **kwargs)
    refused("output", ctrlgan.save_grid, x, 123)
    refused("images", ctrlgan.save_grid, x[:0], tmp_path / "g.png")
    assert not list(tmp_path.iterdir())
    assert ctrlgan.save_grid(x, tmp_path / "g.png", nrow=np.int64(2)).is_file()


class _LyingList(list):
    def __len__(self):
        return 2**70


class _BrokenList(list):
    def __len__(self):
        raise RuntimeError("len boom")


class _Mix(tuple):
    def __len__(self):
        return 3


def test_sequences_that_lie_about_their_length(g):
    refused("steer.thickness", g.sample, classes=3, seeds=[1], steer={"thickness": _LyingList([1])})
    refused("start", g.interpolate, _LyingList([1, 3]), (2, 4))
    refused("seeds", g.sample, classes=3, seeds=_BrokenList([1]))
    refused("classes", g.sample, classes=[_Mix((3,))], seeds=[1])
    from collections import namedtuple

    Mix = namedtuple("Mix", "a b s")
    assert g.sample(classes=[Mix(3, 8, 0.5)], seeds=[1]).shape == (1, 1, 16, 16)


def test_large_inputs_are_refused_before_they_are_copied(g):
    import tracemalloc

    big = np.zeros(10**7, np.float32)  # 40 MB; a copy to a list would be ~400 MB
    tracemalloc.start()
    refused("steer.thickness", g.sample, classes=3, seeds=[1, 2], steer={"thickness": big})
    refused("seeds", g.sample, classes=3, seeds="1," * 2_000_000)
    refused("classes", g.sample, classes=np.array(["3"] * 100_000), seeds=[1])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 20e6, peak


def test_timedeltas_are_not_numbers(g):
    refused("seed", g.sample, classes=3, seed=np.timedelta64(3), n=1)
    refused("truncation", g.sample, classes=3, seeds=[1], truncation=np.timedelta64(1))
    refused("classes", g.sample, classes=np.timedelta64(3), seeds=[1])


def test_the_field_is_the_parameter_the_caller_used(g):
    refused("cls", g.traverse, 1, 99, "size")
    refused("cls", g.traverse, 1, [1, 2], "size")
    refused("generator", ctrlgan.BatchingGenerator, "digits")
    refused("artifact", ctrlgan.Generator, "digits")


def test_save_grid_writes_only_new_or_regular_files(tmp_path, g):
    x = g.sample(classes=3, seeds=[1, 2])
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    refused("output", ctrlgan.save_grid, x, fifo)
    refused("output", ctrlgan.save_grid, x, "/dev/null")
    assert fifo.is_fifo() and os.path.exists("/dev/null") and not os.path.isfile("/dev/null")
    refused("output", ctrlgan.save_grid, x, str(tmp_path / "a\0b.png"))
    refused("output", ctrlgan.save_grid, x, str(tmp_path / "\ud800.png"))

    class BytesPath:
        def __fspath__(self):
            return b"x.png"

    refused("output", ctrlgan.save_grid, x, BytesPath())
    refused("images", ctrlgan.save_grid, np.zeros((1, 5, 4, 4), np.float32), tmp_path / "c.png")
    refused("images", ctrlgan.save_grid, np.zeros((4096, 1, 1, 1)), tmp_path / "p.png", 64, 1, 1024)
    refused("images", ctrlgan.to_uint8, np.full((1, 1, 2, 2), np.nan, np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.png"]


def test_to_uint8_saturates_every_real_dtype_without_warnings():
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shape = (1, 1, 2, 2)
        for x in (np.full(shape, 1e300), np.full(shape, -np.inf, np.float32),
                  np.full(shape, 7, np.int64), np.full(shape, np.inf, np.longdouble)):  # fmt: skip
            out = ctrlgan.to_uint8(x)
            assert out.dtype == np.uint8 and out.shape == (1, 2, 2, 1)
            assert set(out.ravel().tolist()) <= {0, 255}
        bf16 = ctrlgan.to_uint8(torch.zeros(1, 1, 2, 2, dtype=torch.bfloat16))
        assert (bf16 == 128).all()
    refused("images", ctrlgan.to_uint8, torch.zeros(1, 1, 2, 2, device="meta"))
