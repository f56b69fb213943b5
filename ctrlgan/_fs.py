"""File-system helpers for atomic writes (temp file or directory + rename)."""

from __future__ import annotations

import os
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_readable(path: Path) -> None:
    """Give a temp file or directory (mkstemp/mkdtemp make 0600/0700; safetensors writes 0600)
    the permissions an ordinary create would, files inside a directory included."""
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for child in path.iterdir():
            os.chmod(child, 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)
