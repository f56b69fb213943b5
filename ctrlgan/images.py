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
    """Images in [-1, 1], NCHW (numpy or torch), to uint8 NHWC in [0, 255] (rounded, clipped)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iuf":
        raise InvalidRequest("images", f"expected a real-valued array, got {type(x).__name__}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise InvalidRequest("images", f"expected a batch [N, C, H, W], got shape {x.shape}")
    x = np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def make_grid(x, nrow: int = 8, padding: int = 2, pad_value: int = 0) -> np.ndarray:
    """Tile images in [-1, 1], NCHW, into one uint8 HWC (or HW for one channel) array."""
    images = to_uint8(x)
    nrow = validate.integer(nrow, "nrow", lo=1)
    padding = validate.integer(padding, "padding", 0, 1024)
    pad_value = validate.integer(pad_value, "pad_value", 0, 255)
    if len(images) == 0:
        raise InvalidRequest("images", "no images to tile")
    n, h, w, c = images.shape
    cols = min(nrow, n)
    rows = -(-n // cols)
    grid = np.full(
        (rows * (h + padding) + padding, cols * (w + padding) + padding, c),
        pad_value,
        dtype=np.uint8,
    )
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = images[i]
    return grid[:, :, 0] if c == 1 else grid


def save_grid(x, path, nrow: int = 8, scale: int = 1, padding: int = 2) -> Path:
    """Write images in [-1, 1], NCHW, as a PNG grid (``nrow`` per row); returns the path.

    ``scale`` enlarges every pixel (nearest neighbour) so small images stay legible. The file
    is written to a temporary name and renamed, so a failed write leaves nothing behind.
    """
    from PIL import Image

    scale = validate.integer(scale, "scale", lo=1)
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidRequest("output", f"expected a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise InvalidRequest("output", f"directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise InvalidRequest("output", f"{str(path)!r} is a directory")
    grid = make_grid(x, nrow=nrow, padding=padding)
    if grid.shape[0] * grid.shape[1] * scale * scale > MAX_GRID_PIXELS:
        raise InvalidRequest(
            "scale",
            f"a {grid.shape[1] * scale}x{grid.shape[0] * scale} grid exceeds "
            f"{MAX_GRID_PIXELS:,} pixels; lower the scale or the number of images",
        )
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
