"""Validation of sampling requests: user values in, checked arrays out, or InvalidRequest.

Nothing here touches a backend, so a bad request is rejected before any work starts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ctrlgan.errors import InvalidRequest

MAX_SEED = 2**64
MAX_ALPHA = 1000.0  # steps along a unit direction; noise entries are ~N(0, 1), so far beyond use


@dataclass(slots=True)
class Rows:
    """A validated request, one entry per image: what every backend consumes.

    Noise z_a from ``seeds`` (and z_b from ``seeds_b`` when ``t`` is given, interpolated by
    ``method``), steered by ``alpha`` [N, K]; class embedding from class_a, class_b and s.
    """

    seeds: np.ndarray  # uint64 [N]
    class_a: np.ndarray  # int64 [N]
    class_b: np.ndarray  # int64 [N]
    s: np.ndarray  # float32 [N]
    alpha: np.ndarray  # float32 [N, K]
    truncation: float | None = None
    seeds_b: np.ndarray | None = None  # uint64 [N], with t
    t: np.ndarray | None = None  # float32 [N]
    method: str = "lerp"

    def __len__(self) -> int:
        return len(self.seeds)

    @property
    def key(self) -> tuple:
        """Rows with equal keys can share one backend call (see ``concat``)."""
        return (self.truncation, self.t is not None, self.method if self.t is not None else None)

    def slice(self, start: int, stop: int) -> Rows:
        cut = lambda a: None if a is None else a[start:stop]
        return Rows(
            self.seeds[start:stop], self.class_a[start:stop], self.class_b[start:stop],
            self.s[start:stop], self.alpha[start:stop], self.truncation,
            cut(self.seeds_b), cut(self.t), self.method,
        )  # fmt: skip

    @staticmethod
    def concat(parts: Sequence[Rows]) -> Rows:
        if len({p.key for p in parts}) != 1:
            raise ValueError("rows with different truncation or interpolation cannot be joined")
        first = parts[0]
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])
        interp = first.t is not None
        return Rows(
            cat("seeds"), cat("class_a"), cat("class_b"), cat("s"), cat("alpha"),
            first.truncation, cat("seeds_b") if interp else None, cat("t") if interp else None,
            first.method,
        )  # fmt: skip


@dataclass
class ClassSpec:
    """Per-row class embedding inputs: y = (1 - s) e(class_a) + s e(class_b)."""

    class_a: np.ndarray  # int64 [B]
    class_b: np.ndarray  # int64 [B]
    s: np.ndarray  # float32 [B]


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def class_index(value, names: Sequence[str], field: str = "classes") -> int:
    """A class given by index or by name -> its index."""
    if _is_int(value):
        if not 0 <= int(value) < len(names):
            raise InvalidRequest(field, f"class {value} out of range 0..{len(names) - 1}")
        return int(value)
    if isinstance(value, str):
        if value in names:
            return list(names).index(value)
        raise InvalidRequest(field, f"unknown class {value!r}; known: {', '.join(names)}")
    raise InvalidRequest(field, f"a class is an int index or a name, got {type(value).__name__}")


def parse_classes(classes, names: Sequence[str]) -> tuple[ClassSpec, bool]:
    """Classes -> (ClassSpec, is_scalar). Items: index, name, or a mix (a, b, s), s in [0, 1]."""
    if classes is None:
        raise InvalidRequest("classes", "required: a class, or a list with one per image")
    # Fast path (the common request): plain int indices in range.
    if type(classes) is int and 0 <= classes < len(names):
        a = np.array([classes], np.int64)
        return ClassSpec(a, a, np.zeros(1, np.float32)), True
    if (
        type(classes) is list
        and classes
        and all(type(c) is int for c in classes)
        and min(classes) >= 0
        and max(classes) < len(names)
    ):
        a = np.array(classes, np.int64)
        return ClassSpec(a, a, np.zeros(len(a), np.float32)), False  # rows are never mutated
    scalar = _is_int(classes) or isinstance(classes, (str, tuple))
    items = [classes] if scalar else classes
    if isinstance(items, np.ndarray):
        items = items.tolist()
    if not isinstance(items, Sequence) or isinstance(items, str):
        raise InvalidRequest(
            "classes", f"expected an int, a name or a list, got {type(classes).__name__}"
        )
    if len(items) == 0:
        raise InvalidRequest("classes", "empty list")
    a, b, s = [], [], []
    for item in items:
        if isinstance(item, tuple):
            if len(item) != 3:
                raise InvalidRequest(
                    "classes", f"a class mix is (class_a, class_b, s), got {item!r}"
                )
            ca, cb = class_index(item[0], names), class_index(item[1], names)
            mix = item[2]
            if not isinstance(mix, (int, float, np.floating, np.integer)) or isinstance(mix, bool):
                raise InvalidRequest("classes", f"mix weight s must be a number, got {mix!r}")
            if not (math.isfinite(mix) and 0.0 <= mix <= 1.0):
                raise InvalidRequest("classes", f"mix weight s must be in [0, 1], got {mix!r}")
            a.append(ca), b.append(cb), s.append(float(mix))
        else:
            c = class_index(item, names)
            a.append(c), b.append(c), s.append(0.0)
    spec = ClassSpec(np.array(a, np.int64), np.array(b, np.int64), np.array(s, np.float32))
    return spec, scalar


def parse_seeds(
    seeds, n: int | None, seed: int, rows: int | None, limit: int | None = None
) -> np.ndarray:
    """Seeds as uint64 [B]. ``seeds`` (list, range, array) wins; else ``n`` seeds from ``seed``;
    else one seed per class row (``rows``) from ``seed``. More than ``limit`` seeds is refused
    before anything is built."""
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
        if _is_int(seeds):
            seeds = [seeds]
        if isinstance(seeds, str):
            seeds = parse_seed_string(seeds)
        if isinstance(seeds, np.ndarray):
            seeds = seeds.tolist()
        if not isinstance(seeds, (Sequence, range)) or isinstance(seeds, str):
            raise InvalidRequest(
                "seeds", f"expected a list or range of ints, got {type(seeds).__name__}"
            )
        if limit is not None and len(seeds) > limit:
            raise InvalidRequest("seeds", f"{len(seeds)} images exceed the batch limit {limit}")
        values = list(seeds)
        if not values:
            raise InvalidRequest("seeds", "empty list")
        for v in values:
            if not _is_int(v):
                raise InvalidRequest("seeds", f"seeds are ints, got {v!r}")
            if not 0 <= int(v) < MAX_SEED:
                raise InvalidRequest("seeds", f"seed {v} out of range [0, 2**64)")
        return np.array([int(v) for v in values], dtype=np.uint64)
    if not _is_int(seed) or not 0 <= int(seed) < MAX_SEED:
        raise InvalidRequest("seed", f"must be an int in [0, 2**64), got {seed!r}")
    count = n if n is not None else rows
    if n is not None and (not _is_int(n) or n < 1):
        raise InvalidRequest("n", f"must be an int >= 1, got {n!r}")
    if limit is not None and count > limit:
        raise InvalidRequest("n", f"{count} images exceed the batch limit {limit}")
    if int(seed) + int(count) > MAX_SEED:
        raise InvalidRequest("seed", "seed + n exceeds 2**64")
    return np.arange(int(count), dtype=np.uint64) + np.uint64(int(seed))


def parse_seed_string(text: str) -> list[int]:
    """'0-15' or '1,4,7-9' (StyleGAN's --seeds) -> a list of ints."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise InvalidRequest(
                "seeds", f"expected e.g. '0-15' or '1,4,7-9', got {text!r}"
            ) from None
        if last < first:
            raise InvalidRequest("seeds", f"empty range {part.strip()!r} in {text!r}")
        if len(out) + last - first >= 1 << 20:
            raise InvalidRequest("seeds", f"{text!r} names more than {1 << 20} seeds")
        out.extend(range(first, last + 1))
    return out


def parse_truncation(truncation) -> float | None:
    if truncation is None:
        return None
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float, np.number)):
        raise InvalidRequest("truncation", f"must be a number > 0 or None, got {truncation!r}")
    if not (math.isfinite(truncation) and truncation > 0):
        raise InvalidRequest("truncation", f"must be finite and > 0, got {truncation!r}")
    return float(truncation)


def parse_steer(steer, features: Sequence[str], rows: int) -> np.ndarray:
    """{feature: alpha or [alpha per row]} -> float32 [B, K] step sizes along each direction."""
    alpha = np.zeros((rows, len(features)), dtype=np.float32)
    if not steer:
        return alpha
    if not isinstance(steer, Mapping):
        raise InvalidRequest(
            "steer", f"expected a dict of feature -> alpha, got {type(steer).__name__}"
        )
    for name, value in steer.items():
        if name not in features:
            known = ", ".join(features) if features else "none: this model has no direction table"
            raise InvalidRequest("steer", f"unknown feature {name!r}; known: {known}")
        values = np.asarray(value, dtype=np.float64) if not isinstance(value, str) else None
        if values is None or values.ndim > 1 or (values.ndim == 1 and len(values) != rows):
            raise InvalidRequest(f"steer.{name}", f"must be a number or {rows} numbers")
        if not np.isfinite(values).all():
            raise InvalidRequest(f"steer.{name}", "must be finite (no NaN or inf)")
        if np.abs(values).max() > MAX_ALPHA:
            raise InvalidRequest(f"steer.{name}", f"must lie in [-{MAX_ALPHA}, {MAX_ALPHA}]")
        alpha[:, list(features).index(name)] = values
    return alpha
