"""The sampling API: ``ctrlgan.load(...)`` returns a Generator with a few verbs.

A Generator holds one verified model artifact and one backend. Requests are validated in full
before any work starts (ctrlgan.runtime.request), noise comes from per-image seeds by the
Philox contract (ctrlgan.kernels.reference), and results are float32 NCHW arrays in [-1, 1].

Backends here: "torch", the eager reference. "auto" picks the fastest backend that works on
this machine from those available.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ctrlgan.artifact import Artifact
from ctrlgan.errors import BackendUnavailable, InvalidRequest
from ctrlgan.kernels.reference import noise as philox_noise
from ctrlgan.kernels.reference import seeds_to_int64
from ctrlgan.runtime import request

BACKENDS = ("auto", "torch")
DEFAULT_MAX_BATCH = 65536
CHUNK = 1024  # rows per backend call, bounding memory for large requests


class Generator:
    """Seeded, class-conditional sampling from one model artifact."""

    def __init__(
        self,
        artifact: Artifact,
        backend: str = "auto",
        device: str | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ):
        if backend not in BACKENDS:
            raise InvalidRequest(
                "backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}"
            )
        if device not in (None, "cpu", "cuda"):
            raise InvalidRequest("device", f"must be None, 'cpu' or 'cuda', got {device!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("device 'cuda' requested but no CUDA device is usable here")
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.backend = "torch"
        self.device = torch.device(device or "cpu")
        self.max_batch = max_batch
        self._net = artifact.build_generator().to(self.device)

    # Metadata ---------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def features(self) -> list[str]:
        return list(self.manifest.directions)

    @property
    def z_dim(self) -> int:
        return self.manifest.z_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest.image_shape)

    def __repr__(self) -> str:
        return (
            f"Generator({os.fspath(self.artifact.path)!r}, backend={self.backend!r}, "
            f"classes={len(self.classes)}, z_dim={self.z_dim}, image_shape={self.image_shape})"
        )

    # Verbs ------------------------------------------------------------------------------
    def sample(
        self,
        classes=None,
        seeds=None,
        *,
        n: int | None = None,
        seed: int = 0,
        steer=None,
        truncation: float | None = None,
    ) -> np.ndarray:
        """Images of the requested classes: float32 [N, C, H, W] in [-1, 1].

        classes: an index or name for every image, a list with one per image, or class mixes
        (class_a, class_b, s) giving (1 - s) e(a) + s e(b). seeds: one int per image (list or
        range), or ``n`` seeds counting up from ``seed`` (a single class is repeated).
        The same (seed, class, controls) always gives the same image.
        """
        spec, scalar = request.parse_classes(classes, self.classes)
        rows = None if scalar else len(spec.class_a)
        seed_rows = request.parse_seeds(
            seeds, n, seed, rows if rows is not None else 1, limit=self.max_batch
        )
        if scalar:
            count = len(seed_rows)
            spec = request.ClassSpec(
                np.repeat(spec.class_a, count),
                np.repeat(spec.class_b, count),
                np.repeat(spec.s, count),
            )
        elif len(seed_rows) != len(spec.class_a):
            raise InvalidRequest(
                "seeds",
                f"{len(seed_rows)} seeds for {len(spec.class_a)} classes: give one per image",
            )
        count = len(seed_rows)
        if count > self.max_batch:
            raise InvalidRequest("seeds", f"{count} images exceed the batch limit {self.max_batch}")
        tau = request.parse_truncation(truncation)
        alpha = request.parse_steer(steer, self.features, count)
        if alpha.any():
            raise InvalidRequest("steer", "this model has no direction table to steer along")
        out = np.empty((count, *self.image_shape), dtype=np.float32)
        for start in range(0, count, CHUNK):
            stop = min(start + CHUNK, count)
            out[start:stop] = self._run(seed_rows[start:stop], spec, start, stop, tau)
        return out

    def _run(self, seeds: np.ndarray, spec, start: int, stop: int, tau) -> np.ndarray:
        z = philox_noise(seeds_to_int64(seeds.tolist()), self.z_dim, tau).to(self.device)
        a = torch.from_numpy(spec.class_a[start:stop]).to(self.device)
        b = torch.from_numpy(spec.class_b[start:stop]).to(self.device)
        s = torch.from_numpy(spec.s[start:stop]).to(self.device)
        with torch.inference_mode():
            y = self._net.embed(a, b, s)
            x = self._net.body(torch.cat([z, y], dim=1))
        return x.cpu().numpy()


def load(
    name_or_path: str | os.PathLike = "digits",
    backend: str = "auto",
    device: str | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> Generator:
    """Load a bundled model by name (e.g. "digits") or an artifact directory by path."""
    return Generator(
        Artifact.open(name_or_path), backend=backend, device=device, max_batch=max_batch
    )


def noise(seeds, z_dim: int, truncation: float | None = None) -> np.ndarray:
    """The noise rows of ``seeds`` by the Philox contract: float32 numpy [len(seeds), z_dim]."""
    if not isinstance(z_dim, (int, np.integer)) or isinstance(z_dim, bool) or z_dim < 1:
        raise InvalidRequest("z_dim", f"must be an int >= 1, got {z_dim!r}")
    values = request.parse_seeds(seeds, None, 0, None)
    tau = request.parse_truncation(truncation)
    return philox_noise(seeds_to_int64(values.tolist()), int(z_dim), tau).numpy()
