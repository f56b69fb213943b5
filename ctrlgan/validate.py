"""The checks every entry point shares (the Python API, the CLI, the server): a user value in,
a plain Python or numpy value out, or InvalidRequest naming the field.

Types are checked before anything is converted: numbers are reals (int, float and numpy's
integer and floating scalars; never bool, complex, str or bytes), sequences are lists, tuples,
ranges or 1-D numeric numpy arrays (never strings, bytes, dicts, sets or nested lists), and a
choice is a str. Magnitudes are bounded before anything is allocated, so that no request can
ask for unbounded memory or time. The limits, in one place:

    seeds                 ints in [0, 2**64) (the Philox contract's 64-bit seed)
    images per request    the Generator's ``max_batch`` (default 65,536; at most MAX_BATCH)
    steering alpha        |alpha| <= MAX_ALPHA = 1000 (directions are unit vectors in a space
                          of N(0, 1) noise: far beyond any useful step)
    truncation            0 < tau <= MAX_TRUNCATION = 1000 (noise never exceeds ~6.7)
    given noise z         finite, |z| <= MAX_Z = 1000 (seeded noise never exceeds ~6.7; the
                          triton backend's float16 latents overflow at 65504)
    class-mix weight s    [0, 1]
    noise()               z_dim <= MAX_Z_DIM = 4096, seeds x z_dim <= MAX_NOISE_VALUES (2**26,
                          256 MiB of float32)
    seed strings          at most MAX_SEED_STRING = 2**20 seeds ("0-15", "1,4,7-9")
    threads               0 (all cores) .. os.cpu_count()
    batch jobs            see runtime/jobs.py (images, shards, bytes per shard, disk space)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from ctrlgan.errors import InvalidRequest

MAX_SEED = 2**64  # exclusive
MAX_ALPHA = 1000.0
MAX_TRUNCATION = 1000.0
MAX_Z = 1000.0
MAX_BATCH = 1 << 20
MAX_Z_DIM = 4096
MAX_NOISE_VALUES = 1 << 26
MAX_SEED_STRING = 1 << 20


def is_int(x) -> bool:
    """An int or numpy integer scalar: not a bool, not a numpy timedelta."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_, np.timedelta64))


def is_real(x) -> bool:
    """An int, float or numpy integer or floating scalar: not bool, complex, str or bytes."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(
        x, (bool, np.bool_, np.timedelta64)
    )


def show(value) -> str:
    """A short description of a user value for a message (never megabytes of repr)."""
    if isinstance(value, (str, bytes, int, float, np.generic)) and not isinstance(value, bool):
        text = repr(value)
        return text if len(text) <= 40 else text[:37] + "..."
    if value is None or isinstance(value, bool):
        return repr(value)
    return f"a {type(value).__name__}"


def integer(value, field: str, lo: int | None = None, hi: int | None = None) -> int:
    """An int in [lo, hi] (either bound optional)."""
    if not is_int(value):
        raise InvalidRequest(field, f"must be an int, got {show(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        if hi is None:
            raise InvalidRequest(field, f"must be >= {lo}, got {v}")
        if lo is None:
            raise InvalidRequest(field, f"must be <= {hi}, got {v}")
        raise InvalidRequest(field, f"must be in {lo}..{hi}, got {v}")
    return v


def real(
    value,
    field: str,
    lo: float | None = None,
    hi: float | None = None,
    *,
    above: float | None = None,
) -> float:
    """A finite float in [lo, hi] (or > ``above``); huge ints are out of range, not errors."""
    if not is_real(value):
        raise InvalidRequest(field, f"must be a real number, got {show(value)}")
    try:
        v = float(value)
    except OverflowError:  # an int beyond float range, e.g. 10**400
        raise InvalidRequest(field, f"{show(value)} is out of range") from None
    if not math.isfinite(v):
        raise InvalidRequest(field, f"must be finite (no NaN or inf), got {v!r}")
    _check_range(v, field, lo, hi, above)
    return v


def _check_range(v: float, field: str, lo, hi, above) -> None:
    if above is not None and not v > above:
        bound = f"<= {hi:g}" if hi is not None else ""
        raise InvalidRequest(
            field, f"must be > {above:g}{' and ' + bound if bound else ''}, got {v!r}"
        )
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        if lo is not None and hi is not None:
            raise InvalidRequest(field, f"must lie in [{lo:g}, {hi:g}], got {v!r}")
        if lo is not None:
            raise InvalidRequest(field, f"must be >= {lo:g}, got {v!r}")
        raise InvalidRequest(field, f"must be <= {hi:g}, got {v!r}")


def choice(value, field: str, options: Sequence[str]) -> str:
    """One of ``options`` (a str; never an array, which would compare element-wise)."""
    if not isinstance(value, str) or value not in options:
        raise InvalidRequest(field, f"must be one of {', '.join(options)}, got {show(value)}")
    return value


def items(
    value, field: str, limit: int | None = None, what: str = "values", limit_name: str = "limit"
) -> list:
    """A flat sequence as a list: list, tuple, range or 1-D numpy array; at most ``limit`` items,
    counted before anything is copied (a range may be astronomically long)."""
    if isinstance(value, (str, bytes, bytearray, memoryview)):
        raise InvalidRequest(field, f"expected a list of {what}, got {show(value)}")
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise InvalidRequest(field, f"expected a 1-D array, got shape {value.shape}")
        n = value.size
    elif isinstance(value, (list, tuple, range)):
        try:
            n = len(value)
        except OverflowError:  # range(2**70)
            n = math.inf
        except Exception as e:  # a subclass whose __len__ fails
            raise InvalidRequest(field, f"cannot be read ({type(e).__name__})") from None
    else:
        raise InvalidRequest(field, f"expected a list of {what}, got {show(value)}")
    if limit is not None and n > limit:
        count = "more than 2**63" if n == math.inf else str(n)
        raise InvalidRequest(field, f"{count} {what} exceed the {limit_name} {limit}")
    if n == 0:
        raise InvalidRequest(field, "empty list")
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iuf" and value.dtype != object:
            raise InvalidRequest(field, f"expected {what}, got an array of {value.dtype}")
        return value.tolist()
    if type(value) in (list, tuple, range):
        return list(value)
    try:  # a subclass: its own iteration, which may lie about its length or fail
        out = list(value)
    except Exception as e:
        raise InvalidRequest(field, f"cannot be read ({type(e).__name__})") from None
    if len(out) != n:
        raise InvalidRequest(field, f"reports {n} items but holds {len(out)}")
    return out


def reals(
    value,
    field: str,
    *,
    bound: float,
    limit: int | None = None,
    length: int | None = None,
) -> np.ndarray:
    """A flat sequence of finite reals with |x| <= bound, as float64 [N] (N = ``length`` if
    given). Checked element by element: no nested lists, no complex, no strings."""
    if length is not None and limit is None:
        limit = length  # a longer sequence is refused before it is copied
    values = items(value, field, limit=limit, what="numbers")
    if length is not None and len(values) != length:
        raise InvalidRequest(field, f"expected {length} numbers, got {len(values)}")
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        out[i] = real(v, field, -bound, bound)
    return out


def threads(value, field: str = "threads") -> int:
    """A thread count: 0 (all cores) or 1 .. os.cpu_count()."""
    cores = os.cpu_count() or 1
    v = integer(value, field)
    if not 0 <= v <= cores:
        raise InvalidRequest(
            field, f"must be 0 (all cores) or 1..{cores} (this machine's cores), got {v}"
        )
    return v
