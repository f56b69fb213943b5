"""The runtime's backends: each turns validated Rows into float32 images [N, C, H, W].

This module holds what the host backends share (noise, slerp and the lerp feeds, in numpy) and
the onnxruntime backend; the torch and triton backends live in torch_backends.py, imported only
when one of them is built, so that sampling on onnxruntime never imports torch.

    torch        the eager reference: host noise, the latent prologue in torch ops, the
                 generator module (its first layer computed row by row, see below)
    onnxruntime  generator.onnx in an OrtSession; host noise (slerp done on the host, fed with
                 t = 0: the graph's lerp returns z_a exactly there); given noise rows (z=) are
                 fed the same way, as z_a = z_b with t = 0
    triton       CUDA only: noise (or given rows, read as the kernel's z_a) and prologue in
                 the fused Triton kernel, written straight into a half-precision latent
                 buffer, then the generator body in fp16 (NCHW), replayed from a CUDA graph
                 per batch-size bucket (1, 2, 4, ... below max_batch, then max_batch;
                 max_batch capped at 16384 here), all captured when the backend is built
                 (logged: count and seconds; graphs.py weighs start-up time and memory
                 against max_batch). Calls are serialised by a lock and run on the
                 backend's own CUDA stream, upload to copy-out. fp16 latents overflow beyond
                 |z| = 65504, so absurd steering (alpha ~ 1e4 and up) gives NaN images here,
                 saturated ones on the host backends.

Batch invariance. A row's image must not depend on which rows share its call. Noise and the
prologue are row-wise by construction. onnxruntime's CPU kernels gave bit-identical rows for
every batch size and offset we tried (1-300, tested). torch's CPU kernels do not: Linear takes
another GEMM path below 16 rows, and oneDNN picks convolution algorithms by batch size (rows
differ by ~2e-7). So the torch backend runs the first layer as a batched matmul of 1-row
products (baddbmm) and, on the CPU, the transposed convolutions with oneDNN off (torch's own
kernels loop over the images), which made every row bit-identical for every batch size and
offset tried; batch 1 got faster, batch 256 about 2x slower. On CUDA the
triton backend pads each call to its bucket; rows are identical within a bucket and agree to
float16 rounding across buckets.
"""

from __future__ import annotations

import functools

import numpy as np

from ctrlgan.artifact import GENERATOR_ONNX, Artifact
from ctrlgan.errors import ArtifactError, BackendUnavailable, summary
from ctrlgan.kernels.contract import SLERP_EPS
from ctrlgan.runtime import cuda, philox
from ctrlgan.runtime.request import Rows

NAMES = ("torch", "onnxruntime", "triton")
HOST_CHUNK = 1024  # rows per host backend call, bounding memory for large requests


def host_latents(rows: Rows, z_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z_a, z_b, t) for graphs that lerp: given noise rows, or noise from seeds; slerp already
    applied on the host."""
    if rows.z is not None:  # given rows (never interpolated): t = 0 makes the lerp return z_a
        return rows.z, rows.z, _zeros(len(rows))
    z_a = philox.normal(rows.seeds, z_dim, rows.truncation)
    if rows.t is None:
        return z_a, z_a, _zeros(len(rows))
    z_b = philox.normal(rows.seeds_b, z_dim, rows.truncation)
    if rows.method == "slerp":
        z_a = slerp(z_a, z_b, rows.t)
        return z_a, z_a, _zeros(len(rows))
    return z_a, z_b, rows.t


def slerp(z_a: np.ndarray, z_b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """kernels.reference.slerp in numpy float32, step for step (tested against it): spherical
    interpolation of directions, linear interpolation of norms; the angle from the chords."""
    f32 = np.float32
    t = t.reshape(-1, 1).astype(f32)
    na = np.linalg.norm(z_a, axis=1, keepdims=True).astype(f32)
    nb = np.linalg.norm(z_b, axis=1, keepdims=True).astype(f32)
    safe_a, safe_b = np.where(na > 0, na, f32(1)), np.where(nb > 0, nb, f32(1))
    ua, ub = z_a / safe_a, z_b / safe_b
    dm = np.linalg.norm(ua - ub, axis=1, keepdims=True).astype(f32)
    dp = np.linalg.norm(ua + ub, axis=1, keepdims=True).astype(f32)
    omega = np.where(
        dm <= dp,
        f32(2) * np.arcsin(np.minimum(dm / f32(2), f32(1))),
        f32(np.pi) - f32(2) * np.arcsin(np.minimum(dp / f32(2), f32(1))),
    ).astype(f32)
    degenerate = (dm * dp / f32(2) < f32(SLERP_EPS)) | (na == 0) | (nb == 0)
    safe_sin = np.where(degenerate, f32(1), np.sin(omega)).astype(f32)
    n_t = (f32(1) - t) * na + t * nb
    ca = np.sin((f32(1) - t) * omega) / safe_sin * (n_t / safe_a)
    cb = np.sin(t * omega) / safe_sin * (n_t / safe_b)
    lerped = (f32(1) - t) * z_a + t * z_b
    return np.where(degenerate, lerped, ca * z_a + cb * z_b).astype(f32)


@functools.lru_cache(maxsize=64)
def _zeros(n: int) -> np.ndarray:
    """A read-only float32 zero vector (t = 0 for every call without interpolation)."""
    z = np.zeros(n, np.float32)
    z.flags.writeable = False
    return z


class OnnxRuntimeBackend:
    name = "onnxruntime"
    chunk = HOST_CHUNK

    def __init__(self, artifact: Artifact, device: str, threads: int = 0):
        from ctrlgan.runtime.ort import OrtSession, check_runs

        if GENERATOR_ONNX not in artifact.manifest.files:
            raise BackendUnavailable(
                f"onnxruntime: {artifact.path} has no {GENERATOR_ONNX}; run `ctrlgan export`"
            )
        self.z_dim = artifact.manifest.z_dim
        self.path = str(artifact.path / GENERATOR_ONNX)
        self.session = OrtSession.open(artifact, device=device, intra_op_threads=threads)
        check_runs(artifact, GENERATOR_ONNX, self.session)  # ~0.1 ms: a graph that cannot draw
        # every class (another model's, or a broken one) is refused here, not mid-request

    def feeds(self, rows: Rows) -> dict[str, np.ndarray]:
        z_a, z_b, t = host_latents(rows, self.z_dim)
        return {
            "z_a": z_a, "z_b": z_b, "t": t, "class_a": rows.class_a,
            "class_b": rows.class_b, "s": rows.s, "alpha": rows.alpha,
        }  # fmt: skip

    def __call__(self, rows: Rows) -> np.ndarray:
        feeds = self.feeds(rows)
        try:
            image = self.session.run(feeds)
        except Exception as e:  # the inputs are validated: a graph that fails on them is broken
            raise ArtifactError(
                self.path, f"onnxruntime failed on a valid request ({summary(e)})"
            ) from None
        # onnxruntime's Tanh is an approximation that saturates one ulp above 1 (1.0000001,
        # found by fuzzing steering alphas ~100); the contract is [-1, 1]. In place, ~1 µs.
        np.minimum(image, 1.0, out=image)
        np.maximum(image, -1.0, out=image)
        return image


def create(name: str, artifact: Artifact, device: str, threads: int = 0, max_batch: int = 1):
    """Build backend ``name`` on ``device`` ("cpu" or "cuda"); torch is imported only for the
    torch and triton backends."""
    if name == "onnxruntime":
        return OnnxRuntimeBackend(artifact, device, threads)
    from ctrlgan.runtime import torch_backends

    if name == "torch":
        return torch_backends.TorchBackend(artifact, device)
    # buckets up to 16k rows, all captured now: beyond that a graph's activations cost GBs for
    # no gain, and every bucket's memory is reserved at start-up
    return torch_backends.TritonBackend(artifact, device, min(max_batch, 16384))


def usable(name: str, artifact: Artifact, device: str) -> bool:
    """Whether backend ``name`` can run here for this artifact (without building it)."""
    if name == "torch":
        return True
    if name == "onnxruntime":
        from ctrlgan.runtime.ort import cuda_usable

        return GENERATOR_ONNX in artifact.manifest.files and (device == "cpu" or cuda_usable())
    return device == "cuda" and cuda.available()
