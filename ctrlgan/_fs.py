"""File-system helpers for atomic writes (temp file or directory + rename), and OSErrors that
name the file the user asked for rather than a temporary one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

TMP_PREFIX = ".ctrlgan-tmp-"  # temporaries of atomic writes (a job removes its own on start)


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


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """Re-raise any OSError inside as one about ``path`` (the file the user knows: a write to
    a temporary name beside it, or one that carried no name at all, e.g. ENOSPC on close)."""
    try:
        yield
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), os.fspath(path)) from None


def write_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` by ``data``: a temporary file beside it, flushed (and fsync'd when
    ``durable``), then renamed. On any error nothing is left behind and the OSError names
    ``path``."""
    path = Path(path)
    with naming(path):
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
            make_readable(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if durable:
            fsync_path(path.parent)


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or directory by name."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free
