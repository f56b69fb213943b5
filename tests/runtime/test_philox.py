"""Host noise (the C loop, or the torch fallback) against the Philox reference."""

import numpy as np
import pytest

from ctrlgan.runtime import philox


def test_the_c_implementation_is_built():
    # make install builds it; a machine without a C compiler would fall back (and fail here)
    assert philox.IMPLEMENTATION == "c"


@pytest.mark.parametrize("z_dim", [1, 13, 64, 100])
@pytest.mark.parametrize("truncation", [None, 0.5, 1.0, 2.5])
def test_matches_the_reference(z_dim, truncation):
    seeds = np.random.default_rng().integers(0, 2**64 - 1, 257, dtype=np.uint64, endpoint=True)
    seeds[:3] = [0, 2**63, 2**64 - 1]  # the edges of the 64-bit key
    got = philox.normal(seeds, z_dim, truncation)
    want = philox.reference_normal(seeds, z_dim, truncation)
    assert got.dtype == np.float32 and got.shape == (257, z_dim)
    # one wrong bit anywhere in the integer stage would change values by O(1)
    assert np.abs(got - want).max() <= 1e-6
    if truncation is not None:
        assert np.abs(got).max() <= np.float32(truncation)


def test_rows_do_not_depend_on_the_batch():
    seeds = np.random.default_rng().integers(0, 2**63, 50, dtype=np.uint64)
    full = philox.normal(seeds, 64, 1.0)
    for i in (0, 17, 49):
        assert np.array_equal(philox.normal(seeds[i : i + 1], 64, 1.0)[0], full[i])


def test_empty_batch():
    assert philox.normal(np.zeros(0, np.uint64), 8).shape == (0, 8)


def test_the_c_function_refuses_mismatched_buffers():
    from ctrlgan import _philox

    seeds = np.zeros(2, np.uint64)
    for z_dim, out in [(4, bytearray(4 * 4)), (2**62, bytearray(0)), (0, bytearray(0))]:
        with pytest.raises(ValueError, match="buffer sizes"):
            _philox.normal(seeds, z_dim, 0, 0.0, 4, out)
