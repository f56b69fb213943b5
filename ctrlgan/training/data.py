"""Data sets for conditional GAN training, all offline and in memory.

Every loader returns a ``Dataset``: float32 images [N, C, H, W] in [-1, 1], int64 labels [N] in
[0, len(classes)), and the class names. Sources:

* ``digits``: scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), values
  0..16 scaled to [-1, 1] (v / 8 - 1) and resized with antialiased bilinear filtering.
* ``shapes``: a procedural, dSprites-like set with exact ground truth. Classes square, ellipse,
  heart, triangle; factors (float32 [N, 4], ``factor_names``):
    scale        in [0.5, 1.0]: the shape fits in a disc of radius R = scale * size / 4
    orientation  in [0, 2 pi): rotation about the centre (counter-clockwise on screen)
    pos_x, pos_y in [0.25, 0.75]: the centre as a fraction of the image side
  Coordinates are continuous: pixel (row i, column j) covers [j, j+1) x [i, i+1), so the centre
  is at (pos_x * size, pos_y * size) with y growing downwards. The centre is each shape's *area
  centroid*, so the intensity centroid of a rendered image is its position. Edges are
  anti-aliased by 4x4 supersampling. ``correlate`` draws chosen factor pairs with a given
  Pearson correlation (a Gaussian copula), to reproduce the feature-correlation problem.
* User data: an image folder (one sub-folder per class), an .npz with ``images`` and ``labels``
  (and optionally ``classes``), or MNIST-format IDX files (plain or gzip).

Problems with the data raise ``DataError`` naming the file or parameter; nothing partial is
returned.
"""

from __future__ import annotations

import gzip
import math
import zipfile
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
_SUPERSAMPLE = 4


@dataclass
class Dataset:
    name: str
    images: torch.Tensor  # float32 [N, C, H, W] in [-1, 1]
    labels: torch.Tensor  # int64 [N]
    classes: list[str]
    factors: torch.Tensor | None = None  # float32 [N, F]
    factor_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, H, W] in [-1, 1] -> [N, C, size, size], antialiased bilinear, clamped."""
    if tuple(images.shape[2:]) == (size, size):
        return images.contiguous()
    out = F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp_(-1.0, 1.0).contiguous()


def _check_size(size, minimum: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < minimum:
        raise DataError("size", f"must be an int >= {minimum}, got {size!r}")
    return int(size)


# digits ------------------------------------------------------------------------------------


def load_digits(size: int = 16) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    size = _check_size(size, 8)
    d = sk_digits()
    images = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.tensor(d.target, dtype=torch.int64)
    return Dataset("digits", resize_images(images, size), labels, [str(i) for i in range(10)])


# shapes ------------------------------------------------------------------------------------


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Inside test of the heart curve (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 (point down on screen)."""
    return (x * x + y * y - 1) ** 3 - x * x * y**3 <= 0


@lru_cache(maxsize=1)
def _heart_frame() -> tuple[float, float]:
    """(centroid y, max radius from the centroid) of the unit heart, measured on a fine grid."""
    t = np.linspace(-1.6, 1.6, 1601)
    x, y = np.meshgrid(t, t)
    inside = _heart(x, y)
    cy = float(y[inside].mean())  # symmetric in x: centroid x is 0
    radius = float(np.sqrt(x[inside] ** 2 + (y[inside] - cy) ** 2).max())
    return cy, radius


def _inside(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of one shape class in local units (circumradius 1, centroid 0, v upwards)."""
    if shape == 0:  # square, corners exactly on the unit circle
        half = np.float32(1 / math.sqrt(2))
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    if shape == 1:  # ellipse with semi-axes 1 and 0.55
        return u * u + (v / np.float32(0.55)) ** 2 <= 1
    if shape == 2:
        cy, radius = _heart_frame()
        return _heart(u * np.float32(radius), v * np.float32(radius) + np.float32(cy))
    # Equilateral triangle with circumradius 1, apex up: three half-planes at inradius 1/2.
    inside = np.ones(u.shape, dtype=bool)
    for angle in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):  # outward edge normals
        inside &= u * np.float32(math.cos(angle)) + v * np.float32(math.sin(angle)) <= 0.5
    return inside


def _render(shape, scale, orientation, pos_x, pos_y, size: int) -> np.ndarray:
    """Anti-aliased renders [n, size, size] in [0, 1] of one chunk of shapes."""
    k = _SUPERSAMPLE
    sub = ((np.arange(size * k) + 0.5) / k).astype(np.float32)  # continuous pixel coordinates
    px, py = sub[None, None, :], sub[None, :, None]
    out = np.empty((len(shape), size, size), dtype=np.float32)
    for cls in np.unique(shape):
        sel = shape == cls
        col = lambda a, sel=sel: a[sel].astype(np.float32)[:, None, None]
        radius = col(scale) * np.float32(size / 4)
        dx = (px - col(pos_x) * size) / radius
        dy = (col(pos_y) * size - py) / radius  # local units, y up
        c, s = np.cos(col(orientation)), np.sin(col(orientation))
        u, v = c * dx + s * dy, c * dy - s * dx  # rotate the sample points back by orientation
        inside = _inside(int(cls), u, v).astype(np.float32)
        out[sel] = inside.reshape(-1, size, k, size, k).mean(axis=(2, 4))
    return out


def _correlated_uniforms(rng, n: int, correlate) -> np.ndarray:
    """Uniforms [n, 4] over SHAPE_FACTORS with the requested Pearson correlations."""
    corr = np.eye(len(SHAPE_FACTORS))
    for item in correlate:
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise DataError("correlate", f"expected (factor_a, factor_b, rho), got {item!r}")
        a, b, rho = item
        for name in (a, b):
            if name not in SHAPE_FACTORS:
                hint = " (shape is categorical)" if name == "shape" else ""
                raise DataError(
                    "correlate",
                    f"unknown factor {name!r}{hint}; "
                    f"continuous factors: {', '.join(SHAPE_FACTORS)}",
                )
        if a == b:
            raise DataError("correlate", f"factor {a!r} paired with itself")
        if not isinstance(rho, (int, float)) or not math.isfinite(rho) or abs(rho) >= 1:
            raise DataError("correlate", f"rho must be a number in (-1, 1), got {rho!r}")
        i, j = SHAPE_FACTORS.index(a), SHAPE_FACTORS.index(b)
        # Pearson correlation of Phi(X), Phi(Y) is (6 / pi) asin(r / 2) for normals with corr r.
        corr[i, j] = corr[j, i] = 2 * math.sin(math.pi * rho / 6)
    try:
        chol = np.linalg.cholesky(corr)
    except np.linalg.LinAlgError:
        raise DataError(
            "correlate", "the requested correlations are not jointly possible"
        ) from None
    normals = rng.standard_normal((n, len(SHAPE_FACTORS))) @ chol.T
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1 + erf(normals / math.sqrt(2)))


def make_shapes(
    n: int = 20000,
    size: int = 32,
    seed: int = 0,
    correlate: Sequence[tuple[str, str, float]] = (),
) -> Dataset:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError("n", f"must be an int >= 1, got {n!r}")
    size = _check_size(size, 16)
    rng = np.random.default_rng(seed)
    shape = rng.integers(0, len(SHAPES), size=n)
    uniforms = _correlated_uniforms(rng, n, correlate)
    factors = np.empty((n, len(SHAPE_FACTORS)), dtype=np.float64)
    for f, name in enumerate(SHAPE_FACTORS):
        lo, hi = _FACTOR_RANGES[name]
        factors[:, f] = lo + (hi - lo) * uniforms[:, f]
    factors[:, 1] %= 2 * math.pi
    images = np.empty((n, size, size), dtype=np.float32)
    chunk = max(1, 2_000_000 // (size * size * _SUPERSAMPLE**2))
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        images[sl] = _render(shape[sl], *(factors[sl, f] for f in range(4)), size)
    return Dataset(
        "shapes",
        torch.from_numpy(images[:, None] * 2 - 1).contiguous(),
        torch.from_numpy(shape.astype(np.int64)),
        list(SHAPES),
        torch.from_numpy(factors.astype(np.float32)),
        list(SHAPE_FACTORS),
    )


# user data ---------------------------------------------------------------------------------


def _finish(name: str, images: np.ndarray, labels: np.ndarray, classes, size, source: str):
    """uint8-scaled or [0, 1] float images [N, C, H, W] -> a Dataset in [-1, 1]."""
    if len(images) != len(labels):
        raise DataError(source, f"{len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(source, "holds no images")
    h, w = images.shape[2:]
    if size is None and h != w:
        raise DataError(source, f"images are {h}x{w}, not square: pass size= to resize")
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) * 2 - 1
    if size is not None:
        x = resize_images(x, _check_size(size, 4))
    return Dataset(name, x.contiguous(), torch.from_numpy(labels.astype(np.int64)), list(classes))


def load_image_folder(path, size: int | None = None, channels: int | None = None) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.exists():
        raise DataError(str(root), "does not exist")
    if not root.is_dir():
        raise DataError(str(root), "is not a directory")
    if channels not in (None, 1, 3):
        raise DataError("channels", f"must be None, 1 or 3, got {channels!r}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(str(root), "has no class sub-folders (expected ROOT/<class>/<images>)")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(str(d), "class folder holds no images")
        files += [(p, label) for p in found]
    pictures = []
    for p, _ in files:
        try:
            with Image.open(p) as im:
                im.load()
                pictures.append(im.copy())
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DataError(str(p), f"unreadable image ({e.__class__.__name__})") from None
    if channels is None:
        gray = all(im.mode in ("1", "L", "LA", "I", "I;16", "F") for im in pictures)
        channels = 1 if gray else 3
    mode = "L" if channels == 1 else "RGB"
    first = pictures[0].size
    arrays = []
    for (p, _), im in zip(files, pictures, strict=True):
        if size is None and im.size != first:
            raise DataError(
                str(p),
                f"size {im.size[0]}x{im.size[1]} differs from {first[0]}x{first[1]}: "
                "pass size= to resize",
            )
        im = im.convert(mode)
        if size is not None:
            im = im.resize((size, size), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32) / 255.0
        arrays.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    labels = np.array([label for _, label in files])
    return _finish(
        str(root), np.stack(arrays), labels, [d.name for d in class_dirs], None, str(root)
    )


def load_npz(path, size: int | None = None) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(str(path), f"not a readable .npz ({e.__class__.__name__}: {e})") from None
    for key in ("images", "labels"):
        if key not in data:
            raise DataError(f"{path}:{key}", f"missing (keys: {', '.join(sorted(data)) or 'none'})")
    images, labels = data["images"], data["labels"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}:labels", f"must be integers [N], got {labels.dtype} {labels.shape}"
        )
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        if images.shape[1] not in (1, 3):
            raise DataError(f"{path}:images", f"need 1 or 3 channels, got shape {images.shape}")
    else:
        raise DataError(
            f"{path}:images", f"must be [N,H,W], [N,H,W,C] or [N,C,H,W], got {images.shape}"
        )
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(f"{path}:images", "float images must be finite and within [0, 1]")
    else:
        raise DataError(f"{path}:images", f"must be uint8 or float in [0, 1], got {images.dtype}")
    if "classes" in data:
        classes = [str(c) for c in data["classes"].tolist()]
    else:
        classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0)]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{path}:labels", f"must lie in [0, {len(classes)}) (one per class)")
    return _finish(str(path), images, labels, classes, size, str(path))


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    if not path.is_file():
        raise DataError(str(path), "does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(str(path), f"broken gzip data ({e})") from None
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        raise DataError(str(path), f"not an IDX file of this kind (expected magic {magic:#010x})")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise DataError(
            str(path), f"holds {len(body)} bytes of data; the header says {math.prod(dims)}"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def load_idx(images_path, labels_path, size: int | None = None) -> Dataset:
    images = _read_idx(Path(images_path), 0x00000803, 3)
    labels = _read_idx(Path(labels_path), 0x00000801, 1)
    if len(images) != len(labels):
        raise DataError(str(labels_path), f"{len(labels)} labels for {len(images)} images")
    classes = [str(i) for i in range(int(labels.max()) + 1)] if len(labels) else []
    x = images[:, None].astype(np.float32) / 255.0
    return _finish(str(images_path), x, labels, classes, size, str(images_path))


def load_dataset(
    spec: str, size: int | None = None, n: int | None = None, seed: int = 0, correlate=()
) -> Dataset:
    """digits | shapes | path to a .npz | a folder of IDX files | an image folder."""
    if correlate and spec != "shapes":
        raise DataError("correlate", "only the shapes data set has factors to correlate")
    if spec == "digits":
        return load_digits(16 if size is None else size)
    if spec == "shapes":
        return make_shapes(20000 if n is None else n, 32 if size is None else size, seed, correlate)
    path = Path(spec)
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path, size)
    if path.is_dir():
        images = sorted(path.glob("*images-idx3-ubyte*"))
        labels = sorted(path.glob("*labels-idx1-ubyte*"))
        if images or labels:
            if len(images) != 1 or len(labels) != 1:
                raise DataError(
                    str(path),
                    "needs exactly one *images-idx3-ubyte* and one *labels-idx1-ubyte* file",
                )
            return load_idx(images[0], labels[0], size)
        return load_image_folder(path, size)
    raise DataError(
        "data",
        f"unknown data set {spec!r}: expected digits, shapes, a .npz file, "
        "an IDX folder or an image folder",
    )
