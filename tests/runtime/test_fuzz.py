"""Property-based fuzzing of the public API on both CPU backends: whatever a caller passes to
``sample``, ``interpolate``, ``traverse``, ``noise`` or ``load``, the result is either an
InvalidRequest naming a field, or a valid image batch (float32, finite, in [-1, 1], one image
per request row). Nothing else may escape: no TypeError, ValueError, OverflowError or
MemoryError from deep inside, and no warning (numpy's ComplexWarning included).

Values are drawn from a mix of valid ones (so that accepted requests are exercised too) and
hostile ones: wrong types, huge and negative numbers, NaN, complex, bytes, nested lists,
astronomically long ranges, numpy scalars and arrays of every kind.
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ctrlgan
from ctrlgan.errors import BackendUnavailable, InvalidRequest

LIMIT = 16  # max_batch of the fuzzed generators: accepted requests stay cheap
EXAMPLES = 300
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

hostile = st.sampled_from(
    [
        None, True, False, 1j, np.complex128(1), 10**400, -(10**400), math.nan, math.inf,
        -math.inf, -1, 2**64, 2**64 - 1, 2**63, 0, 1, 3, 9, 10, 0.5, 1.5, -0.0, "3", "7", "x",
        "thickness", "", "0-3", "0-99999999", b"\x03", bytearray(b"\x01"), object(), {}, [],
        [1, [2]], ("abc",), (3, 8, 0.5), (3, 8, 2.0), (3, 8), range(3), range(2**70),
        np.float32(0.5), np.int64(3), np.uint64(2**63), np.bool_(True), np.array([1, 2]),
        np.array([0.5]), np.array(["3"]), np.array([[1]]), np.array(3), np.float64("nan"),
        "float32", "uint8", "pil", "torch", "lerp", "slerp", "both", "noise", "class",
        {"thickness": 1.0}, {"thickness": [1.0, 2.0]}, {"bogus": 1}, {"size": 1e9},
    ]
)  # fmt: skip
ints = st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 20))
floats = st.floats(allow_nan=True, allow_infinity=True)
scalar = st.one_of(hostile, ints, floats)
junk = st.one_of(
    scalar,
    st.lists(st.one_of(st.integers(0, 12), hostile), max_size=5),
    st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11), floats), max_size=3),
    st.dictionaries(st.sampled_from(["thickness", "slant", "size", "bogus"]), scalar, max_size=2),
)

# Valid values, in the forms users pass them
seed_value = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 99)).map(
    lambda v: v if v % 3 else np.uint64(v)
)
real = st.floats(-1000, 1000, allow_nan=False)
class_item = st.one_of(
    st.integers(0, 9),
    st.integers(0, 9).map(str),
    st.integers(0, 9).map(np.int64),
    st.tuples(st.integers(0, 9), st.integers(0, 9).map(str), st.floats(0, 1)),
)
truncation_value = st.one_of(st.none(), st.floats(0.01, 1000), st.integers(1, 5))


def corrupt(draw, kwargs: dict) -> dict:
    """Replace up to two arguments of a valid request by junk."""
    for name in draw(st.lists(st.sampled_from(sorted(kwargs)), max_size=2, unique=True)):
        kwargs[name] = draw(junk)
    return kwargs


@st.composite
def sample_requests(draw):
    k = draw(st.integers(1, LIMIT))
    one_class = draw(st.booleans())
    classes = draw(class_item) if one_class else draw(st.lists(class_item, min_size=k, max_size=k))
    kwargs = {"classes": classes, "seeds": None, "n": None, "seed": 0}
    form = draw(st.sampled_from(["list", "array", "range", "string", "n", "default"]))
    seeds = draw(st.lists(st.integers(0, 2**64 - 1), min_size=k, max_size=k))
    if form == "list":
        kwargs["seeds"] = seeds
    elif form == "array":
        kwargs["seeds"] = np.array(seeds, dtype=np.uint64)
    elif form in ("range", "string"):
        first = draw(st.integers(0, 2**40))
        kwargs["seeds"] = range(first, first + k) if form == "range" else f"{first}-{first + k - 1}"
    elif form == "n" and one_class:
        kwargs["n"], kwargs["seed"] = k, draw(st.integers(0, 2**64 - k))
    else:
        kwargs["seed"] = draw(seed_value)
    rows = k if (form != "default" or not one_class) else 1
    features = draw(st.lists(st.sampled_from(["thickness", "slant", "size"]), unique=True))
    kwargs["steer"] = {
        f: draw(st.one_of(real, st.lists(real, min_size=rows, max_size=rows))) for f in features
    }
    kwargs["truncation"] = draw(truncation_value)
    return corrupt(draw, kwargs)


@st.composite
def interpolate_requests(draw):
    point = st.tuples(seed_value, st.one_of(st.integers(0, 9), st.integers(0, 9).map(str)))
    kwargs = {
        "start": draw(point),
        "end": draw(point),
        "steps": draw(st.integers(2, LIMIT)),
        "method": draw(st.sampled_from(["lerp", "slerp"])),
        "vary": draw(st.sampled_from(["both", "noise", "class"])),
        "truncation": draw(truncation_value),
    }
    return corrupt(draw, kwargs)


@st.composite
def traverse_requests(draw):
    kwargs = {
        "seed": draw(seed_value),
        "cls": draw(class_item),
        "feature": draw(st.sampled_from(["thickness", "slant", "size"])),
        "alphas": draw(st.lists(real, min_size=1, max_size=LIMIT)),
        "truncation": draw(truncation_value),
    }
    return corrupt(draw, kwargs)


@st.composite
def noise_requests(draw):
    kwargs = {
        "seeds": draw(st.lists(seed_value, min_size=1, max_size=32)),
        "z_dim": draw(st.integers(1, 200)),
        "truncation": draw(truncation_value),
    }
    return corrupt(draw, kwargs)


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def g(request):
    return ctrlgan.load("digits", backend=request.param, max_batch=LIMIT)


def check(call, rows=None):
    """Run ``call``: an InvalidRequest, or a valid float32 image batch."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning (or any other) is a failure
        try:
            x = call()
        except InvalidRequest as e:
            assert e.field and str(e).startswith(e.field)
            return None
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert x.ndim == 4 and x.shape[1:] == (1, 16, 16) and 1 <= len(x) <= LIMIT
    if rows is not None:
        assert len(x) == rows
    assert np.isfinite(x).all() and x.min() >= -1.0 and x.max() <= 1.0
    return x


@FUZZ
@given(request=sample_requests())
def test_sample(g, request):
    check(lambda: g.sample(**request))


@FUZZ
@given(request=interpolate_requests())
def test_interpolate(g, request):
    x = check(lambda: g.interpolate(**request))
    if x is not None:
        assert len(x) == request["steps"]


@FUZZ
@given(request=traverse_requests())
def test_traverse(g, request):
    x = check(lambda: g.traverse(**request))
    if x is not None:
        assert len(x) == len(request["alphas"])


@FUZZ
@given(request=noise_requests())
def test_noise(request):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            z = ctrlgan.noise(**request)
        except InvalidRequest as e:
            assert e.field in ("seeds", "seed", "z_dim", "truncation")
            return
    assert z.dtype == np.float32 and z.ndim == 2 and z.shape[1] == request["z_dim"]
    if isinstance(request["seeds"], list):
        assert len(z) == len(request["seeds"])
    assert np.isfinite(z).all()
    if request["truncation"] is not None:
        assert np.abs(z).max() <= float(request["truncation"])


@settings(max_examples=40, deadline=None)
@given(
    name=st.one_of(st.just("digits"), hostile),
    backend=st.one_of(st.sampled_from(["auto", "torch", "onnxruntime"]), hostile),
    device=st.one_of(st.sampled_from([None, "cpu"]), hostile),
    max_batch=st.one_of(st.integers(1, LIMIT), scalar),
    threads=st.one_of(st.integers(0, 2), scalar),
)
def test_load(name, backend, device, max_batch, threads):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            g = ctrlgan.load(name, backend, device, max_batch=max_batch, threads=threads)
        except (InvalidRequest, BackendUnavailable):
            return
    if g.max_batch > LIMIT:  # a valid but large limit: sample within ours
        g.max_batch = LIMIT
    check(lambda: g.sample(3, seeds=[1]), rows=1)
