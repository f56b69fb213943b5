"""Image helpers shared by training and the runtime: value conversion and grids."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from ctrlgan import validate
from ctrlgan._fs import make_readable
from ctrlgan.errors import InvalidRequest

MAX_GRID_PIXELS = 1 << 28  # 268 megapixels: far beyond any useful grid, well within memory


def to_uint8(x) -> np.ndarray:
    """Images in [-1, 1], NCHW (numpy or torch), to uint8 NHWC in [0, 255] (rounded, clipped).

    Values outside [-1, 1] saturate; NaN is refused (it has no pixel value)."""
    if hasattr(x, "detach"):  # a torch tensor, of any dtype or device torch can copy out
        try:
            x = x.detach().to("cpu").float().numpy()
        except Exception as e:  # a meta or sparse tensor, or an object that only looks like one
            raise InvalidRequest(
                "images", f"cannot read this tensor ({type(e).__name__})"
            ) from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf":
        raise InvalidRequest("images", f"expected a real-valued array, got {type(x).__name__}")
    if x.ndim != 4:
        raise InvalidRequest("images", f"expected a batch [N, C, H, W], got shape {x.shape}")
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise InvalidRequest("images", "hold NaN, which has no pixel value")
    x = np.clip(x, -1, 1).astype(np.float32)  # clipped first: no overflow in any dtype
    x = ((x + 1.0) * 127.5 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def make_grid(x, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile images in [-1, 1], NCHW, into one uint8 HWC (or HW for one channel) array of at
    most MAX_GRID_PIXELS pixels (checked before it is allocated)."""
    nrow = validate.integer(nrow, "nrow", lo=1)
    padding = validate.integer(padding, "padding", 0, 1024)
    pad_value = validate.integer(pad_value, "pad_value", 0, 255)
    images = to_uint8(x)
    if len(images) == 0:
        raise InvalidRequest("images", "no images to tile")
    n, h, w, c = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    shape = (rows * (h + padding) + padding, cols * (w + padding) + padding, c)
    _check_pixels(shape[0], shape[1], "images")
    grid = np.full(shape, pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid[:, :, 0] if c == 1 else grid


def _check_pixels(height: int, width: int, field: str) -> None:
    if height * width > MAX_GRID_PIXELS:
        raise InvalidRequest(
            field,
            f"a {width}x{height} grid exceeds {MAX_GRID_PIXELS:,} pixels; lower the scale, the "
            "padding or the number of images",
        )


def save_grid(x, path, nrow: int = 8, scale: int = 1, padding: int = 2) -> Path:
    """Write images in [-1, 1], NCHW (1, 3 or 4 channels), as a PNG grid (``nrow`` per row);
    returns the path.

    ``scale`` enlarges every pixel (nearest neighbour) so small images stay legible. The file
    is written to a temporary name and renamed, so a failed write leaves nothing behind; the
    path must be a new or a regular file (never a device, a FIFO or a directory). A write that
    fails (a full disk, a name too long) raises OSError naming ``path``.
    """
    from PIL import Image

    scale = validate.integer(scale, "scale", 1, 1024)
    path = _output_path(path)
    shape = getattr(x, "shape", ())
    if len(shape) == 4 and shape[1] not in (1, 3, 4):
        raise InvalidRequest("images", f"a PNG has 1, 3 or 4 channels, got {shape[1]}")
    grid = make_grid(x, nrow=nrow, padding=padding)
    _check_pixels(grid.shape[0] * scale, grid.shape[1] * scale, "scale")
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    except OSError as e:  # name the user's path, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(grid).save(f, format="PNG")
        make_readable(Path(tmp))
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _output_path(path) -> Path:
    """A path to write a file to: a str or PathLike naming a new or regular file in an
    existing directory."""
    try:
        text = os.fspath(path)
    except TypeError:
        text = None
    if not isinstance(text, str) or not text or "\0" in text:
        raise InvalidRequest("output", f"expected a file path, got {type(path).__name__}")
    try:
        os.fsencode(text)  # a lone surrogate that the file system cannot spell
    except UnicodeEncodeError:
        raise InvalidRequest("output", f"{text!r} cannot be a file name here") from None
    path = Path(text)
    try:
        if not path.parent.is_dir():
            raise InvalidRequest("output", f"directory {str(path.parent)!r} does not exist")
        if path.is_dir():
            raise InvalidRequest("output", f"{str(path)!r} is a directory")
        if path.exists() and not path.is_file():
            raise InvalidRequest("output", f"{str(path)!r} exists and is not a regular file")
    except OSError as e:
        raise OSError(e.errno, e.strerror, text) from None
    return path
