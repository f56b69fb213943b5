"""Validation of sampling requests: user values in, checked arrays out, or InvalidRequest.

Nothing here touches a backend, so a bad request is rejected before any work starts. The value
checks and their limits are validate.py's; this module knows what a request is made of.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ctrlgan import validate
from ctrlgan.errors import InvalidRequest
from ctrlgan.validate import MAX_ALPHA, MAX_SEED, MAX_TRUNCATION, MAX_Z, is_int

__all__ = [
    "MAX_ALPHA", "MAX_SEED", "ClassSpec", "Rows", "parse_classes", "parse_seeds", "parse_z",
]  # fmt: skip


@dataclass(slots=True)
class Rows:
    """A validated request, one entry per image: what every backend consumes.

    Noise z_a from ``seeds`` (and z_b from ``seeds_b`` when ``t`` is given, interpolated by
    ``method``), or given noise rows ``z`` instead of seeds (then ``seeds`` is None, and there
    is no truncation and no interpolation); steered by ``alpha`` [N, K]; class embedding from
    class_a, class_b and s.
    """

    seeds: np.ndarray | None  # uint64 [N]; None with z
    class_a: np.ndarray  # int64 [N]
    class_b: np.ndarray  # int64 [N]
    s: np.ndarray  # float32 [N]
    alpha: np.ndarray  # float32 [N, K]
    truncation: float | None = None
    seeds_b: np.ndarray | None = None  # uint64 [N], with t
    t: np.ndarray | None = None  # float32 [N]
    method: str = "lerp"
    z: np.ndarray | None = None  # float32 [N, Z], C-contiguous: given noise rows

    def __len__(self) -> int:
        return len(self.class_a)

    @property
    def key(self) -> tuple:
        """Rows with equal keys can share one backend call (see ``concat``)."""
        return (
            self.truncation,
            self.t is not None,
            self.method if self.t is not None else None,
            self.z is not None,
        )

    def slice(self, start: int, stop: int) -> Rows:
        cut = lambda a: None if a is None else a[start:stop]
        return Rows(
            cut(self.seeds), self.class_a[start:stop], self.class_b[start:stop],
            self.s[start:stop], self.alpha[start:stop], self.truncation,
            cut(self.seeds_b), cut(self.t), self.method, cut(self.z),
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        if len({p.key for p in parts}) != 1:
            raise ValueError(
                "rows with different truncation, interpolation or noise source cannot be joined"
            )
        first = parts[0]
        cat = lambda name: (
            None if getattr(first, name) is None
            else np.concatenate([getattr(p, name) for p in parts])
        )  # fmt: skip
        return Rows(
            cat("seeds"), cat("class_a"), cat("class_b"), cat("s"), cat("alpha"),
            first.truncation, cat("seeds_b"), cat("t"), first.method, cat("z"),
        )  # fmt: skip


@dataclass
class ClassSpec:
    """Per-row class embedding inputs: y = (1 - s) e(class_a) + s e(class_b)."""

    class_a: np.ndarray  # int64 [B]
    class_b: np.ndarray  # int64 [B]
    s: np.ndarray  # float32 [B]


def class_index(value, names: Sequence[str], field: str = "classes") -> int:
    """A class given by index or by name -> its index."""
    if is_int(value):
        if not 0 <= int(value) < len(names):
            raise InvalidRequest(field, f"class {value} out of range 0..{len(names) - 1}")
        return int(value)
    if isinstance(value, str):
        if value in names:
            return list(names).index(value)
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise InvalidRequest(field, f"unknown class {shown!r}; known: {', '.join(names)}")
    raise InvalidRequest(field, f"a class is an int index or a name, got {validate.show(value)}")


def parse_classes(
    classes, names: Sequence[str], limit: int | None = None
) -> tuple[ClassSpec, bool]:
    """Classes -> (ClassSpec, is_scalar). Items: index, name, or a mix (a, b, s), s in [0, 1].
    A list of more than ``limit`` items is refused before it is read."""
    if classes is None:
        raise InvalidRequest("classes", "required: a class, or a list with one per image")
    # Fast path (the common request): plain int indices in range.
    if type(classes) is int and 0 <= classes < len(names):
        a = np.array([classes], np.int64)
        return ClassSpec(a, a, np.zeros(1, np.float32)), True
    if (
        type(classes) is list
        and 0 < len(classes) <= (limit or len(classes))
        and all(type(c) is int for c in classes)
        and min(classes) >= 0
        and max(classes) < len(names)
    ):
        a = np.array(classes, np.int64)
        return ClassSpec(a, a, np.zeros(len(a), np.float32)), False  # rows are never mutated
    scalar = is_int(classes) or isinstance(classes, (str, tuple))
    if scalar:
        entries = [classes]
    elif isinstance(classes, np.ndarray) and classes.dtype.kind == "U" and classes.ndim == 1:
        if limit is not None and classes.size > limit:
            raise InvalidRequest(
                "classes", f"{classes.size} classes exceed the batch limit {limit}"
            )
        entries = validate.items(classes.astype(object), "classes", limit, "classes", "batch limit")
    else:
        entries = validate.items(classes, "classes", limit, "classes", "batch limit")
    a, b, s = [], [], []
    for item in entries:
        if isinstance(item, tuple):
            if type(item) is not tuple:  # a subclass, e.g. a namedtuple: its plain values
                item = tuple(validate.items(item, "classes", 3, "values"))
            if len(item) != 3:
                raise InvalidRequest(
                    "classes", f"a class mix is (class_a, class_b, s), got {len(item)} items"
                )
            ca, cb = class_index(item[0], names), class_index(item[1], names)
            mix = validate.real(item[2], "classes", 0.0, 1.0)
            a.append(ca), b.append(cb), s.append(mix)
        else:
            c = class_index(item, names)
            a.append(c), b.append(c), s.append(0.0)
    spec = ClassSpec(np.array(a, np.int64), np.array(b, np.int64), np.array(s, np.float32))
    return spec, scalar


def parse_seeds(
    seeds, n: int | None, seed: int, rows: int | None, limit: int | None = None
) -> np.ndarray:
    """Seeds as uint64 [B]. ``seeds`` (list, range, array, string) wins; else ``n`` seeds from
    ``seed``; else one seed per class row (``rows``) from ``seed``. More than ``limit`` seeds is
    refused before anything is built."""
    if not is_int(seed) or not 0 <= int(seed) < MAX_SEED:
        raise InvalidRequest("seed", f"must be an int in [0, 2**64), got {validate.show(seed)}")
    if seeds is not None:
        if n is not None:
            raise InvalidRequest("n", "give either seeds or n, not both")
        # Fast path: a short list of plain ints in range.
        if (
            type(seeds) is list
            and 0 < len(seeds) <= (limit or len(seeds))
            and all(type(v) is int and 0 <= v < MAX_SEED for v in seeds)
        ):
            return np.array(seeds, dtype=np.uint64)
        if is_int(seeds):
            seeds = [seeds]
        elif isinstance(seeds, str):
            seeds = parse_seed_string(seeds)
        elif isinstance(seeds, np.ndarray) and seeds.dtype.kind not in "iuO":
            raise InvalidRequest("seeds", f"expected integer seeds, got an array of {seeds.dtype}")
        values = validate.items(seeds, "seeds", limit, "images", "batch limit")
        for v in values:
            if not is_int(v):
                raise InvalidRequest("seeds", f"seeds are ints, got {validate.show(v)}")
            if not 0 <= int(v) < MAX_SEED:
                raise InvalidRequest("seeds", f"seed {v} out of range [0, 2**64)")
        return np.array([int(v) for v in values], dtype=np.uint64)
    if n is not None:
        count = validate.integer(n, "n", lo=1)
        if limit is not None and count > limit:
            raise InvalidRequest("n", f"{count} images exceed the batch limit {limit}")
    else:
        count = 1 if rows is None else rows
    if int(seed) + count > MAX_SEED:
        raise InvalidRequest(
            "seed", f"seeds {seed}..{seed}+{count - 1} run past 2**64 - 1: lower the first seed"
        )
    return np.arange(count, dtype=np.uint64) + np.uint64(int(seed))


def parse_z(z, z_dim: int, limit: int | None = None, field: str = "z") -> np.ndarray:
    """Given noise rows -> float32 [B, z_dim], C-contiguous: a copy, so that the caller may
    change its array while the request waits in a queue.

    Accepted: a numpy array or a torch tensor of a floating dtype (float16, float32, float64,
    bfloat16; cast to float32), or a list of B rows of z_dim real numbers. Integer, bool,
    complex and object arrays are refused, not cast: noise is real-valued, and an integer
    array here is most likely seeds or classes given to the wrong argument. The shape is
    checked before anything is copied (rank 2, 1 <= B <= ``limit``, z_dim columns), the values
    after the cast (finite, |z| <= MAX_Z). torch is not imported: a tensor can only come from
    a process that already imported it.
    """
    expected = f"noise rows [B, {z_dim}]"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(z, torch.Tensor):
        shape, dtype = tuple(z.shape), str(z.dtype).removeprefix("torch.")
        floating = z.is_floating_point() and z.layout == torch.strided
    elif isinstance(z, np.ndarray):
        shape, dtype, floating = z.shape, str(z.dtype), z.dtype.kind == "f"
    elif isinstance(z, (list, tuple)):
        shape, dtype, floating = _list_shape(z, z_dim, limit, field), "float64", True
    else:
        raise InvalidRequest(
            field, f"expected {expected} (a float32 numpy array), got {validate.show(z)}"
        )
    if len(shape) != 2:
        hint = f" (one image: shape (1, {z_dim}), e.g. z[None])" if len(shape) == 1 else ""
        raise InvalidRequest(field, f"expected {expected}, got shape {shape}{hint}")
    if shape[0] == 0:
        raise InvalidRequest(field, f"expected {expected} with B >= 1, got shape {shape}")
    _check_row_count(shape[0], limit, field)
    if shape[1] != z_dim:
        raise InvalidRequest(
            field, f"expected {expected}: rows of this model's z_dim {z_dim}, got shape {shape}"
        )
    if not floating:
        raise InvalidRequest(
            field, f"expected floating-point {expected} (float32), got an array of {dtype}"
        )
    try:
        with np.errstate(over="ignore"):  # float64 beyond float32's range: inf, refused below
            if torch is not None and isinstance(z, torch.Tensor):
                z = z.detach().to(device="cpu", dtype=torch.float32).numpy()
            out = np.array(z, dtype=np.float32, order="C")  # always a copy
    except Exception as e:  # a tensor on a device that cannot be read, an exotic subclass
        raise InvalidRequest(field, f"cannot be read as float32 ({type(e).__name__})") from None
    bad = ~np.isfinite(out)
    if bad.any():
        b, j = np.argwhere(bad)[0]
        raise InvalidRequest(
            field,
            f"must be finite, got z[{b}, {j}] = {out[b, j]} as float32 "
            f"({int(bad.sum())} value(s) NaN or inf)",
        )
    big = np.abs(out) > MAX_Z
    if big.any():
        b, j = np.argwhere(big)[0]
        raise InvalidRequest(
            field, f"values must lie in [-{MAX_Z:g}, {MAX_Z:g}], got z[{b}, {j}] = {out[b, j]}"
        )
    return out


def _check_row_count(n: int, limit: int | None, field: str) -> None:
    if limit is not None and n > limit:
        raise InvalidRequest(field, f"{n} noise rows (images) exceed the batch limit {limit}")


def _list_shape(rows, z_dim: int, limit: int | None, field: str) -> tuple[int, ...]:
    """The shape of a list of rows of reals, checked row by row (counted before it is read)."""
    n = len(rows)
    _check_row_count(n, limit, field)
    if n == 0 or not isinstance(rows[0], (list, tuple)):
        return (n,)  # parse_z names what is wrong with it
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != z_dim:
            got = f"{len(row)} values" if isinstance(row, (list, tuple)) else validate.show(row)
            raise InvalidRequest(field, f"row {i}: expected {z_dim} numbers, got {got}")
        for v in row:
            if not validate.is_real(v):
                raise InvalidRequest(field, f"row {i}: expected numbers, got {validate.show(v)}")
            if isinstance(v, int) and abs(v) > MAX_Z:  # also keeps 10**400 out of float()
                raise InvalidRequest(
                    field,
                    f"row {i}: values must lie in [-{MAX_Z:g}, {MAX_Z:g}], got {validate.show(v)}",
                )
    return (n, z_dim)


def parse_seed_string(text: str, limit: int = validate.MAX_SEED_STRING) -> list[int]:
    """'0-15' or '1,4,7-9' (StyleGAN's --seeds) -> a list of at most ``limit`` ints (counted
    before they are built)."""
    out: list[int] = []
    shown = text if len(text) <= 40 else text[:37] + "..."
    limit = min(limit, validate.MAX_SEED_STRING)
    if text.count(",") >= limit:  # counted before anything is split
        raise InvalidRequest("seeds", f"{shown!r} names more than {limit} seeds")
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise InvalidRequest(
                "seeds", f"expected e.g. '0-15' or '1,4,7-9', got {shown!r}"
            ) from None
        if last < first:
            raise InvalidRequest("seeds", f"empty range {part.strip()[:40]!r} in {shown!r}")
        if len(out) + last - first >= limit:
            raise InvalidRequest("seeds", f"{shown!r} names more than {limit} seeds")
        out.extend(range(first, last + 1))
    return out


def parse_truncation(truncation, field: str = "truncation") -> float | None:
    """None (no truncation) or tau in (0, MAX_TRUNCATION]."""
    if truncation is None:
        return None
    return validate.real(truncation, field, hi=MAX_TRUNCATION, above=0.0)


def parse_steer(steer, features: Sequence[str], rows: int) -> np.ndarray:
    """{feature: alpha or [alpha per row]} -> float32 [B, K] step sizes along each direction."""
    alpha = np.zeros((rows, len(features)), dtype=np.float32)
    if steer is None:
        return alpha
    if not isinstance(steer, Mapping):
        raise InvalidRequest(
            "steer", f"expected a dict of feature -> alpha, got {validate.show(steer)}"
        )
    for name, value in steer.items():
        if not isinstance(name, str) or name not in features:
            known = ", ".join(features) if features else "none: this model has no direction table"
            raise InvalidRequest("steer", f"unknown feature {validate.show(name)}; known: {known}")
        field = f"steer.{name}"
        if validate.is_real(value) or (isinstance(value, np.ndarray) and value.ndim == 0):
            column = validate.real(
                value.item() if isinstance(value, np.ndarray) else value,
                field, -MAX_ALPHA, MAX_ALPHA,
            )  # fmt: skip
        elif isinstance(value, (list, tuple, np.ndarray)):
            column = validate.reals(value, field, bound=MAX_ALPHA, length=rows)
        else:
            raise InvalidRequest(
                field, f"must be a number or {rows} numbers, got {validate.show(value)}"
            )
        alpha[:, list(features).index(name)] = column
    return alpha


# Text forms (the CLI's options, the server's query strings) ---------------------------------
def int_list(text: str, field: str) -> list[int]:
    """'3', '0-9', '1,4,7' or '0-3,8' -> a list of ints (at most MAX_LIST of them)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        try:
            if sep and lo:
                first, last = int(lo), int(hi)
                if last < first:
                    raise ValueError
                if len(out) + last - first >= MAX_LIST:
                    raise InvalidRequest(field, f"{text[:40]!r} names more than {MAX_LIST} items")
                out.extend(range(first, last + 1))
            else:
                out.append(int(part))
        except InvalidRequest:
            raise
        except ValueError:
            shown = text if len(text) <= 40 else text[:37] + "..."
            raise InvalidRequest(field, f"expected N, N-M or a comma list, got {shown!r}") from None
    return out


MAX_LIST = 100_000


def class_spec(text: str, names: list[str], field: str = "class") -> list[int]:
    """--class: 'all', indices and ranges ('3', '0-9', '1,4'), or class names ('heart,square')."""
    if text == "all":
        return list(range(len(names)))
    result = []
    for part in text.split(","):
        part = part.strip()
        if part in names:
            result.append(names.index(part))
            continue
        for c in int_list(part, field):
            if not 0 <= c < len(names):
                raise InvalidRequest(
                    field, f"{c} out of range 0..{len(names) - 1} (classes: {', '.join(names)})"
                )
            result.append(c)
    return result


def seed_class(text: str, field: str) -> tuple[int, str]:
    """'5:3' -> (5, '3'): a SEED:CLASS point (--from, --to)."""
    seed, sep, cls = text.partition(":")
    try:
        value = int(seed)
    except ValueError:
        value = None
    if not sep or value is None or not cls:
        raise InvalidRequest(field, f"expected SEED:CLASS (e.g. 5:3), got {text[:40]!r}")
    if not 0 <= value < 2**64:
        raise InvalidRequest(field, f"seed {value} out of range [0, 2**64)")
    return value, cls
