"""Whether CUDA is usable here, without importing torch where it cannot be.

``torch.cuda.is_available()`` is the authority, but importing torch costs seconds, and a process
that samples on onnxruntime on a CPU machine must not pay them. CUDA needs the NVIDIA driver's
library (libcuda.so.1 on Linux, nvcuda.dll on Windows; macOS has none): where it cannot be
loaded there is no CUDA device, and torch is not imported to be told so. Where it loads, torch
decides (and is imported: every CUDA backend needs it anyway). Loading the library does not
initialise CUDA, so a later fork is unaffected.
"""

from __future__ import annotations

import ctypes
import functools
import sys

_DRIVERS = {"win32": ("nvcuda.dll",), "darwin": ()}


@functools.lru_cache(maxsize=1)
def driver_present() -> bool:
    """Whether the NVIDIA driver's CUDA library can be loaded in this process."""
    for name in _DRIVERS.get(sys.platform, ("libcuda.so.1", "libcuda.so")):
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def available() -> bool:
    """torch.cuda.is_available(), answered without torch where no driver is installed."""
    if "torch" not in sys.modules and not driver_present():
        return False
    import torch

    return torch.cuda.is_available()
