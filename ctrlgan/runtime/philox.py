"""Host noise for the CPU backends: rows z[b, j] = randn(seeds[b], j) by the Philox contract.

One implementation serves every host backend, so a seed's noise is bit-identical across them.
It is the C loop in ctrlgan/_philox.c (built with the package; about a microsecond for a row of
64); where it was not built (no C compiler at install time) the torch reference serves
instead, at ~0.3 ms per call (and torch is imported for it). Both agree with the reference that
defines the contract: the integer stage bit for bit, the floats within 1e-6.
"""

from __future__ import annotations

import numpy as np

from ctrlgan.kernels.contract import TRUNCATION_REDRAWS

try:
    from ctrlgan import _philox
except ImportError:  # built without a C compiler
    _philox = None

IMPLEMENTATION = "c" if _philox is not None else "torch"
REDRAWS = TRUNCATION_REDRAWS


def normal(seeds: np.ndarray, z_dim: int, truncation: float | None = None) -> np.ndarray:
    """float32 [len(seeds), z_dim]; ``seeds`` uint64 [N]."""
    seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
    if _philox is None:
        return reference_normal(seeds, z_dim, truncation)
    out = np.empty((len(seeds), z_dim), dtype=np.float32)
    tau = 0.0 if truncation is None else float(truncation)
    _philox.normal(seeds, z_dim, truncation is not None, tau, REDRAWS, out)
    return out


def reference_normal(seeds: np.ndarray, z_dim: int, truncation: float | None = None) -> np.ndarray:
    """The same rows from the torch reference (the fallback, and what tests compare with)."""
    import torch

    from ctrlgan.kernels import reference

    seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
    with torch.inference_mode():
        return reference.noise(torch.from_numpy(seeds.view(np.int64)), z_dim, truncation).numpy()
