"""Host noise for the CPU backends: rows z[b, j] = randn(seeds[b], j) by the Philox contract.

One implementation serves every host backend, so the noise of a seed is bit-identical across
them (and equal to the reference's, which defines it). Seeds arrive as uint64.
"""

from __future__ import annotations

import numpy as np
import torch

from ctrlgan.kernels import reference


def philox(seeds: np.ndarray, z_dim: int, truncation: float | None = None) -> np.ndarray:
    """float32 [len(seeds), z_dim]; ``seeds`` uint64 [N]."""
    seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
    with torch.inference_mode():
        return reference.noise(torch.from_numpy(seeds.view(np.int64)), z_dim, truncation).numpy()
